#!/usr/bin/env bash
# Collector benchmarks (not in CI). Usage: bench/collector/run.sh [quick]
#  1. ingest throughput over mTLS: the real collector vs a no-op tonic sink
#     receiving the same batches over the same TLS, side by side;
#  2. 5,000 agents at 1 Hz to one collector (CPU, memory) with upload bursts,
#     and the latency from a window's close to its alert reaching OTLP.
# Each server runs as its own process so the CPU split can be read from /proc.
# FLEET=0 skips part 2, ROUNDS=0 part 1. The bench binary uses the `outflow` binary's allocator
# (mimalloc) for both servers.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=${1:-}
STREAMS=${STREAMS:-4}
BATCH=${BATCH:-100}
SECS=${SECS:-20}
ROUNDS=${ROUNDS:-3}
AGENTS=${AGENTS:-5000}
FLEET_SECS=${FLEET_SECS:-240}
LATENESS=${LATENESS:-30}
if [ "$QUICK" = quick ]; then SECS=5; ROUNDS=1; AGENTS=300; FLEET_SECS=150; LATENESS=5; fi

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

echo "== throughput: $STREAMS streams x $BATCH samples/batch, ${SECS}s each, $ROUNDS rounds =="
uptime
RES="$WORK/throughput.jsonl"
for r in $(seq 1 "$ROUNDS"); do
  # Alternate the two servers so both see the same (shared) machine.
  for mode in noop collector; do
    [ "$mode" = collector ] && port=$(( 7311 + r * 2 )) || port=$(( 7310 + r * 2 ))
    P=$(serve "$mode" "$port"); wait_ready "$WORK/serve-$mode-$port.log"
    OUT=$("$BIN" throughput --endpoint "https://127.0.0.1:$port" --certs "$WORK/certs" \
      --streams "$STREAMS" --batch "$BATCH" --seconds "$SECS" --server-pid "$P")
    kill "$P"; wait "$P" 2>/dev/null || true
    echo "round $r $mode: $OUT"
    echo "{\"round\": $r, \"mode\": \"$mode\", \"r\": $OUT}" >> "$RES"
  done
done
[ "$ROUNDS" -gt 0 ] && python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ratios = []
for r in sorted({x["round"] for x in rows}):
    n = next(x["r"] for x in rows if x["round"] == r and x["mode"] == "noop")
    c = next(x["r"] for x in rows if x["round"] == r and x["mode"] == "collector")
    ratios.append(c["samples_per_s"] / n["samples_per_s"])
    print(f"round {r}: ratio collector/no-op {ratios[-1]:.2f}; "
          f"no-op {n['samples_per_s']/1e6:.2f} M/s on {n['server_cores']:.2f} cores "
          f"(load generator {n['load_cpu_s']/n['seconds']:.2f} cores); "
          f"collector {c['samples_per_s']/1e6:.2f} M/s on {c['server_cores']:.2f} cores "
          f"= {c['samples_per_server_core_s']/1e6:.2f} M samples per collector CPU-second "
          f"(load generator {c['load_cpu_s']/c['seconds']:.2f} cores)")
print(f"median ratio collector/no-op: {statistics.median(ratios):.2f}")
PY

uptime
[ "${FLEET:-1}" = 0 ] && exit 0
echo "== fleet: $AGENTS agents at 1 Hz for ${FLEET_SECS}s, lateness ${LATENESS}s =="
P=$(serve collector 7313 http://127.0.0.1:7399); wait_ready "$WORK/serve-collector-7313.log"
"$BIN" fleet --endpoint https://127.0.0.1:7313 --certs "$WORK/certs" --agents "$AGENTS" \
  --seconds "$FLEET_SECS" --lateness "$LATENESS" --otlp-listen 127.0.0.1:7399 --server-pid "$P"
kill "$P"
