#!/usr/bin/env bash
# Reader benchmark: `walwitness report --format json` against the equivalent jq group-by, on a generated
# log of N records (default 1,000,000; about 540 MB). Prints wall time and peak RSS of each.
#
#   bash bench/readers.sh [N]
#
# Needs jq (installed with apt-get when missing and run as root) and /usr/bin/time (package `time`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-1000000}"

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >/dev/null </dev/null
    else
        echo "bench/readers.sh: $1 is needed: install the $2 package" >&2
        exit 1
    fi
}
need jq jq
[ -x /usr/bin/time ] || need /usr/bin/time time

cargo build --release --quiet --bin walwitness --example gen_log
WW=target/release/walwitness
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
LOG="$DIR/bench.jsonl"
./target/release/examples/gen_log "$N" >"$LOG"
echo "log: $(wc -l <"$LOG") records, $(du -m "$LOG" | cut -f1) MB, $(nproc) cores"

# Runs a command under /usr/bin/time -v; prints "label  seconds  peak-RSS-MB".
measure() { # label cmd...
    local label="$1"; shift
    /usr/bin/time -v -o "$DIR/time" "$@" >"$DIR/out.$label"
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/time")
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$DIR/time")
    # m:ss.xx or h:mm:ss → seconds
    secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    printf '%-14s %8.2f s %8s MB\n' "$label" "$secs" "$rss"
    echo "$secs" >"$DIR/secs.$label"
}

measure walwitness "$WW" report --format json "$LOG"
measure jq-stream jq -n 'reduce (inputs | select(.type=="delete")) as $r ({}; .[($r.session.pid|tostring)] += 1) | to_entries | map({pid: .key, rows: .value})' "$LOG"
measure jq-slurp jq -s 'map(select(.type=="delete")) | group_by(.session.pid) | map({pid: .[0].session.pid, rows: length})' "$LOG"

# Same answer: rows per pid (null: unattributed).
ours=$(jq -c '[.sessions[] | {pid: (.pid|tostring), rows}] + [{pid: "null", rows: .unattributed.rows}] | map(select(.rows > 0)) | sort_by(.pid)' "$DIR/out.walwitness")
theirs=$(jq -c 'map({pid: (.pid|tostring), rows}) | sort_by(.pid)' "$DIR/out.jq-slurp")
if [ "$ours" != "$theirs" ]; then
    echo "MISMATCH: walwitness and jq disagree on rows per pid" >&2
    echo "walwitness: $ours" >&2
    echo "jq:         $theirs" >&2
    exit 1
fi
best=$(sort -g "$DIR/secs.jq-stream" "$DIR/secs.jq-slurp" | head -1)
awk -v w="$(cat "$DIR/secs.walwitness")" -v j="$best" 'BEGIN { printf "faster jq / walwitness: %.1fx (rows per pid agree)\n", j / w }'
