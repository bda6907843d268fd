#!/usr/bin/env bash
# The activity sampler's cost on the server, at N idle client connections (issue 12):
#
#   bash scripts/bench-sampler.sh [N ...]        # default: 100 1000
#
# A throwaway PostgreSQL (max_connections 1100, pg_stat_statements), N idle connections from
# python3/psycopg2 (installed by scripts/test.sh), each left with a DELETE of the watched table as its
# last statement (the worst case: every session's window is kept), and a real `walwitness capture`
# with its default sampler for SECONDS (default 20). pg_stat_statements then gives the server's
# execution time of the sampling query: calls, mean and total, and the share of one core it takes at
# the default interval. A second round (`busy`) adds a writer deleting 200 single rows per second in
# autocommit, so the capture asks for early samples after commits (spaced by GAP_PER_COST times the
# sample's own cost, see src/attribution/activity.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
counts=("$@")
[ "${#counts[@]}" -gt 0 ] || counts=(100 1000)
seconds="${SECONDS_PER_RUN:-20}"
bash scripts/install-pg.sh
django_dir="${WALWITNESS_DJANGO_PATH:-${XDG_CACHE_HOME:-$HOME/.cache}/walwitness/django-4.2}"
PYTHONPATH="$django_dir" python3 -c 'import psycopg2' 2>/dev/null || {
    mkdir -p "$django_dir"
    python3 -m pip install --quiet --disable-pip-version-check --target "$django_dir" psycopg2-binary </dev/null
}
cargo build --release --quiet
bin="$PWD/target/release/walwitness"
pgbin="${WALWITNESS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}"

dir="$(mktemp -d)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=$((20000 + RANDOM % 20000))
cleanup() {
    [ -n "${holder:-}" ] && kill "$holder" 2>/dev/null || true
    as_pg "$pgbin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
as_pg "$pgbin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$dir'
port = $port
max_connections = 1100
wal_level = logical
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
EOF
as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
dsn="host=$dir port=$port user=postgres dbname=postgres"
psql_() { "$pgbin/psql" -X -q -At -d "$dsn" -c "$1"; }
psql_ "CREATE EXTENSION pg_stat_statements; CREATE TABLE django_cache (cache_key varchar(255) PRIMARY KEY, value text, expires timestamptz); INSERT INTO django_cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 300000) g"

printf '%-6s %-5s %8s %14s %14s %16s\n' conns load samples "mean ms" "max ms" "% of one core"
for n in "${counts[@]}"; do
    PYTHONPATH="$django_dir" python3 - "$dir" "$port" "$n" <<'EOF' &
import sys, time, psycopg2
d, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conns = []
for i in range(n):
    c = psycopg2.connect(host=d, port=port, user="postgres", dbname="postgres", application_name="idle-%d" % i)
    c.autocommit = True
    c.cursor().execute("DELETE FROM django_cache WHERE cache_key = %s", ("none-%d" % i,))
    conns.append(c)
print("ready", flush=True)
time.sleep(3600)
EOF
    holder=$!
    until [ "$(psql_ "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'idle-%'")" -ge "$n" ]; do sleep 0.5; done
    for load in idle busy; do
        psql_ "SELECT pg_stat_statements_reset()" >/dev/null
        writer=""
        if [ "$load" = busy ]; then
            PYTHONPATH="$django_dir" python3 - "$dir" "$port" "$seconds" <<'EOF' &
import sys, time, psycopg2
c = psycopg2.connect(host=sys.argv[1], port=sys.argv[2], user="postgres", dbname="postgres", application_name="writer")
c.autocommit = True
end, i = time.monotonic() + float(sys.argv[3]) + 5, 0
while time.monotonic() < end:
    i += 1
    c.cursor().execute("DELETE FROM django_cache WHERE cache_key = %s", ("k%d" % i,))
    time.sleep(0.005)
EOF
            writer=$!
        fi
        "$bin" capture --dsn "$dsn" --table django_cache --out "$dir/log-$n-$load.jsonl" --duration "${seconds}s" 2>"$dir/capture.err" \
            || { cat "$dir/capture.err" >&2; exit 1; }
        [ -n "$writer" ] && kill "$writer" 2>/dev/null && wait "$writer" 2>/dev/null || true
        psql_ "SELECT calls, round(mean_exec_time::numeric, 3), round(max_exec_time::numeric, 3), round((100 * total_exec_time / ($seconds * 1000))::numeric, 2) FROM pg_stat_statements WHERE query LIKE '%FROM pg_stat_activity WHERE datname%' AND query LIKE '%state_change >=%'" |
            while IFS='|' read -r calls mean max share; do
                printf '%-6s %-5s %8s %14s %14s %16s\n' "$n" "$load" "$calls" "$mean" "$max" "$share"
            done
    done
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    holder=""
done
