#!/usr/bin/env bash
# Records the functions `portcullis proxy` executes from start-up through ordinary requests
# (allowed, refused, unknown route, a body) and an idle spell, under callgrind, and writes
# their symbols to bench/portcullis.order. build.rs links the release executable with those
# functions side by side (see its comment and BENCHMARKS.md, "Idle RSS and the order file").
#
#   cargo build --release && bench/order.sh && cargo build --release
#
# Needs valgrind and python3. BIN=... profiles another build.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-target/release/portcullis}")
OUT=bench/portcullis.order
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

UPSTREAM=127.0.0.1:18180 PROXY=127.0.0.1:18181
for port in 18180 18181 19090 19091 19092; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is taken" >&2; exit 1; fi
done
(cd "$WORK" && exec python3 -m http.server 18180 --bind 127.0.0.1 >/dev/null 2>&1) & PIDS+=($!)
source bench/seed.sh
seed_demo "$UPSTREAM"

PORTCULLIS_PROXY_ADDR=$PROXY valgrind --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file="$WORK/callgrind.out" "$BIN" proxy >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=($PROXY_PID)
for i in $(seq 1 600); do
  curl -fs -o /dev/null -H "x-api-key: $KEY" "http://$PROXY/demo/" && break
  [ "$i" = 600 ] && { echo "the proxy never answered; its log:" >&2; tail -5 "$WORK/proxy.log" >&2; exit 1; }
  sleep 0.1
done
for _ in $(seq 1 100); do curl -s -o /dev/null -H "x-api-key: $KEY" "http://$PROXY/demo/" || true; done
for _ in $(seq 1 5); do
  curl -s -o /dev/null "http://$PROXY/demo/" || true                                # 401
  curl -s -o /dev/null -H "Authorization: Bearer $KEY" "http://$PROXY/nope" || true  # 404
  curl -s -o /dev/null -H "x-api-key: $KEY" -X POST --data 'x=1' "http://$PROXY/demo/" || true
  curl -s -o /dev/null -H "x-api-key: $KEY" "http://$PROXY/demo/a%2Fb" || true       # 400
done
sleep 5   # idle: the policy feed's polls, the audit writer's timers
kill -TERM $PROXY_PID; wait $PROXY_PID || true

# Executed functions (callgrind names each once as fn=/cfn=(id) name) that are symbols of
# the executable, in the executable's present order.
grep -E '^c?fn=\([0-9]+\) ' "$WORK/callgrind.out" | sed -E 's/^c?fn=\([0-9]+\) //' | sort -u >"$WORK/executed"
nm "$BIN" | awk 'NF == 3 && $2 ~ /^[tTwW]$/ {print $1, $3}' | sort >"$WORK/symbols"
awk 'NR == FNR {executed[$0] = 1; next} ($2 in executed) {print $2}' "$WORK/executed" "$WORK/symbols" >"$WORK/order"
# A stripped or foreign binary matches nothing: keep the committed file then.
count=$(wc -l <"$WORK/order")
[ "$count" -ge 1000 ] || { echo "only $count executed functions found in $BIN's symbols; $OUT kept" >&2; exit 1; }
mv "$WORK/order" "$OUT"
echo "$count functions in $OUT"
