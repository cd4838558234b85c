#!/usr/bin/env python3
"""Prints what scripts/budgets.sh counted, next to benches/budgets.txt.

    scripts/budgets.py target/budgets

Per path: instructions (callgrind) and allocations (dhat) per request, the
budget and the margin left; then what each layer adds over its bare service
and the ratios the performance issue's goals are stated in (instruction
counts: exact, so a ratio has no interval).
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def budgets():
    found = {}
    for line in (ROOT / "benches" / "budgets.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, ins, allocs = line.split()[:3]
        parse = lambda v: None if v == "-" else int(v.replace("_", ""))
        found[name] = (parse(ins), parse(allocs))
    return found


def limit(budget):
    # benches/support/budgets.rs: instruction_limit
    return budget + -(-budget // 50) + 64


def counts_of(out):
    """(instructions, allocations) per path from a scripts/budgets.sh run."""
    out = Path(out)
    counts = {}
    for line in (out / "instructions.json").read_text().splitlines():
        if not line.startswith("{"):
            continue
        bench = json.loads(line)
        ir = bench["profiles"][0]["data"]["total"]["metrics"]["Ir"]["values"]["new"]
        counts[bench["id"]] = int(ir)
    allocs = {}
    text = (out / "allocations.txt").read_text() if (out / "allocations.txt").exists() else ""
    for m in re.finditer(r"allocations/(\w+): ([\d.]+)", text):
        allocs[m.group(1)] = float(m.group(2))
    return counts, allocs


def added(counts, path, bare):
    if path in counts and bare in counts:
        return counts[path] - counts[bare]
    return None


def markdown(out):
    """The tables scripts/budgets.sh prints, as markdown."""
    counts, allocs = counts_of(out)
    lines = []
    print = lines.append
    table = budgets()
    print("| path | instructions | budget (fails above) | allocations | budget |")
    print("|---|---|---|---|---|")
    for name, (ib, ab) in table.items():
        ins = counts.get(name)
        al = allocs.get(name)
        ins_text = f"{ins:,}" if ins is not None else "—"
        ib_text = f"{ib:,} ({limit(ib):,})" if ib is not None else "—"
        if ins is not None and ib is not None:
            if ins > limit(ib):
                ib_text += " **over**"
            elif ins < ib * 0.95:
                ib_text += " (5 % under: lower it)"
        al_text = f"{al:g}" if al is not None else "—"
        ab_text = str(ab) if ab is not None else "—"
        if al is not None and ab is not None and al > ab:
            ab_text += " **over**"
        print(f"| {name} | {ins_text} | {ib_text} | {al_text} | {ab_text} |")

    print("")
    rows = [
        ("auth, verified-token cache hit", added(counts, "auth_cache_hit", "auth_bare")),
        ("auth, HS256 uncached", added(counts, "auth_hs256_uncached", "auth_bare")),
        ("jsonwebtoken::decode alone, HS256", counts.get("jsonwebtoken_decode_hs256")),
        ("limiter, no headers", added(counts, "limit_no_headers", "limit_bare")),
        ("tower_governor, no headers", added(counts, "tower_governor_no_headers", "limit_bare")),
        ("limiter, IETF headers", added(counts, "limit_ietf_headers", "limit_bare")),
        ("tower_governor, use_headers()", added(counts, "tower_governor_headers", "limit_bare")),
        ("Redis local-first decision (claim held)", added(counts, "redis_local_first", "limit_bare")),
        ("per-IP → auth (hit) → per-subject stack", added(counts, "stack_cache_hit", "auth_bare")),
        ("the example's layers", added(counts, "example_layers_on", "example_layers_off")),
    ]
    print("| added per request | instructions |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {'—' if value is None else f'+{value:,}'} |")

    def ratio(a, b):
        return f"{a / b:.2f} ×" if a and b else "—"

    print("")
    print("Ratios (instruction counts are exact; no interval):")
    print(f"- HS256 uncached ÷ jsonwebtoken::decode: {ratio(rows[1][1], rows[2][1])}")
    print(f"- limiter without headers ÷ tower_governor without: {ratio(rows[3][1], rows[4][1])}")
    print(f"- limiter with IETF headers ÷ tower_governor with use_headers(): {ratio(rows[5][1], rows[6][1])}")
    if "example_layers_on" in counts and "example_layers_off" in counts:
        kept = counts["example_layers_off"] / counts["example_layers_on"]
        print(f"- the example's instructions per request, layers off ÷ on: {kept:.1%}")
    return "\n".join(lines)


def main(out):
    print(markdown(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/budgets")
