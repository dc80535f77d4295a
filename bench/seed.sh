# Sourced by bench/load.sh and bench/tunnels.sh (needs BIN and WORK set).
# seed_demo UPSTREAM: seeds a database with `portcullis dev` (the admin key, the demo route),
# then points the demo route at UPSTREAM and lifts the key's rate limit (the benchmarks measure
# the pipeline, not the limiter refusing requests). The dev stack's demo route injects a
# credential from its mocked Secrets Manager, which a standalone `portcullis proxy` cannot
# read; the benchmark upstreams need none, so the route drops it. Sets KEY to the admin key.
# DB=postgres seeds a fresh database `portcullis_bench` on PG_URL (and exports DATABASE_URL)
# instead of the SQLite file in $WORK/data.
seed_demo() {
  local upstream=$1 dev
  export PORTCULLIS_DATA_DIR="$WORK/data" PORTCULLIS_LOG=warn
  if [ "${DB:-sqlite}" = postgres ]; then
    local server=${PG_URL:-postgres://postgres@127.0.0.1:5432}
    psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS portcullis_bench WITH (FORCE)" \
      -c "CREATE DATABASE portcullis_bench"
    export DATABASE_URL="$server/portcullis_bench"
  fi
  # No instance metadata lookups at start-up (this is not an EC2 host).
  export AWS_REGION=${AWS_REGION:-us-east-1} AWS_EC2_METADATA_DISABLED=true
  "$BIN" dev --api-addr 127.0.0.1:19090 --proxy-addr 127.0.0.1:19091 --demo-upstream-addr 127.0.0.1:19092 >/dev/null 2>&1 &
  dev=$!
  for _ in $(seq 1 100); do curl -fs 127.0.0.1:19090/healthz >/dev/null 2>&1 && break; sleep 0.1; done
  kill -TERM $dev; wait $dev || true
  KEY=$(cat "$WORK/data/admin-key")
  local seed="UPDATE route SET upstream_url = 'http://$upstream', upstream_credential_secret_id = NULL,
        upstream_credential_header = NULL WHERE name = 'demo';
      UPDATE api_key SET rate_limit_per_minute = 1000000000, rate_limit_burst = 10000000;"
  if [ "${DB:-sqlite}" = postgres ]; then
    psql -q "$DATABASE_URL" -c "$seed"
  else
    python3 -c 'import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.executescript(sys.argv[2]); db.commit()' \
      "$WORK/data/portcullis.db" "$seed"
  fi
}
