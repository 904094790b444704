#!/usr/bin/env bash
# Aggregator benchmarks (not part of CI):
#  1. replicated baseline-update throughput on 3 local `outflow aggregator`
#     processes (mutual TLS, write-ahead log file with fdatasync per group
#     commit) vs a local 3-member etcd cluster loaded the same way (same
#     clients, 4 HTTP/2 connections, to the leader, one write per request,
#     mutual TLS on client and peer links unless OUTFLOW_BENCH_ETCD_TLS=0),
#     with p50/p99 latency; both run one after the other in this script;
#  2. failover and recovery time after kill -9 of the leader, over N runs.
#
# Needs Debian `etcd-server` and `etcd-client` (apt-get install etcd-server etcd-client).
# Knobs: OUTFLOW_BENCH_CLIENTS (64), OUTFLOW_BENCH_SECS (10), OUTFLOW_BENCH_RUNS (20),
# OUTFLOW_BENCH_VALUE_BYTES (etcd value size, 256), OUTFLOW_BENCH_ETCD_TLS (1).
# Run from anywhere: bench/aggregator/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

export OUTFLOW_BENCH_CLIENTS="${OUTFLOW_BENCH_CLIENTS:-64}"
export OUTFLOW_BENCH_SECS="${OUTFLOW_BENCH_SECS:-10}"
export OUTFLOW_BENCH_RUNS="${OUTFLOW_BENCH_RUNS:-20}"

command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server etcd-client" >&2; exit 2; }
command -v etcdctl >/dev/null || { echo "etcdctl not found: apt-get install etcd-client" >&2; exit 2; }

echo "building (release)..." >&2
cargo build --release -q -p outflow
cargo test --release -q -p outflow-tests --test cluster_process --test cluster_etcd_bench --no-run

out=$(mktemp)
trap 'rm -f "$out"' EXIT

run() {
    cargo test --release -q -p outflow-tests --test "$1" -- --ignored --nocapture --exact "$2" 2>&1 | tee -a "$out" | grep '^BENCH' || true
}

echo "load before: $(uptime)" >&2
echo "== outflow: 3 aggregators, $OUTFLOW_BENCH_CLIENTS clients, ${OUTFLOW_BENCH_SECS}s ==" >&2
run cluster_process throughput_bench
echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members, same load ==" >&2
run cluster_etcd_bench etcd_throughput_bench

echo "load after: $(uptime)" >&2

python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def grab(prefix):
    m = re.search(r"BENCH " + prefix + r"_writes_per_s=(\d+) p50_ms=([\d.]+) p99_ms=([\d.]+)(.*)", text)
    return tuple(float(x) for x in m.groups()[:3]) + (m.group(4).strip(),) if m else None
o, e = grab("outflow"), grab("etcd")
if not o or not e:
    print("missing a result; see the output above", file=sys.stderr); sys.exit(1)
print(f"outflow: {o[0]:.0f} writes/s  p50 {o[1]:.2f} ms  p99 {o[2]:.2f} ms  ({o[3]})")
print(f"etcd:    {e[0]:.0f} writes/s  p50 {e[1]:.2f} ms  p99 {e[2]:.2f} ms  ({e[3]})")
print(f"ratio:   {o[0]/e[0]:.2f}x writes/s (target >= 2x), p99 {'no worse' if o[2] <= e[2] else 'WORSE'} than etcd")
PY

echo "== failover / recovery after kill -9, $OUTFLOW_BENCH_RUNS runs ==" >&2
run cluster_process failover_bench
