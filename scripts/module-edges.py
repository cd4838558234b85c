#!/usr/bin/env python3
"""The crate's module graph, from its source: which top-level module refers
to which (`crate::name` anywhere in its files, `super::` resolved), its
cycles, and the same inside each middleware folder (auth, rate_limit, csrf).

Upward edges: the top-level modules are declared in tiers below (lowest
first); a module may use modules of its own or lower tiers only, so an edge
to a higher tier is upward. Inside a folder, a child module that uses an
item of the folder's face (its mod.rs) instead of the sibling defining it
is an upward edge. Exits 1 on a cycle, an upward edge, or a top-level module
missing from the tiers. .ci/run calls it.

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
    # Doc and line comments mention paths without depending on them, and a
    # file's unit tests (`#[cfg(test)] mod tests`, at its end) are not part
    # of the module's structure.
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests\b", text)[0]
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


# Lowest first. A module uses modules of its own tier or lower ones.
TIERS = [
    {"lib", "macros", "error", "clock", "crypto", "body", "trace"},
    {"identity", "observe", "redis", "reject", "routes"},
    {"middleware"},
    {"auth", "rate_limit", "csrf"},
    {"refresh", "forward", "lockout", "concurrency"},
    {"config", "testing", "guide"},
]


def tier(module):
    for i, members in enumerate(TIERS):
        if module in members:
            return i
    return None


def face_uses(files, folder):
    """Children of `folder` that name an item of its face (`super::Item` or
    `crate::folder::Item` where Item is not a child module)."""
    children = {module_of(p, 2).split("::")[-1] for p in files if module_of(p, 2).startswith(folder + "::")}
    found = []
    for path in files:
        src = module_of(path, 2)
        if not src.startswith(folder + "::"):
            continue
        rel = path.relative_to(ROOT).with_suffix("").parts
        depth_here = len(rel) - (1 if rel[-1] == "mod" else 0)
        text = strip_comments(path.read_text())
        names = set(re.findall(r"\bcrate::" + folder + r"::([A-Za-z_][A-Za-z0-9_]*)", text))
        if depth_here == 2:
            names |= set(re.findall(r"\bsuper::([A-Za-z_][A-Za-z0-9_]*)", text))
            # `use super::{a, B}` lists
            for group in re.findall(r"\bsuper::\{([^}]*)\}", text):
                names |= {n.strip().split(" ")[0].split("::")[0] for n in group.split(",") if n.strip()}
        for name in sorted(names):
            if name not in children and name not in ("self", "super"):
                found.append((src, name))
    return found


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
    missing = sorted(m for m in top if tier(m) is None)
    if missing:
        print("top-level modules in no tier (scripts/module-edges.py TIERS): " + ", ".join(missing))
        status = 1
    top_edges = {s: {t for t in ts if t in top} for s, ts in reports[0][1].items()}
    upward = sorted(
        (s, t) for s, ts in top_edges.items() for t in ts
        if tier(s) is not None and tier(t) is not None and tier(t) > tier(s)
    )
    print(f"top level: {len(upward)} upward edges")
    for s_, t in upward:
        print(f"  upward: {s_} -> {t}")
        status = 1
    for folder in ("auth", "rate_limit", "csrf", "lockout", "concurrency"):
        uses = face_uses(files, folder)
        print(f"{folder}: {len(uses)} upward edges (children using the folder's face)")
        for src, name in uses:
            print(f"  upward: {src} -> {folder}::{name} (the face)")
            status = 1
    for folder in ("auth", "rate_limit", "csrf", "lockout", "concurrency"):
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
