#!/usr/bin/env python3
"""Compares two callgrind dumps of the example server, per request.

Usage: profile-example.py OFF.callgrind OFF_REQUESTS ON.callgrind ON_REQUESTS [TOP]

Prints, per request: instructions (Ir), L1 instruction-cache misses, L1 data
misses, heap allocations; then the difference by crate and by function (self
cost), and where the extra allocations are made. Instruction counts do not
depend on the machine's load, so two runs agree to a fraction of a percent —
unlike timings on a shared VM.
"""

import collections
import re
import sys

EVENTS = ["Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw"]
NAME = re.compile(r"\((\d+)\)(?: (.*))?")
RECURSION = re.compile(r"'\d+$")
# Allocation helpers: an allocation is charged to the first caller outside them.
ALLOC_HELPERS = (
    "__rustc::",
    "alloc::",
    "<alloc::",
    "<T as alloc::",
    "hashbrown::raw::",
    "bytes::",
)


class Dump:
    def __init__(self, path, requests):
        self.requests = requests
        self.self_cost = collections.defaultdict(lambda: [0] * len(EVENTS))
        # callee -> caller -> number of calls
        self.calls = collections.defaultdict(collections.Counter)
        names = {}

        def name(field):
            m = NAME.match(field)
            if m is None:
                return field
            if m.group(2):
                # `f'2` is callgrind's name for a recursive call of `f`
                names[m.group(1)] = RECURSION.sub("", m.group(2))
            return names.get(m.group(1), m.group(1))

        current = callee = None
        inclusive_line = False
        with open(path) as f:
            for line in f:
                if line.startswith("fn="):
                    current = name(line[3:].rstrip("\n"))
                elif line.startswith("cfn="):
                    callee = name(line[4:].rstrip("\n"))
                elif line.startswith("calls="):
                    self.calls[callee][current] += int(line[6:].split()[0])
                    # the next cost line is the call's inclusive cost
                    inclusive_line = True
                elif line[:1].isdigit() or line[:1] in "+-*":
                    if inclusive_line:
                        inclusive_line = False
                        continue
                    cost = self.self_cost[current]
                    for i, value in enumerate(line.split()[1:]):
                        cost[i] += int(value)

    def per_request(self, values):
        return [v / self.requests for v in values]

    def totals(self):
        sums = [0] * len(EVENTS)
        for cost in self.self_cost.values():
            for i, v in enumerate(cost):
                sums[i] += v
        return self.per_request(sums)

    def allocations(self):
        """Allocations per request, by the first caller outside the helpers."""
        sites = collections.Counter()

        def charge(fn, share, depth):
            callers = self.calls.get(fn, {})
            total = sum(callers.values())
            for caller, n in callers.items():
                part = share * n / total if total else 0
                if depth < 8 and caller and caller.startswith(ALLOC_HELPERS):
                    charge(caller, part, depth + 1)
                else:
                    sites[caller] += part

        entry = "__rustc::__rust_alloc"
        charge(entry, sum(self.calls.get(entry, {}).values()), 0)
        return {k: v / self.requests for k, v in sites.items()}


def crate(function):
    if "libc.so" in function or function.startswith(("_int_", "malloc", "free", "__mem")):
        return "libc (malloc, memcpy)"
    bare = re.sub(r"^[<&*]+", "", function)
    return bare.split("::")[0].split(" ")[0]


def main():
    off = Dump(sys.argv[1], int(sys.argv[2]))
    on = Dump(sys.argv[3], int(sys.argv[4]))
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 15

    a, b = off.totals(), on.totals()
    ia, ib = EVENTS.index("I1mr"), EVENTS.index("Ir")
    allocs_a, allocs_b = off.allocations(), on.allocations()
    print(f"requests profiled: {off.requests} (layers off), {on.requests} (layers on)")
    print()
    print(f"{'per request':<28}{'off':>10}{'on':>10}{'added':>10}{'':>8}")
    rows = [
        ("instructions (Ir)", a[ib], b[ib]),
        ("L1i misses", a[ia], b[ia]),
        ("L1d misses", a[4] + a[5], b[4] + b[5]),
        ("heap allocations", sum(allocs_a.values()), sum(allocs_b.values())),
    ]
    for label, x, y in rows:
        print(f"{label:<28}{x:>10,.0f}{y:>10,.0f}{y - x:>+10,.0f}{(y - x) / x:>+8.1%}")

    def delta_table(group):
        da, db = collections.defaultdict(lambda: [0.0] * 9), collections.defaultdict(lambda: [0.0] * 9)
        for dump, into in ((off, da), (on, db)):
            for fn, cost in dump.self_cost.items():
                row = into[group(fn)]
                for i, v in enumerate(dump.per_request(cost)):
                    row[i] += v
        keys = set(da) | set(db)
        return sorted(
            ((k, db[k][0] - da[k][0], db[k][3] - da[k][3], db[k][4] + db[k][5] - da[k][4] - da[k][5]) for k in keys),
            key=lambda r: -r[1],
        )

    print()
    print("added per request, by crate (self cost):")
    print(f"{'Ir':>8}{'L1i':>7}{'L1d':>7}  crate")
    for k, ir, i1, d1 in delta_table(crate)[:top]:
        print(f"{ir:>+8,.0f}{i1:>+7.0f}{d1:>+7.0f}  {k}")
    print()
    print("added per request, by function (self cost):")
    print(f"{'Ir':>8}{'L1i':>7}{'L1d':>7}  function")
    for k, ir, i1, d1 in delta_table(lambda f: f)[:top]:
        print(f"{ir:>+8,.0f}{i1:>+7.0f}{d1:>+7.0f}  {k[:110]}")
    print()
    print("added heap allocations per request, by call site:")
    keys = set(allocs_a) | set(allocs_b)
    for k in sorted(keys, key=lambda k: -(allocs_b.get(k, 0) - allocs_a.get(k, 0)))[:top]:
        d = allocs_b.get(k, 0) - allocs_a.get(k, 0)
        if d >= 0.5:
            print(f"{d:>+8.1f}  {k[:110]}")


if __name__ == "__main__":
    main()
