#!/usr/bin/env python3
"""Checks the module map of src/lib.rs: every `crate::<module>` used outside tests points to a module
of a lower layer (or is one of the allowed same-layer uses), and there is no import circle.

Usage: python3 scripts/check-layers.py    (exit 1 with the offending lines on any violation)
"""
import collections
import pathlib
import re
import sys

# Top to bottom, as in the table of src/lib.rs.
LAYERS = [
    ["cmd"],
    ["capture", "doctor", "cleanup", "demo", "read"],
    ["cli"],
    ["decode"],
    ["attribution"],
    ["sink"],
    ["pg"],
    ["protocol"],
    ["error", "term"],
    ["cluster"],
]
# Uses within one layer: a command composing another, and failures printed through the terminal filter.
SAME_LAYER = {("demo", "capture"), ("error", "term")}

RANK = {m: i for i, row in enumerate(LAYERS) for m in row}
root = pathlib.Path(__file__).resolve().parent.parent / "src"
edges = collections.defaultdict(lambda: collections.defaultdict(list))
for path in sorted(root.rglob("*.rs")):
    parts = path.relative_to(root).parts
    top = parts[0].removesuffix(".rs")
    if top in ("lib", "main") or path.name == "tests.rs" or "tests" in parts[:-1]:
        continue
    text = re.split(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod tests", path.read_text())[0]
    for n, line in enumerate(text.split("\n"), 1):
        code = line.split("//")[0]
        for m in re.finditer(r"\bcrate::(\w+)", code):
            target = m.group(1)
            if target in RANK and target != top:
                edges[top][target].append(f"src/{path.relative_to(root)}:{n}")

bad = []
for a, targets in sorted(edges.items()):
    if a not in RANK:
        bad.append(f"module {a} is not in the layer table of scripts/check-layers.py (and src/lib.rs)")
        continue
    for b, where in sorted(targets.items()):
        if RANK[b] < RANK[a] or (RANK[b] == RANK[a] and a != "cmd" and (a, b) not in SAME_LAYER):
            bad.append(f"{a} imports {b}, which is not below it: {', '.join(where[:3])}")


def reaches(a, goal):
    seen, todo = set(), [a]
    while todo:
        x = todo.pop()
        for y in edges[x]:
            if y == goal:
                return True
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return False


for a in list(edges):
    for b in list(edges[a]):
        if reaches(b, a):
            bad.append(f"import circle through {a} -> {b}: {', '.join(edges[a][b][:3])}")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"layers: {sum(len(t) for t in edges.values())} module-to-module imports, all downward, no circle")
