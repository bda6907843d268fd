#!/usr/bin/env bash
# What trigger attribution costs the server, per one-row DELETE statement (issue 11).
#
# A throwaway PostgreSQL 15 cluster, a 100,000-row cache table, and pgbench running one-row
# DELETE + re-INSERT transactions (one client, prepared statements) with and without walwitness's
# triggers, alternated ROUNDS times. Two figures per configuration:
#   * backend CPU per transaction: the CPU time of pgbench's server backend, read from the
#     postmaster's reaped-children times after each run (load on other cores barely moves it);
#   * pgbench's latency average (wall clock; noisy on a busy machine).
# synchronous_commit is off so that the disk's fsync time (milliseconds here) does not drown the
# microseconds being measured; autovacuum is off so that no other child's CPU is counted.
# Then a profile: the same pgbench run with each part of the opening trigger taken out in turn.
#
# Usage: bash scripts/bench-trigger.sh [ROUNDS] [TRANSACTIONS]    (defaults 5 and 10000)
set -euo pipefail
ROUNDS=${1:-5}
N=${2:-10000}
BIN=${WALWITNESS_PG_BIN:-/usr/lib/postgresql/15/bin}
cd "$(dirname "$0")/.."
cargo build -q
WW=target/debug/walwitness

. scripts/bench-cache-cluster.sh
cat >"$DIR/bench.sql" <<'EOF'
\set id random(1, 100000)
DELETE FROM cache WHERE cache_key = 'k' || :id;
INSERT INTO cache VALUES ('k' || :id, 'v', now()) ON CONFLICT DO NOTHING;
EOF
PM=$(head -1 "$DIR/data/postmaster.pid")
TICK=$(getconf CLK_TCK)
children_cpu() { awk '{print $16 + $17}' "/proc/$PM/stat"; }

# Runs pgbench once; prints "<backend µs per transaction> <latency ms>".
measure() {
    "${P[@]}" -c "VACUUM cache" # the DELETE/INSERT churn would slow later runs (autovacuum is off)
    sleep 0.3 # earlier psql backends are reaped
    local a b lat
    a=$(children_cpu)
    lat=$("$BIN/pgbench" -n -M prepared -t "$N" -c 1 -f "$DIR/bench.sql" -h "$DIR" -p "$PORT" -U postgres postgres 2>&1 |
        awk '/latency average/ {print $4}')
    sleep 0.3
    b=$(children_cpu)
    echo "$(( (b - a) * 1000000 / TICK / N )) $lat"
}

set_triggers() { # none | open | close | both
    local en_open=DISABLE en_close=DISABLE
    case $1 in open) en_open=ENABLE ;; close) en_close=ENABLE ;; both) en_open=ENABLE; en_close=ENABLE ;; esac
    "${P[@]}" -c "ALTER TABLE cache $en_open TRIGGER walwitness_attribution_delete; ALTER TABLE cache $en_close TRIGGER walwitness_attribution_delete_end"
}

declare -A CPU LAT
CONFIGS=(none both open close)
measure >/dev/null # warm-up
for r in $(seq "$ROUNDS"); do
    for c in "${CONFIGS[@]}"; do
        set_triggers "$c"
        read -r cpu lat < <(measure)
        CPU[$c]+="$cpu "
        LAT[$c]+="$lat "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# Interference from other work only adds time: the fastest round is the figure, the median shows the noise.
least() { tr ' ' '\n' | grep -v '^$' | sort -n | head -1; }
echo "one-row DELETE + INSERT per transaction, $N transactions x $ROUNDS rounds (fastest round / median):"
for c in "${CONFIGS[@]}"; do
    printf '  %-6s backend CPU %4s / %4s us/txn   latency %s / %s ms\n' "$c" "$(echo "${CPU[$c]}" | least)" \
        "$(echo "${CPU[$c]}" | median)" "$(echo "${LAT[$c]}" | least)" "$(echo "${LAT[$c]}" | median)"
done
base=$(echo "${CPU[none]}" | least)
both=$(echo "${CPU[both]}" | least)
echo "trigger attribution: $((both - base)) us of server CPU per DELETE statement (open + close)"

# Profile: the opening function with one part replaced by a constant, each in turn.
FN=$("${P[@]}" -c "SELECT pg_get_functiondef('walwitness.attribution_open()'::regprocedure)")
variant() { # name sed-expression
    local def
    def=$(printf '%s\n' "$FN" | sed -E "$2")
    "${P[@]}" -c "$def" >/dev/null
}
declare -A PARTS=(
    [backend_start]='/FOR i IN 1\.\./,/END LOOP;/d; /IF bs IS NULL THEN/,/END IF;/d'
    [armed_check]="/^ *ON t\\.tgrelid/,/AND t\\.tgtype/d; s/ LEFT JOIN pg_catalog\\.pg_trigger t\$/;/; s/t\\.tgenabled::pg_catalog\\.text/'O'/"
    [hmac]="s/p := pg_catalog\\.encode\\(pg_catalog\\.sha256.*\$/p := '0 ' OPERATOR(pg_catalog.||) p;/"
)
echo "profile of the opening trigger (backend CPU per transaction with that part removed, fastest of $ROUNDS):"
set_triggers both
for part in backend_start armed_check hmac; do
    variant "$part" "${PARTS[$part]}"
    v=""
    for r in $(seq "$ROUNDS"); do read -r cpu _ < <(measure); v+="$cpu "; done
    printf '  without %-14s %4s us/txn (saves %s us)\n' "$part" "$(echo "$v" | least)" "$((both - $(echo "$v" | least)))"
    "${P[@]}" -c "$FN" >/dev/null
done
