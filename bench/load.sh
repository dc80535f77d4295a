#!/usr/bin/env bash
# Open-loop load comparison, in one run on one machine:
#   (a) the upstream directly, (b) nginx as a plain proxy_pass reverse proxy,
#   (c) Portcullis with the full pipeline (API-key auth, policy, rate limit, audit).
# Keep-alive on, 1 KiB responses. Prints p50/p99/p99.9 per rate, the highest rate each
# sustains (closed loop, 64 connections), the proxy's CPU time per request split by thread,
# Portcullis's RSS, and start-up to first response.
#
# Needs: nginx (apt-get install nginx), oha (cargo install oha), python3, a release build
# (cargo build --release). Usage: bench/load.sh [rates...]   (default: 1000 5000 10000)
# CALLGRIND=N bench/load.sh counts instructions per request instead, of Portcullis and of the
# bare hyper proxy (needs valgrind). KEEP=dir keeps the work directory (dumps, logs, database).
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=("${@:-1000 5000 10000}")
read -r -a RATES <<<"${RATES[*]}"
DURATION=${DURATION:-10s}
BIN=${BIN:-target/release/portcullis}  # another build to compare: BIN=path bench/load.sh
# CALLGRIND=N: instead of the load runs, count the instructions Portcullis executes per
# request, per thread, over N requests after a warm-up (valgrind's callgrind). Unlike
# wall-clock CPU time on a shared VM, the count repeats run to run, so small changes show.
CALLGRIND=${CALLGRIND:-}
WORK=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
UPSTREAM=127.0.0.1:19001 NGINX=127.0.0.1:19002 BARE=127.0.0.1:19003 PROXY=127.0.0.1:19080
# The floor: the same hyper server, client and runtime with no pipeline (proxy/examples).
BARE_BIN=${BARE_BIN:-target/release/examples/bare_proxy}
# The system under test runs on core 1; the upstream and the load generator on core 0.
SUT_CPU=1 LOAD_CPU=0
PIDS=()
# Waits for the processes to exit before KEEP copies the work directory: a copy of a database
# still open (its -wal file half-written) would not open as the same database.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && cp -r "$WORK" "$KEEP"; rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v oha >/dev/null || { echo "needs oha: cargo install oha" >&2; exit 1; }
command -v nginx >/dev/null || { echo "needs nginx: apt-get install nginx" >&2; exit 1; }
# A process left on one of these ports (an earlier run, a by-hand experiment) would answer in
# place of the one this script starts, and be measured without anyone noticing.
for addr in "$UPSTREAM" "$NGINX" "$BARE" "$PROXY" 127.0.0.1:19090 127.0.0.1:19091 127.0.0.1:19092; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    echo "port ${addr#*:} is already in use; stop whatever listens there first" >&2; exit 1
  fi
done

# --- upstream and plain reverse proxy (nginx, one worker each) ---------------------------
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$WORK/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/upstream.pid; error_log $WORK/upstream.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen $UPSTREAM; location / { default_type text/plain; return 200 "$BODY"; } } }
CONF
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server $UPSTREAM; keepalive 256; }
  server { listen $NGINX; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
taskset -c $LOAD_CPU nginx -c "$WORK/upstream.conf" -p "$WORK" & PIDS+=($!)
taskset -c $SUT_CPU nginx -c "$WORK/nginx.conf" -p "$WORK" & NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
TARGETS=(direct nginx)
if [ -x "$BARE_BIN" ]; then
  # Under CALLGRIND the bare proxy is counted too, as the floor of the Tokio column.
  BARE_RUNNER=()
  [ -n "$CALLGRIND" ] && BARE_RUNNER=(valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$WORK/bare.callgrind.out")
  taskset -c $SUT_CPU "${BARE_RUNNER[@]}" "$BARE_BIN" "$BARE" "$UPSTREAM" 2>/dev/null & BARE_PID=$!; PIDS+=($BARE_PID)
  TARGETS+=(bare-hyper)
else
  echo "(no $BARE_BIN: cargo build --release -p proxy --example bare_proxy to compare with it)" >&2
fi
TARGETS+=(portcullis)

# --- Portcullis: seed a database with `dev`, then run `portcullis proxy` alone ------------
# DB=postgres uses a fresh database `portcullis_bench` on PG_URL instead of the SQLite file.
DB=${DB:-sqlite}
source bench/seed.sh
seed_demo "$UPSTREAM"

START_NS=$(date +%s%N)
RUNNER=()
if [ -n "$CALLGRIND" ]; then
  command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
  RUNNER=(valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$WORK/callgrind.out")
fi
PORTCULLIS_PROXY_ADDR=$PROXY taskset -c $SUT_CPU "${RUNNER[@]}" "$BIN" proxy >"$WORK/proxy.log" 2>&1 & PROXY_PID=$!; PIDS+=($PROXY_PID)
for i in $(seq 1 2000); do
  curl -fs -o /dev/null -H "x-api-key: $KEY" "http://$PROXY/demo/" && break
  [ "$i" = 2000 ] && { echo "portcullis never answered 200; the end of its log:" >&2; tail -5 "$WORK/proxy.log" >&2; exit 1; }
  sleep 0.005
done
FIRST_MS=$(( ($(date +%s%N) - START_NS) / 1000000 ))
for _ in $(seq 1 50); do curl -fs -o /dev/null "http://$UPSTREAM/" && curl -fs -o /dev/null "http://$NGINX/" && break; sleep 0.1; done
sleep 1
# Total, then how much of it is heap and stacks (anonymous) vs mapped code and data (file),
# and how much of the file-backed part is the executable itself (see build.rs).
rss() { awk '/VmRSS/ {t=$2} /RssAnon/ {a=$2} /RssFile/ {f=$2}
  END {printf "%.1f MiB (anonymous %.1f, file %.1f", t/1024, a/1024, f/1024}' "/proc/$PROXY_PID/status"
  # The mapping's path ends the line (it may hold spaces); under valgrind nothing matches.
  awk -v exe="$(readlink -f "$BIN")" '/^[0-9a-f]+-[0-9a-f]+ / {
      mapped = (substr($0, length($0) - length(exe) + 1) == exe) }
    /^Rss:/ && mapped {s += $2} END {printf ", executable %.1f)", s/1024}' "/proc/$PROXY_PID/smaps"; }
RSS_IDLE=$(rss)

if [ -n "$CALLGRIND" ]; then
  count() { # pid url dump-prefix label: warm up, zero, load, dump, print per-thread counts
    load() { taskset -c $LOAD_CPU oha -n "$1" -c 16 --no-tui -H "x-api-key: $KEY" "$2" >/dev/null 2>&1; }
    load 1000 "$2"  # warm-up: caches filled, statements prepared
    callgrind_control -z "$1" >/dev/null 2>&1
    load "$CALLGRIND" "$2"
    callgrind_control -d "$1" >/dev/null 2>&1
    sleep 1
    for dump in "$3".1-*; do
      total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
      [ "${total:-0}" -gt 1000000 ] || continue
      thread="thread ${dump##*-}"
      grep -q "sqlx_sqlite::connection::worker" "$dump" && thread="SQLite worker"
      grep -q "multi_thread::worker::run" "$dump" && thread="Tokio worker"
      printf '  %-12s %-14s %8d\n' "$4" "$thread" $((total / CALLGRIND))
    done
  }
  echo "instructions per request over $CALLGRIND requests (callgrind; SHA-256 runs its AVX code, not SHA-NI):"
  count "$PROXY_PID" "http://$PROXY/demo/x" "$WORK/callgrind.out" portcullis
  [ -n "${BARE_PID:-}" ] && count "$BARE_PID" "http://$BARE/demo/x" "$WORK/bare.callgrind.out" bare-hyper
  exit 0
fi

# --- measurements ---------------------------------------------------------------------
run_oha() { # url rate(or "max") -> json
  local url=$1 rate=$2 extra=()
  if [ "$rate" = max ]; then extra=(-c 64); else extra=(-q "$rate" --latency-correction -c 256); fi
  taskset -c $LOAD_CPU oha -z "$DURATION" "${extra[@]}" --no-tui --output-format json \
    -H "x-api-key: $KEY" "$url" 2>/dev/null
}
# The process doing the proxying, whose CPU time is charged to each request.
sut_pid() {
  case $1 in
    nginx) pgrep -P "$NGINX_MASTER" | head -n 1 || true ;;
    bare-hyper) echo "$BARE_PID" ;;
    # With PostgreSQL, the server's processes work for Portcullis too: count them.
    portcullis) echo "$PROXY_PID" $([ "$DB" = postgres ] && pgrep -x postgres) ;;
  esac
}
# CPU ticks (user + system) per thread name, e.g. "tokio-rt-worker 812".
ticks() {
  local pid task
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      printf '%s %s\n' "$(tr ' ' _ <"$task/comm")" "$(awk '{print $14 + $15}' "$task/stat")"
    done 2>/dev/null
  done
}
# Prints the latency summary; with tick snapshots before and after, the CPU per request too.
summary() { python3 -c '
import json, os, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]; s = d["summary"]
codes = d.get("statusCodeDistribution", {})
ok = codes.get("200", 0); total = sum(codes.values()) or 1
line = "%8.0f req/s  p50 %7.0f us  p99 %7.0f us  p99.9 %7.0f us  ok %5.1f%%" % (
    s["requestsPerSec"], p["p50"]*1e6, p["p99"]*1e6, p["p99.9"]*1e6, 100.0*ok/total)
def read(path):
    out = {}
    for row in open(path).read().split("\n"):
        if row.strip():
            name, n = row.split()
            out[name] = out.get(name, 0) + int(n)
    return out
before, after = read(sys.argv[1]), read(sys.argv[2])
requests = sum(codes.values())
if requests and after:
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    per = {k: (after[k] - before.get(k, 0)) * tick_us / requests for k in after}
    busy = sorted(((v, k) for k, v in per.items() if v >= 0.5), reverse=True)
    line += "  cpu %5.1f us/req (%s)" % (sum(per.values()), ", ".join("%s %.1f" % (k, v) for v, k in busy))
print(line)' "$WORK/ticks.before" "$WORK/ticks.after"
}

printf '\n%-12s %-8s %s\n' target rate result
for rate in "${RATES[@]}" max; do
  for target in "${TARGETS[@]}"; do
    case $target in
      direct) url="http://$UPSTREAM/demo/x" ;;
      nginx) url="http://$NGINX/demo/x" ;;
      bare-hyper) url="http://$BARE/demo/x" ;;
      portcullis) url="http://$PROXY/demo/x" ;;
    esac
    read -r -a pids <<<"$(sut_pid "$target")"
    ticks "${pids[@]}" >"$WORK/ticks.before"
    run_oha "$url" "$rate" >"$WORK/oha.json"
    ticks "${pids[@]}" >"$WORK/ticks.after"
    printf '%-12s %-8s %s\n' "$target" "$rate" "$(summary <"$WORK/oha.json")"
  done
done
echo
echo "portcullis RSS: idle $RSS_IDLE, after load $(rss)"
echo "portcullis start to first proxied response: ${FIRST_MS} ms"
