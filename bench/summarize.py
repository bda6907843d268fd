#!/usr/bin/env python3
"""Medians of bench/run.sh's results.tsv, as a Markdown table with ratios to pg_recvlogical+pgoutput."""
import collections
import statistics
import sys

out_dir = sys.argv[1]
rows = collections.defaultdict(list)
order_w, order_c = [], []
with open(f"{out_dir}/results.tsv") as f:
    next(f)
    for line in f:
        w, rep, c, wall, user, sys_, rss, size, recs, csw = line.rstrip("\n").split("\t")
        rows[(w, c)].append(
            (float(wall), float(user) + float(sys_), float(user), float(sys_), int(rss), int(size), int(csw))
        )
        if w not in order_w:
            order_w.append(w)
        if c not in order_c:
            order_c.append(c)

NAMES = {
    "pgoutput": "pg_recvlogical + pgoutput",
    "wal2json": "pg_recvlogical + wal2json",
    "ww_none": "walwitness --attribution none",
    "ww_act": "walwitness --attribution activity",
    "ww_alt": "$WW_ALT --attribution none",
}
WORKLOADS = {"a": "(a) 1 transaction", "b": "(b) transactions of 100", "c": "(c) = b, REPLICA IDENTITY FULL"}


def med(xs, i):
    return statistics.median(x[i] for x in xs)


print("| workload | consumer | runs | wall s | × pgoutput | CPU s (user+sys) | × pgoutput | user s | sys s | peak RSS MiB | output MiB | voluntary ctx switches |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for w in order_w:
    base = rows.get((w, "pgoutput"))
    for c in order_c:
        xs = rows.get((w, c))
        if not xs:
            continue
        wall, cpu = med(xs, 0), med(xs, 1)
        rw = f"{wall / med(base, 0):.2f}" if base else "-"
        rc = f"{cpu / med(base, 1):.2f}" if base and med(base, 1) > 0 else "-"
        print(
            f"| {WORKLOADS.get(w, w)} | {NAMES.get(c, c)} | {len(xs)} | {wall:.2f} | {rw} | {cpu:.2f} | {rc} "
            f"| {med(xs, 2):.2f} | {med(xs, 3):.2f} | {med(xs, 4) / 1024:.1f} | {med(xs, 5) / 1048576:.1f} | {med(xs, 6):.0f} |"
        )
