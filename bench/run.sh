#!/usr/bin/env bash
# walwitness vs pg_recvlogical (issue 6): time to drain a slot holding a mass DELETE.
#
#   bench/run.sh                      # N=1000000 rows, 3 repetitions, workloads a b c
#   N=20000 REPS=1 WORKLOADS=a bench/run.sh
#   PERF=1 N=1000000 REPS=1 CONSUMERS="pgoutput ww_none" bench/run.sh   # perf record the walwitness runs
#
# For each workload: fill public.cache with N rows (before any slot exists, so the fill is not
# decoded), create REPS × 4 slots, run the workload, take endpos = pg_current_wal_lsn(), then drain
# every slot to that endpos, one consumer after the other (A B C D A B C D …, so load from other
# users of the machine falls on every consumer alike), each under /usr/bin/time -v. Slots of a
# workload are dropped before the next one starts (WAL retention).
#
# Consumers:
#   pgoutput  pg_recvlogical, pgoutput proto 3, raw binary stream to a file
#   wal2json  pg_recvlogical, wal2json format-version 2, deletes/truncates of public.cache
#   ww_none   walwitness capture --attribution none
#   ww_act    walwitness capture --attribution activity
#   ww_alt    $WW_ALT capture --attribution none (another build, for A/B tests of an optimisation)
# Workloads:
#   a  N rows deleted in one transaction
#   b  the same rows in N/100 transactions of 100
#   c  b with REPLICA IDENTITY FULL
#
# Results: $OUT/results.tsv (one line per run) and the table of medians on stdout
# (bench/summarize.py). Check: every walwitness log holds exactly N delete records, and every
# wal2json output N delete changes, or the script fails.
set -euo pipefail

N="${N:-1000000}"
REPS="${REPS:-3}"
WORKLOADS="${WORKLOADS:-a b c}"
CONSUMERS="${CONSUMERS:-pgoutput wal2json ww_none ww_act}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$(mktemp -d /tmp/walwitness-bench.XXXXXX)}"
mkdir -p "$OUT"
chmod 755 "$OUT"

if (( N % 100 != 0 )); then
    echo "N must be a multiple of 100 (workload b deletes 100 rows per transaction)" >&2
    exit 2
fi
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }

cd "$ROOT"
cargo build --release --quiet --bin walwitness --example bench_cluster
WW="$ROOT/target/release/walwitness"

# The cluster lives as long as this coprocess's stdin stays open.
coproc CLUSTER { exec "$ROOT/target/release/examples/bench_cluster"; }
cleanup() { exec {CLUSTER[1]}>&- 2>/dev/null || true; wait "$CLUSTER_PID" 2>/dev/null || true; }
trap cleanup EXIT
while IFS= read -r line <&"${CLUSTER[0]}"; do
    case "$line" in
        READY) break ;;
        *=*) declare "$line" ;;
    esac
done
[ -n "${PORT:-}" ] || { echo "cluster did not start" >&2; exit 1; }
RECVLOGICAL="$BIN_DIR/pg_recvlogical"
[ -x "$RECVLOGICAL" ] || RECVLOGICAL=/usr/lib/postgresql/15/bin/pg_recvlogical
CONN=(-h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres)
DSN="host=$SOCKET_DIR port=$PORT user=postgres dbname=postgres"
sql() { psql "${CONN[@]}" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

PG_VERSION="$(sql 'SHOW server_version')"
sql "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text, expires timestamptz)"
sql "CREATE TABLE bench_marker (x int)"
sql "CREATE PUBLICATION bench_pub FOR TABLE cache WITH (publish = 'delete, truncate')"

{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "postgresql: $PG_VERSION"
    echo "walwitness: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src || echo '+dirty')"
    echo "N=$N REPS=$REPS WORKLOADS=$WORKLOADS"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"
printf 'workload\trep\tconsumer\twall_s\tuser_s\tsys_s\tmaxrss_kib\tout_bytes\trecords\tvol_ctxsw\n' >"$OUT/results.tsv"

fill() {
    sql "TRUNCATE cache"
    # Django's database cache: ':1:' version prefix, a pickled-and-base64 value, an expiry.
    sql "INSERT INTO cache SELECT ':1:views.decorators.cache.cache_page.' || g, encode(sha256(g::text::bytea), 'base64') || encode(sha256((g + 1)::text::bytea), 'base64'), now() + interval '1 day' FROM generate_series(1, $N) g"
    sql "VACUUM ANALYZE cache"
    sql "CHECKPOINT"
}

workload() {
    case "$1" in
        a) sql "DELETE FROM cache" ;;
        b | c)
            sql "DO \$\$ BEGIN
                   FOR i IN 0 .. $N / 100 - 1 LOOP
                     DELETE FROM cache WHERE cache_key = ANY (ARRAY(
                       SELECT ':1:views.decorators.cache.cache_page.' || g FROM generate_series(i * 100 + 1, i * 100 + 100) g));
                     COMMIT;
                   END LOOP;
                 END \$\$" ;;
    esac
}

slot_name() { echo "${2}_${1}_r${3}"; }   # consumer, workload, rep

create_slot() {
    local consumer=$1 slot=$2
    case "$consumer" in
        pgoutput) sql "SELECT pg_create_logical_replication_slot('$slot', 'pgoutput')" >/dev/null ;;
        wal2json) sql "SELECT pg_create_logical_replication_slot('$slot', 'wal2json')" >/dev/null ;;
        ww_none | ww_act | ww_alt)
            # As a user would: walwitness creates its slot, stops at once (endpos is already
            # behind) and keeps it.
            local attr=none; [ "$consumer" = ww_act ] && attr=activity
            "$WW" capture -q --dsn "$DSN" --table public.cache --publication bench_pub --slot "$slot" \
                --attribution "$attr" --keep-slot --endpos "$(sql 'SELECT pg_current_wal_lsn()')" \
                --out "$OUT/create-$slot.jsonl" ;;
    esac
}

# The exact command of each consumer (also printed into docs/benchmarks.md).
consumer_cmd() {
    local consumer=$1 slot=$2 endpos=$3 out=$4
    case "$consumer" in
        pgoutput) echo "$RECVLOGICAL" "${CONN[@]}" --slot "$slot" --start --endpos "$endpos" --no-loop \
            -o proto_version=3 -o publication_names=bench_pub -f "$out" ;;
        wal2json) echo "$RECVLOGICAL" "${CONN[@]}" --slot "$slot" --start --endpos "$endpos" --no-loop \
            -o format-version=2 -o include-xids=1 -o include-origin=1 -o include-timestamp=1 \
            -o add-tables=public.cache -o actions=delete,truncate -f "$out" ;;
        ww_none) echo "$WW" capture -q --dsn "'$DSN'" --table public.cache --publication bench_pub --slot "$slot" \
            --keep-slot --endpos "$endpos" --attribution none --out "$out" ;;
        ww_alt) echo "$WW_ALT" capture -q --dsn "'$DSN'" --table public.cache --publication bench_pub --slot "$slot" \
            --keep-slot --endpos "$endpos" --attribution none --out "$out" ;;
        ww_act) echo "$WW" capture -q --dsn "'$DSN'" --table public.cache --publication bench_pub --slot "$slot" \
            --keep-slot --endpos "$endpos" --attribution activity --out "$out" ;;
    esac
}

count_records() {
    local consumer=$1 out=$2
    case "$consumer" in
        ww_*) grep -c '^{"type":"delete"' "$out" || true ;;
        wal2json) grep -c '"action":"D"' "$out" || true ;;
        pgoutput) echo - ;;
    esac
}

failed=0
for w in $WORKLOADS; do
    echo "== workload $w: fill $N rows" >&2
    fill
    if [ "$w" = c ]; then sql "ALTER TABLE cache REPLICA IDENTITY FULL"; else sql "ALTER TABLE cache REPLICA IDENTITY DEFAULT"; fi
    for r in $(seq 1 "$REPS"); do
        for c in $CONSUMERS; do create_slot "$c" "$(slot_name "$c" "$w" "$r")"; done
    done
    echo "== workload $w: run" >&2
    t0=$(date +%s.%N)
    workload "$w"
    endpos="$(sql 'SELECT pg_current_wal_lsn()')"
    # WAL after endpos, so every consumer sees the server move past it and stops right away.
    sql "INSERT INTO bench_marker VALUES (1)"
    echo "   workload took $(echo "$(date +%s.%N) - $t0" | bc) s, endpos $endpos" >&2
    for r in $(seq 1 "$REPS"); do
        for c in $CONSUMERS; do
            slot="$(slot_name "$c" "$w" "$r")"
            out="$OUT/$slot.out"
            rm -f "$out"
            # shellcheck disable=SC2046
            eval "set -- $(consumer_cmd "$c" "$slot" "$endpos" "$out")"
            [ "$w$r" = "${WORKLOADS%% *}1" ] && echo "$*" >"$OUT/cmd-$c.txt"
            # PERF=1: profile the walwitness runs (flat cpu-clock samples; timings are then perturbed).
            if [ "${PERF:-0}" = 1 ] && [[ "$c" == ww_* ]]; then set -- perf record -q -e cpu-clock -F 4999 -o "$OUT/$slot.perf" "$@"; fi
            t1=$(date +%s.%N)
            /usr/bin/time -v -o "$OUT/$slot.time" "$@" 2>"$OUT/$slot.err" || { echo "$slot: exit $?: $(tail -3 "$OUT/$slot.err")" >&2; failed=1; }
            t2=$(date +%s.%N)
            wall=$(echo "$t2 - $t1" | bc)
            user=$(awk -F': ' '/User time/ {print $2}' "$OUT/$slot.time")
            sys=$(awk -F': ' '/System time/ {print $2}' "$OUT/$slot.time")
            rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/$slot.time")
            csw=$(awk -F': ' '/Voluntary context switches/ {print $2}' "$OUT/$slot.time")
            bytes=$(stat -c %s "$out" 2>/dev/null || echo 0)
            recs=$(count_records "$c" "$out")
            if [ "$recs" != - ] && [ "$recs" != "$N" ]; then
                echo "CHECK FAILED: $slot wrote $recs delete records, expected $N" >&2
                failed=1
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$r" "$c" "$wall" "$user" "$sys" "$rss" "$bytes" "$recs" "$csw" >>"$OUT/results.tsv"
            printf '   %-28s wall %6.2fs user %6.2fs sys %5.2fs rss %7s KiB  %s records  %s vol. ctx switches\n' "$slot" "$wall" "$user" "$sys" "$rss" "$recs" "$csw" >&2
            [ "${KEEP_OUTPUT:-0}" = 1 ] || rm -f "$out"
        done
    done
    for r in $(seq 1 "$REPS"); do
        for c in $CONSUMERS; do sql "SELECT pg_drop_replication_slot('$(slot_name "$c" "$w" "$r")')" >/dev/null; done
    done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

python3 "$ROOT/bench/summarize.py" "$OUT" | tee "$OUT/summary.md"
echo "raw results: $OUT/results.tsv" >&2
exit "$failed"
