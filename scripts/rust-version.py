#!/usr/bin/env python3
"""Checks that Cargo.toml's rust-version is honest: no dependency that users
build (normal and build dependencies, all features) needs a newer compiler.

Usage: cargo metadata --format-version 1 --all-features | scripts/rust-version.py
"""
import json
import sys


def version(text):
    return tuple(int(x) for x in (text.split(".") + ["0", "0"])[:3])


meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(p for p in meta["packages"] if p["name"] == "tollgate")
ours = root["rust_version"]

seen, stack = set(), [root["id"]]
while stack:
    pkg = stack.pop()
    if pkg in seen:
        continue
    seen.add(pkg)
    for dep in nodes[pkg]["deps"]:
        if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
            stack.append(dep["pkg"])

needs = [
    (version(packages[p]["rust_version"]), packages[p]["name"])
    for p in seen
    if p != root["id"] and packages[p].get("rust_version")
]
highest, name = max(needs)
if highest > version(ours):
    sys.exit(f"{name} needs Rust {'.'.join(map(str, highest))}; Cargo.toml says rust-version = {ours}")
print(f"rust-version {ours} covers every dependency (highest: {name}, {'.'.join(map(str, highest))})")
