#!/usr/bin/env bash
# Replay throughput: `outflow replay` vs DuckDB computing the same
# per-(host, pid, minute) join and aggregation on the same file.
#   bench/replay/run.sh [HOSTS] [DAYS]      (defaults: 1000 hosts, 3 days ≈ 1.1 M events)
# Needs: python3 with duckdb (pip install duckdb), a release build
# (OUTFLOW_BIN=path skips the build).
#
# Outflow runs twice: one engine (`--shards 1`: a parser thread and an engine
# thread) and two engines (`--shards 2`, hosts split, parsing shared,
# baselines swapped). DuckDB runs with 2 threads. Reported per run: events/s
# of wall time, events per CPU-second (user+sys; fair when the machine is
# shared), peak RSS. Ratios are taken against DuckDB in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
hosts=${1:-1000}
days=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
if [ -z "${OUTFLOW_BIN:-}" ]; then
  cargo build --release -q -p outflow
fi
bin=${OUTFLOW_BIN:-target/release/outflow}
$bin sim --hosts "$hosts" --days "$days" --seed 1 --out "$work/fleet.jsonl" --truth "$work/truth.jsonl"
size=$(stat -c %s "$work/fleet.jsonl")
echo "input: $(wc -l < "$work/fleet.jsonl") lines, $((size / 1048576)) MiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Warm the page cache for both.
cat "$work/fleet.jsonl" > /dev/null

run_outflow() {  # shards → "events/s events/cpu-s rss_mib alerts"
  /usr/bin/time -f '%e %U %S %M' -o "$work/o$1.time" \
    $bin replay --shards "$1" --input "$work/fleet.jsonl" --alerts-out "$work/alerts$1.jsonl" --json-summary 2> "$work/o$1.summary"
  python3 - "$work/o$1.summary" "$work/o$1.time" "$work/alerts$1.jsonl" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
wall, user, sys_, rss = open(sys.argv[2]).read().split()[-4:]
cpu = float(user) + float(sys_)
alerts = sum(1 for _ in open(sys.argv[3]))
print(round(s["events_per_sec"]), round(s["events"] / cpu) if cpu > 0 else 0, int(rss) // 1024, alerts)
PY
}
read -r o1_eps o1_cpu o1_rss o1_alerts <<< "$(run_outflow 1)"
read -r o2_eps o2_cpu o2_rss o2_alerts <<< "$(run_outflow 2)"
duck=$(python3 bench/replay/duckdb_join.py "$work/fleet.jsonl" 2)
read -r d_eps d_cpu d_rss <<< "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["events_per_sec"], d["events_per_cpu_sec"], round(d["peak_rss_mib"]))' "$duck")"

printf '%-26s %12s %16s %9s\n' "" "events/s" "events/CPU-s" "peak RSS"
printf '%-26s %12s %16s %6s MiB   (%s alerts)\n' "outflow --shards 1" "$o1_eps" "$o1_cpu" "$o1_rss" "$o1_alerts"
printf '%-26s %12s %16s %6s MiB   (%s alerts)\n' "outflow --shards 2" "$o2_eps" "$o2_cpu" "$o2_rss" "$o2_alerts"
printf '%-26s %12s %16s %6s MiB\n' "duckdb (2 threads)" "$d_eps" "$d_cpu" "$d_rss"
python3 - "$o1_eps" "$o2_eps" "$d_eps" "$o1_cpu" "$o2_cpu" "$d_cpu" <<'PY'
import sys
o1, o2, d, c1, c2, dc = map(float, sys.argv[1:])
print(f"ratio vs duckdb, events/s:      shards 1 {o1/d:.2f}x, shards 2 {o2/d:.2f}x   (target >= 2x)")
print(f"ratio vs duckdb, events/CPU-s:  shards 1 {c1/dc:.2f}x, shards 2 {c2/dc:.2f}x")
PY
echo "detection, shards 1: $($bin eval --truth "$work/truth.jsonl" --alerts "$work/alerts1.jsonl" | head -2 | tr '\n' ' ')"
echo "detection, shards 2: $($bin eval --truth "$work/truth.jsonl" --alerts "$work/alerts2.jsonl" | head -2 | tr '\n' ' ')"
