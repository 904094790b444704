#!/usr/bin/env bash
# Cost and effect of the close tracepoint (not in CI): a client opens,
# writes 2 KB on and closes loopback TCP connections as fast as it can while
# the agent runs at 1 Hz, alternately with the tracepoint (all probes) and
# without it (the agent started without CAP_PERFMON / CAP_SYS_ADMIN, so the
# tracepoint cannot open). Reports, per run: connections/s the client made,
# agent CPU (percent of one core), and the share of the client's bytes the
# agent attributed to a pid (not pid 0). Runs alternate (on, off, on, off)
# so load drifts hit both sides.
#
# Usage: bench/agent/close_churn.sh [SECONDS per run]   (as root; default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v capsh >/dev/null || { echo "capsh is needed to start the agent without CAP_PERFMON" >&2; exit 1; }

echo "building outflow-agent (release)…" >&2
cargo build --release -p outflow-agent -q
AGENT=$PWD/target/release/outflow-agent

cat > "$TMP/churn.py" <<'PY'
import socket, sys, threading, time
dur = float(sys.argv[1]); out = sys.argv[2]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(4096); port = srv.getsockname()[1]
def serve():
    while True:
        s, _ = srv.accept()
        while s.recv(65536):
            pass
        s.close()
threading.Thread(target=serve, daemon=True).start()
payload = b"x" * 2048
n = 0; end = time.time() + dur
while time.time() < end:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(payload); c.close(); n += 1
open(out, "w").write(f"{port} {n} {n * len(payload)}\n")
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # $1 = on|off
  local out="$TMP/agent-$1.jsonl" pre=()
  # capsh runs bash after `--`: exec the agent from there.
  [ "$1" = off ] && pre=(capsh --drop=cap_perfmon,cap_sys_admin -- -c 'exec "$0" "$@"')
  "${pre[@]}" "$AGENT" run --output "$out" --no-capture --host-id bench \
      --sample-interval-ms 1000 --batch-interval-ms 1000 2>"$TMP/agent-$1.log" &
  local apid=$!
  sleep 2
  local t0; t0=$(cpu_ticks "$apid")
  python3 "$TMP/churn.py" "$DUR" "$TMP/churn-$1.txt"
  sleep 2
  local t1; t1=$(cpu_ticks "$apid")
  kill -TERM "$apid"; wait "$apid" || true
  read -r port conns bytes < "$TMP/churn-$1.txt"
  local tck; tck=$(getconf CLK_TCK)
  python3 - "$out" "$port" "$bytes" "$conns" "$DUR" "$t0" "$t1" "$tck" "$1" <<'PY'
import json, sys
path, port, sent, conns, dur, t0, t1, tck, mode = sys.argv[1:]
port, sent, conns, dur = int(port), int(sent), int(conns), float(dur)
tot = attr = 0
for line in open(path):
    e = json.loads(line)
    if e.get("type") == "net" and e.get("dst_port") == port:
        tot += e["bytes_out"]
        if e["pid"] != 0:
            attr += e["bytes_out"]
cpu = (int(t1) - int(t0)) / int(tck) / (dur + 4) * 100
print(f"tracepoint {mode:3}: {conns / dur:8.0f} conn/s  agent cpu {cpu:5.2f} %  "
      f"bytes seen {tot / max(sent, 1) * 100:6.2f} %  attributed {attr / max(tot, 1) * 100:6.2f} %")
PY
  grep -h "close tracepoint" "$TMP/agent-$1.log" | sed 's/\x1b\[[0-9;]*m//g' | head -2 >&2 || true
}

echo "load: $(uptime)"
for mode in on off on off; do run "$mode"; done
echo "load: $(uptime)"
