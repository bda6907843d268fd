#!/usr/bin/env python3
"""Fails when Cargo.toml's rust-version is lower than what a dependency declares it needs.

This machine has one toolchain and cannot fetch another, so the MSRV is not proven by building with
it; this checks the part that drifts silently: a dependency update raising the minimum. The resolved
graph for the host target only (wasm-only crates do not count); dev-dependencies count, since the
tests must build too.
"""
import json
import platform
import subprocess
import sys

def version(v):
    return tuple(int(x) for x in v.split("."))

target = f"{platform.machine()}-unknown-linux-gnu"
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target]))
root = meta["resolve"]["root"]
by_id = {p["id"]: p for p in meta["packages"]}
declared = by_id[root].get("rust_version")
if not declared:
    sys.exit("Cargo.toml has no rust-version")
reachable, stack = set(), [root]
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
while stack:
    i = stack.pop()
    if i in reachable:
        continue
    reachable.add(i)
    stack.extend(d["pkg"] for d in nodes[i]["deps"])
needs = sorted(((by_id[i].get("rust_version") or "0"), by_id[i]["name"], by_id[i]["version"])
               for i in reachable if i != root)
needs.sort(key=lambda t: version(t[0]))
highest = needs[-1]
print(f"rust-version {declared}; highest a dependency needs: {highest[0]} ({highest[1]} {highest[2]})")
if version(highest[0]) > version(declared):
    sys.exit(f"rust-version {declared} is too low: {highest[1]} {highest[2]} needs {highest[0]}; raise it in Cargo.toml")
