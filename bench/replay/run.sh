#!/usr/bin/env bash
# Replay throughput: `outflow replay` vs DuckDB computing the same
# per-(host, pid, minute) join and aggregation on the same file.
#   bench/replay/run.sh [HOSTS] [DAYS]      (defaults: 1000 hosts, 3 days ≈ 1.1 M events)
# Needs: python3 with duckdb (pip install duckdb), a release build.
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
echo "input: $(wc -l < "$work/fleet.jsonl") lines, $((size / 1048576)) MiB"
# Warm the page cache for both.
cat "$work/fleet.jsonl" > /dev/null

/usr/bin/time -f '%e %M' -o "$work/outflow.time" \
  $bin replay --input "$work/fleet.jsonl" --alerts-out "$work/alerts.jsonl" --json-summary 2> "$work/outflow.summary"
outflow_eps=$(python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["events_per_sec"]))' "$work/outflow.summary")
read -r outflow_secs outflow_rss_kib < "$work/outflow.time"

duck=$(python3 bench/replay/duckdb_join.py "$work/fleet.jsonl" 2)
duck_eps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["events_per_sec"])' "$duck")
duck_rss=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["peak_rss_mib"])' "$duck")

echo "outflow replay: ${outflow_eps} events/s (wall ${outflow_secs} s incl. start), peak RSS $((outflow_rss_kib / 1024)) MiB, $(wc -l < "$work/alerts.jsonl") alerts"
echo "duckdb (2 threads): ${duck_eps} events/s, peak RSS ${duck_rss} MiB   $duck"
python3 -c "import sys; print(f'ratio outflow/duckdb: {int(sys.argv[1])/int(sys.argv[2]):.2f}x')" "$outflow_eps" "$duck_eps"
$bin eval --truth "$work/truth.jsonl" --alerts "$work/alerts.jsonl" | head -3
