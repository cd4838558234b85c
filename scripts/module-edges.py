#!/usr/bin/env python3
"""The crate's module graph, from its source: which top-level module refers
to which (`crate::name` anywhere in its files, `super::` resolved), its
cycles, and the same inside each middleware folder (auth, rate_limit). Exits
1 when a cycle exists. .ci/run calls it.

    python3 scripts/module-edges.py          # the graph and its cycles
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"
REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def module_of(path: pathlib.Path, depth: int) -> str:
    """The module `path` belongs to, `depth` levels below src/."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts[:depth]) if parts else "lib"


def strip_comments(text: str) -> str:
    # Doc and line comments mention paths without depending on them.
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph(files, depth, prefix=""):
    edges = {}
    for path in files:
        src = module_of(path, depth)
        if prefix and not src.startswith(prefix):
            continue
        text = strip_comments(path.read_text())
        targets = set()
        for match in REF.finditer(text):
            targets.add(match.group(1))
        if prefix:
            # Inside a folder: `super::x` from a child and `crate::folder::x`.
            inner = re.compile(r"\bcrate::" + prefix.replace("::", "::") + r"::([a-z_][a-z0-9_]*)")
            targets = {prefix + "::" + m.group(1) for m in inner.finditer(text)}
            rel = path.relative_to(ROOT).with_suffix("").parts
            depth_here = len(rel) - (1 if rel[-1] == "mod" else 0)
            if depth_here == depth:
                for m in re.finditer(r"\bsuper::([a-z_][a-z0-9_]*)", text):
                    targets.add(prefix + "::" + m.group(1))
        for target in targets:
            if target != src and target != src.split("::")[0]:
                edges.setdefault(src, set()).add(target)
    return edges


def cycles(edges):
    found, stack, seen = [], [], set()

    def visit(node):
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            if sorted(cycle[:-1]) not in [sorted(c[:-1]) for c in found]:
                found.append(cycle)
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(edges):
        visit(node)
    return found


def main():
    files = [p for p in ROOT.rglob("*.rs")]
    top = {m for m in (module_of(p, 1) for p in files)}
    status = 0
    reports = [("top level", graph(files, 1))]
    for folder in ("auth", "rate_limit"):
        reports.append((folder, graph(files, 2, folder)))
    for name, edges in reports:
        known = top if name == "top level" else None
        if known:
            edges = {s: {t for t in ts if t in known} for s, ts in edges.items()}
        n = sum(len(t) for t in edges.values())
        found = cycles(edges)
        print(f"{name}: {len(edges)} modules with edges, {n} edges, {len(found)} cycles")
        for cycle in found:
            print("  cycle: " + " -> ".join(cycle))
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
