#!/usr/bin/env bash
# Collector benchmarks (not in CI). Usage: bench/collector/run.sh [quick]
#  1. ingest throughput over mTLS: the real collector vs a no-op tonic sink
#     receiving the same batches over the same TLS, side by side;
#  2. 5,000 agents at 1 Hz to one collector (CPU, memory) with upload bursts,
#     and the latency from a window's close to its alert reaching OTLP.
# Each server runs as its own process so the CPU split can be read from /proc.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=${1:-}
STREAMS=${STREAMS:-4}
BATCH=${BATCH:-100}
SECS=${SECS:-20}
AGENTS=${AGENTS:-5000}
FLEET_SECS=${FLEET_SECS:-240}
LATENESS=${LATENESS:-30}
if [ "$QUICK" = quick ]; then SECS=5; AGENTS=300; FLEET_SECS=150; LATENESS=5; fi

cargo build --release -p outflow-collector --example collector_bench
BIN=target/release/examples/collector_bench
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" certs --out "$WORK/certs"

serve() { # mode port
  "$BIN" serve --mode "$1" --certs "$WORK/certs" --data "$WORK/data-$1-$2" \
    --listen "127.0.0.1:$2" --api "127.0.0.1:$(( $2 + 70 ))" --lateness "$LATENESS" \
    ${3:+--otlp "$3"} > "$WORK/serve-$1-$2.log" 2>&1 &
  echo $!
}
wait_ready() { for _ in $(seq 1 100); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1"; exit 1; }

echo "== throughput: $STREAMS streams x $BATCH samples/batch, ${SECS}s each =="
P=$(serve noop 7311); wait_ready "$WORK/serve-noop-7311.log"
NOOP=$("$BIN" throughput --endpoint https://127.0.0.1:7311 --certs "$WORK/certs" \
  --streams "$STREAMS" --batch "$BATCH" --seconds "$SECS" --server-pid "$P")
kill "$P"; echo "no-op sink : $NOOP"
P=$(serve collector 7312); wait_ready "$WORK/serve-collector-7312.log"
REAL=$("$BIN" throughput --endpoint https://127.0.0.1:7312 --certs "$WORK/certs" \
  --streams "$STREAMS" --batch "$BATCH" --seconds "$SECS" --server-pid "$P")
kill "$P"; echo "collector  : $REAL"
python3 - "$NOOP" "$REAL" <<'PY'
import json, sys
n, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio collector/no-op: {r['samples_per_s'] / n['samples_per_s']:.2f}  "
      f"(collector {r['samples_per_s']:.0f} samples/s using {r['server_cores']:.2f} cores = "
      f"{r['samples_per_server_core_s']:.0f} samples/s per core; load generator {r['load_cpu_s']:.1f} CPU-s)")
PY

echo "== fleet: $AGENTS agents at 1 Hz for ${FLEET_SECS}s, lateness ${LATENESS}s =="
P=$(serve collector 7313 http://127.0.0.1:7399); wait_ready "$WORK/serve-collector-7313.log"
"$BIN" fleet --endpoint https://127.0.0.1:7313 --certs "$WORK/certs" --agents "$AGENTS" \
  --seconds "$FLEET_SECS" --lateness "$LATENESS" --otlp-listen 127.0.0.1:7399 --server-pid "$P"
kill "$P"
