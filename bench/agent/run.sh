#!/usr/bin/env bash
# Agent overhead benchmark (not in CI): with ~500 processes and ~2,000 open
# TCP sockets (created here, with a trickle of traffic on them), run the
# agent at 1 Hz and `ss -tinp` polled at 1 Hz side by side for the same
# period, and report mean CPU (percent of one core) and resident memory.
#
# Usage: bench/agent/run.sh [SECONDS]   (as root; default 60 s)
# Env:   PROCS=500 SOCKETS=2000 AGENT_ARGS="..." (extra flags for the agent)
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-60}
PROCS=${PROCS:-500}
SOCKETS=${SOCKETS:-2000}
WARMUP=5
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${SLEEPERS_PGID:-}" ] && kill -- -"$SLEEPERS_PGID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || echo "warning: not root: the agent runs with reduced probes" >&2
command -v ss >/dev/null || { echo "ss (iproute2) is needed for the comparison" >&2; exit 1; }

echo "building outflow-agent (release)…" >&2
cargo build --release -p outflow-agent -q
AGENT=target/release/outflow-agent

# ~PROCS processes in total: top up with sleepers in their own process group.
have=$(ls -d /proc/[0-9]* | wc -l)
need=$(( PROCS > have ? PROCS - have : 0 ))
setsid bash -c "for i in \$(seq $need); do sleep $((DUR + 120)) & done; wait" &
SLEEPERS_PGID=$!
PIDS+=("$SLEEPERS_PGID")

# SOCKETS/2 loopback connections (both ends open = SOCKETS sockets), with a
# trickle: every second 10 % of them send 100 bytes each way.
cat > "$TMP/sockets.py" <<'PY'
import socket, sys, time, random, selectors
n = int(sys.argv[1]) // 2
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(4096); port = srv.getsockname()[1]
clients, servers = [], []
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port)); s, _ = srv.accept()
    clients.append(c); servers.append(s)
print("ready", flush=True)
payload = b"x" * 100
while True:
    for i in random.sample(range(n), max(1, n // 10)):
        clients[i].sendall(payload); servers[i].recv(4096)
        servers[i].sendall(payload); clients[i].recv(4096)
    time.sleep(1)
PY
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -gt $((SOCKETS + 64)) ] || { echo "open-file limit $(ulimit -n) is too low for $SOCKETS sockets" >&2; exit 1; }
python3 "$TMP/sockets.py" "$SOCKETS" > "$TMP/sockets.out" &
PIDS+=($!)
for _ in $(seq 100); do grep -q ready "$TMP/sockets.out" 2>/dev/null && break; sleep 0.2; done
sleep 1

nprocs=$(ls -d /proc/[0-9]* | wc -l)
nsocks=$(ss -tan state established | tail -n +2 | wc -l)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }        # own utime+stime
child_ticks() { awk '{print $16 + $17}' "/proc/$1/stat"; }  # waited-for children
HZ=$(getconf CLK_TCK)

"$AGENT" run --output /dev/null --sample-interval-ms 1000 --batch-interval-ms 5000 \
  --duration-secs $((DUR + WARMUP + 30)) ${AGENT_ARGS:-} 2> "$TMP/agent.log" &
APID=$!
PIDS+=("$APID")

# ss polled at 1 Hz for the same information (TCP info + owning process).
bash -c 'while :; do ss -tinp > /dev/null; sleep 1; done' &
SPID=$!
PIDS+=("$SPID")

sleep "$WARMUP"
a0=$(ticks "$APID"); s0=$(( $(ticks "$SPID") + $(child_ticks "$SPID") )); t0=$(date +%s.%N)
sleep "$DUR"
a1=$(ticks "$APID"); s1=$(( $(ticks "$SPID") + $(child_ticks "$SPID") )); t1=$(date +%s.%N)
rss_kb=$(awk '/VmRSS/{print $2}' "/proc/$APID/status")
hwm_kb=$(awk '/VmHWM/{print $2}' "/proc/$APID/status")

python3 - "$a0" "$a1" "$s0" "$s1" "$t0" "$t1" "$HZ" "$rss_kb" "$hwm_kb" "$nprocs" "$nsocks" <<'PY'
import sys
a0, a1, s0, s1 = map(float, sys.argv[1:5]); t0, t1 = float(sys.argv[5]), float(sys.argv[6])
hz = float(sys.argv[7]); rss, hwm = int(sys.argv[8]), int(sys.argv[9])
procs, socks = sys.argv[10], sys.argv[11]
el = t1 - t0
agent = (a1 - a0) / hz / el * 100
ss = (s1 - s0) / hz / el * 100
print(f"processes: {procs}, established TCP sockets: {socks}, measured over {el:.0f} s at 1 Hz")
print(f"outflow-agent: mean CPU {agent:.3f} % of one core, RSS {rss/1024:.1f} MiB (peak {hwm/1024:.1f} MiB)")
print(f"ss -tinp @1Hz: mean CPU {ss:.3f} % of one core")
ratio = agent / ss if ss > 0 else float('nan')
print(f"agent / ss CPU ratio: {ratio:.2f}")
ok = agent <= 1.0 and hwm / 1024 <= 30 and ratio <= 0.5
print("targets (CPU <= 1 %, RSS <= 30 MiB, <= half of ss):", "MET" if ok else "NOT MET")
PY
grep -iE "warn|error" "$TMP/agent.log" | head -5 || true
