#!/usr/bin/env bash
# Replay throughput: `outflow replay` vs DuckDB computing the same
# per-(host, pid, minute) join and aggregation on the same file.
#   bench/replay/run.sh [HOSTS] [DAYS]      (defaults: 1000 hosts, 3 days ≈ 1.1 M events)
# Needs: python3 with duckdb (pip install duckdb), a build with the `dist`
# profile, as production images use (fat LTO; OUTFLOW_BIN=path skips the
# build).
#
# Outflow runs twice: one engine (`--shards 1`: a parser thread and an engine
# thread) and two engines (`--shards 2`, hosts split over two engines that
# parse their own lines, baselines swapped). DuckDB runs with 2 threads.
# RUNS rounds (default 3) of the three; reported per run and as medians:
# events/s of wall time, events per CPU-second (user+sys; fair when the
# machine is shared), peak RSS. Ratios are taken against DuckDB in the same
# run, and between medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
hosts=${1:-1000}
days=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
if [ -z "${OUTFLOW_BIN:-}" ]; then
  cargo build --profile dist -q -p outflow
fi
bin=${OUTFLOW_BIN:-target/dist/outflow}
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
# Runs: RUNS rounds (default 3), each Outflow one engine, two engines and
# DuckDB back to back, so the three see the same state of the machine.
runs=${RUNS:-3}
: > "$work/rows"
for r in $(seq "$runs"); do
  read -r o1_eps o1_cpu o1_rss o1_alerts <<< "$(run_outflow 1)"
  read -r o2_eps o2_cpu o2_rss o2_alerts <<< "$(run_outflow 2)"
  duck=$(python3 bench/replay/duckdb_join.py "$work/fleet.jsonl" 2)
  read -r d_eps d_cpu d_rss <<< "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["events_per_sec"], d["events_per_cpu_sec"], round(d["peak_rss_mib"]))' "$duck")"
  echo "$o1_eps $o1_cpu $o1_rss $o2_eps $o2_cpu $o2_rss $d_eps $d_cpu $d_rss" >> "$work/rows"
done

python3 - "$work/rows" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
names = ["outflow --shards 1", "outflow --shards 2", "duckdb (2 threads)"]
print(f"{'run':<5}{'':22}{'events/s':>12}{'events/CPU-s':>15}{'peak RSS':>10}{'vs duckdb':>11}")
for i, r in enumerate(rows, 1):
    for k, name in enumerate(names):
        eps, cpu, rss = r[3 * k:3 * k + 3]
        ratio = f"{eps / r[6]:.2f}x" if k < 2 else ""
        print(f"{i:<5}{name:22}{eps:12.0f}{cpu:15.0f}{rss:7.0f} MiB{ratio:>11}")
med = [statistics.median(r[j] for r in rows) for j in range(9)]
print(f"median of {len(rows)} runs:")
for k, name in enumerate(names):
    print(f"     {name:22}{med[3 * k]:12.0f}{med[3 * k + 1]:15.0f}{med[3 * k + 2]:7.0f} MiB")
for k in (0, 1):
    per_run = [r[3 * k] / r[6] for r in rows]
    per_cpu = [r[3 * k + 1] / r[7] for r in rows]
    print(f"ratio vs duckdb, shards {k + 1}: events/s median {med[3 * k] / med[6]:.2f}x "
          f"(runs {min(per_run):.2f}-{max(per_run):.2f}x), per CPU-second median "
          f"{med[3 * k + 1] / med[7]:.2f}x (runs {min(per_cpu):.2f}-{max(per_cpu):.2f}x)   (target >= 2x)")
PY
echo "detection, shards 1: $($bin eval --truth "$work/truth.jsonl" --alerts "$work/alerts1.jsonl" | head -2 | tr '\n' ' ')"
echo "detection, shards 2: $($bin eval --truth "$work/truth.jsonl" --alerts "$work/alerts2.jsonl" | head -2 | tr '\n' ' ')"
