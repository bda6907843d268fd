#!/usr/bin/env bash
# What trigger attribution costs the server, counted in CPU instructions (issue 11): repeatable to a
# fraction of a percent whatever else the machine is doing, where the CPU-time figures of
# bench-trigger.sh move by tens of µs on a loaded machine.
#
# A throwaway PostgreSQL cluster runs under valgrind's callgrind (every backend writes its own
# instruction count when it exits). One psql session runs N transactions of a one-row DELETE plus
# re-INSERT on a 100,000-row cache table, then another runs 2N; the difference divided by N is the
# instructions per transaction, without the sessions' start and end. Configurations: no triggers, both
# (open + close), the open alone, the close alone.
#
# Usage: bash scripts/bench-trigger-instructions.sh [N]    (default 200; needs valgrind)
set -euo pipefail
N=${1:-200}
BIN=${WALWITNESS_PG_BIN:-/usr/lib/postgresql/15/bin}
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
cargo build -q
WW=$PWD/target/debug/walwitness

. scripts/bench-cache-cluster.sh
"${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -w stop >/dev/null
mkdir "$DIR/cg"
[ "$(id -u)" = 0 ] && chown postgres "$DIR/cg"
"${RUN[@]}" bash -c "cd '$DIR' && exec valgrind --tool=callgrind --callgrind-out-file='$DIR/cg/cg.%p' '$BIN/postgres' -D '$DIR/data'" >"$DIR/valgrind.log" 2>&1 &
for _ in $(seq 300); do "${P[@]}" -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done

script() { # N: the session's SQL (its first line prints the backend's pid)
    echo 'SELECT pg_backend_pid();'
    for i in $(seq "$1"); do
        k=$(( (i * 7919) % 100000 + 1 ))
        echo "BEGIN; DELETE FROM cache WHERE cache_key = 'k$k'; INSERT INTO cache VALUES ('k$k', 'v', now()) ON CONFLICT DO NOTHING; COMMIT;"
    done
}
script "$N" >"$DIR/n.sql"
script $((2 * N)) >"$DIR/2n.sql"
session_ir() { # file: instructions of the backend that ran it
    local pid t
    "${P[@]}" -c "VACUUM cache" >/dev/null
    pid=$("${P[@]}" -f "$1" | head -1)
    for _ in $(seq 600); do
        t=$(grep -m1 '^totals:' "$DIR/cg/cg.$pid" 2>/dev/null | awk '{print $2}') || true
        [ -n "$t" ] && { echo "$t"; return; }
        sleep 0.2
    done
    echo "no instruction count for backend $pid" >&2
    exit 1
}
# Version 1 (before issue 11) had one trigger and no closing one: then "both" is that trigger alone.
HAS_CLOSE=$("${P[@]}" -c "SELECT count(*) FROM pg_trigger WHERE tgname = 'walwitness_attribution_delete_end'")
set_triggers() { # none | open | close | both
    local o=DISABLE c=DISABLE
    case $1 in open) o=ENABLE ;; close) c=ENABLE ;; both) o=ENABLE; c=ENABLE ;; esac
    "${P[@]}" -c "ALTER TABLE cache $o TRIGGER walwitness_attribution_delete"
    [ "$HAS_CLOSE" = 0 ] || "${P[@]}" -c "ALTER TABLE cache $c TRIGGER walwitness_attribution_delete_end"
}
declare -A IR
echo "instructions per transaction (one-row DELETE + INSERT, $N and $((2 * N)) transactions):"
CONFIGS=(none both open close)
[ "$HAS_CLOSE" = 1 ] || { CONFIGS=(none both); IR[open]=0; IR[close]=0; }
for c in "${CONFIGS[@]}"; do
    set_triggers "$c"
    a=$(session_ir "$DIR/n.sql")
    b=$(session_ir "$DIR/2n.sql")
    IR[$c]=$(( (b - a) / N ))
    printf '  %-6s %8d\n' "$c" "${IR[$c]}"
done
[ "$HAS_CLOSE" = 1 ] || { IR[open]=${IR[both]}; IR[close]=${IR[none]}; }
awk -v n="${IR[none]}" -v b="${IR[both]}" -v o="${IR[open]}" -v c="${IR[close]}" 'BEGIN {
    printf "trigger attribution: %d instructions per DELETE statement (open %d, close %d), %.2f x a transaction without it\n", b - n, o - n, c - n, (b - n) / n }'
