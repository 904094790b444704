"""The peer for `outflow replay`: DuckDB computes the same per-(host, pid,
minute) join and aggregation over the same telemetry JSONL.

Every `net` record is attributed to the latest `process_start` of its (host,
pid) at or before its time (ASOF join), and bytes are summed per (host, pid,
app, minute) — the engine's windowing without the scoring. Prints one JSON
line: events, seconds, events/s, peak RSS, groups.
"""
import json
import resource
import sys
import time

import duckdb

path = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2

t0 = time.perf_counter()
con = duckdb.connect()
con.execute(f"SET threads TO {threads}")
con.execute(
    """
    CREATE TABLE ev AS SELECT * FROM read_ndjson(?, columns = {
        type: 'VARCHAR', ts: 'TIMESTAMPTZ', host: 'VARCHAR', pid: 'UINTEGER',
        name: 'VARCHAR', dst_ip: 'VARCHAR', dst_port: 'USMALLINT',
        bytes_out: 'UBIGINT', bytes_in: 'UBIGINT', sni: 'VARCHAR'
    }, ignore_errors = true, maximum_object_size = 1048576)
    """,
    [path],
)
events = con.execute("SELECT count(*) FROM ev").fetchone()[0]
groups = con.execute(
    """
    WITH p AS (
        SELECT host, pid, ts AS start, lower(name) AS app FROM ev WHERE type = 'process_start'
    ), n AS (
        SELECT host, pid, ts, bytes_out, bytes_in FROM ev WHERE type = 'net'
    )
    SELECT count(*) FROM (
        SELECT n.host, n.pid, coalesce(p.app, 'unknown') AS app,
               time_bucket(INTERVAL 1 minute, n.ts - INTERVAL 1 microsecond) AS minute,
               sum(n.bytes_out) AS bytes_out, sum(n.bytes_in) AS bytes_in
        FROM n ASOF LEFT JOIN p ON n.host = p.host AND n.pid = p.pid AND n.ts >= p.start
        GROUP BY ALL
    )
    """
).fetchone()[0]
secs = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
rss_mib = ru.ru_maxrss / 1024
cpu = ru.ru_utime + ru.ru_stime
print(json.dumps({
    "peer": "duckdb " + duckdb.__version__,
    "threads": threads,
    "events": events,
    "groups": groups,
    "seconds": round(secs, 3),
    "events_per_sec": round(events / secs),
    "cpu_seconds": round(cpu, 3),
    "events_per_cpu_sec": round(events / cpu) if cpu > 0 else 0,
    "peak_rss_mib": round(rss_mib, 1),
}))
