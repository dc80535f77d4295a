#!/usr/bin/env bash
# What open WebSocket tunnels cost the proxy while they sit idle: opens N tunnels through
# `portcullis proxy` (API key, full admission) to a WebSocket upstream, then measures the
# proxy's CPU time over a window in which nothing crosses them. The proxy re-checks every
# open tunnel's request (key, bindings, IP rules, route) while it is open; this shows what
# that costs per tunnel. Prints tunnels open, CPU (% of one core), and RSS.
#
# Needs: python3, a release build (cargo build --release). Usage:
#   bench/tunnels.sh [tunnels...]        (default: 0 1000 8000; 0 is the proxy's own idle cost)
#   BIN=/path/to/other/portcullis WINDOW=10 bench/tunnels.sh 5000
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("${@:-0 1000 8000}")
read -r -a COUNTS <<<"${COUNTS[*]}"
BIN=${BIN:-target/release/portcullis}
WINDOW=${WINDOW:-10}
WORK=$(mktemp -d /tmp/portcullis-tunnels.XXXXXX)
UPSTREAM=127.0.0.1:19101 PROXY=127.0.0.1:19180
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for addr in "$UPSTREAM" "$PROXY" 127.0.0.1:19090 127.0.0.1:19091 127.0.0.1:19092; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    echo "port ${addr#*:} is already in use; stop whatever listens there first" >&2; exit 1
  fi
done
# Each tunnel is two sockets in the proxy: at most about half the open-file limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A WebSocket upstream that completes the handshake and then only holds the connection.
cat >"$WORK/upstream.py" <<'PY'
import asyncio, base64, hashlib, sys
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
async def serve(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
               if l.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    await writer.drain()
    await reader.read()  # until the proxy closes
    writer.close()
async def main():
    host, port = sys.argv[1].split(":")
    server = await asyncio.start_server(serve, host, int(port), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
# Opens N tunnels (64 handshakes at a time), reports, then holds them until killed.
cat >"$WORK/clients.py" <<'PY'
import asyncio, sys
proxy, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = proxy.split(":")
HANDSHAKE = ("GET /demo/ws HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % (proxy, key)).encode()
async def open_one(gate, held):
    async with gate:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(HANDSHAKE)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit("tunnel refused: %r" % head[:80])
        held.append((reader, writer))
async def main():
    gate, held = asyncio.Semaphore(64), []
    await asyncio.gather(*(open_one(gate, held) for _ in range(n)))
    print("open", len(held), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
PY
python3 "$WORK/upstream.py" "$UPSTREAM" & PIDS+=($!)

source bench/seed.sh
seed_demo "$UPSTREAM"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
fail() { echo "$1; the end of the proxy's log:" >&2; tail -5 "$WORK/proxy.log" >&2; exit 1; }
printf '%-8s %-16s %s\n' tunnels "proxy CPU" RSS
for i in "${!COUNTS[@]}"; do
  n=${COUNTS[$i]}
  PORTCULLIS_PROXY_ADDR=$PROXY PORTCULLIS_PROXY__MAX_CONNECTIONS=$((n + 1000)) \
    "$BIN" proxy >"$WORK/proxy.log" 2>&1 & PROXY_PID=$!; PIDS+=($PROXY_PID)
  ready=
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/${PROXY%:*}/${PROXY#*:}") 2>/dev/null && { ready=1; break; }
    sleep 0.05
  done
  [ -n "$ready" ] || fail "portcullis proxy never listened on $PROXY"
  mkfifo "$WORK/opened.$i"
  python3 "$WORK/clients.py" "$PROXY" "$KEY" "$n" >"$WORK/opened.$i" & CLIENTS=$!; PIDS+=($CLIENTS)
  read -r -t 300 _ opened <"$WORK/opened.$i" || fail "the $n tunnels did not all open"
  sleep 2  # past every tunnel's first re-check
  before=$(ticks $PROXY_PID)
  sleep "$WINDOW"
  after=$(ticks $PROXY_PID)
  cpu=$(python3 -c "import os,sys; print('%.1f %%' % ((int(sys.argv[2]) - int(sys.argv[1])) * 100.0 / os.sysconf('SC_CLK_TCK') / float(sys.argv[3])))" "$before" "$after" "$WINDOW")
  printf '%-8s %-16s %s\n' "$opened" "$cpu" "$(rss $PROXY_PID)"
  kill $CLIENTS 2>/dev/null || true; wait $CLIENTS 2>/dev/null || true
  kill -TERM $PROXY_PID 2>/dev/null || true; wait $PROXY_PID 2>/dev/null || true
done
