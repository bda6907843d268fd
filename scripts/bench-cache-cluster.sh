# Sourced by the trigger benchmarks (bench-trigger.sh, bench-trigger-instructions.sh): a throwaway
# PostgreSQL cluster in DIR (removed on exit) with a 100,000-row cache table carrying walwitness's
# attribution triggers. Needs BIN (server binaries) and WW (the walwitness binary); sets DIR, RUN (the
# prefix that runs a server program as `postgres` when root), DSN and P (psql on DSN).
# synchronous_commit is off so that the disk's fsync time does not drown the microseconds being
# measured; autovacuum is off so that no other child's work is counted.
DIR=$(mktemp -d /tmp/walwitness-bench.XXXXXX)
RUN=()
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; RUN=(runuser -u postgres --); fi
PORT=$(( 20000 + RANDOM % 20000 ))
cleanup() { "${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT
"${RUN[@]}" "$BIN/initdb" -D "$DIR/data" -A trust -U postgres --no-sync >/dev/null
cat >>"$DIR/data/postgresql.conf" <<EOF
wal_level = logical
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
max_connections = 100
shared_buffers = 32MB
synchronous_commit = off
autovacuum = off
EOF
"${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w start >/dev/null
DSN="host=$DIR port=$PORT user=postgres dbname=postgres"
P=("$BIN/psql" -qXAt -d "$DSN" -v ON_ERROR_STOP=1)
"${P[@]}" -c "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL);
  INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 100000) g;"
"$WW" attribution install --dsn "$DSN" --table cache 2>/dev/null
