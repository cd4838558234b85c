#!/usr/bin/env python3
"""Checks ops/ against the crate: the Grafana dashboard is well-formed and
every metric that the dashboard and the Prometheus rules name is one that
src/observe.rs exports (its `names` module), so renaming a metric breaks CI
until the dashboard and the rules follow.

Usage (from the repository root): python3 scripts/ops-check.py
"""
import json
import re
import sys

OBSERVE = "src/observe.rs"
DASHBOARD = "ops/grafana/tollgate.json"
RULES = "ops/prometheus/tollgate.rules.yml"

# Metrics that other work adds; the dashboard shows them "(when enabled)".
# Once one is in src/observe.rs, this script says so: drop it from here.
PENDING: set = set()
# Series a histogram (or the exporter's summary) adds to its name.
SUFFIXES = ("_bucket", "_sum", "_count")
METRIC = re.compile(r"\btollgate_[a-z0-9_]*[a-z0-9]\b")
RECORDED = re.compile(r"\btollgate:[a-z0-9_:]*[a-z0-9]\b")

errors = []


def exported_names():
    source = open(OBSERVE, encoding="utf-8").read()
    block = re.search(r"pub mod names \{(.*?)\n\}", source, re.S)
    if not block:
        sys.exit(f"{OBSERVE}: no `pub mod names {{ … }}`")
    names = set(re.findall(r'pub const \w+: &str = "([^"]+)";', block.group(1)))
    if not names:
        sys.exit(f"{OBSERVE}: `names` has no metric names")
    return names


def check_names(where, text, names, used_pending):
    for name in METRIC.findall(text):
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)
        if name in names or base in names:
            continue
        if name in PENDING:
            used_pending.add(name)
            continue
        errors.append(f"{where}: `{name}` is not a metric in {OBSERVE} (names: {sorted(names)})")


def main():
    names = exported_names()
    used_pending = set()

    dashboard = json.load(open(DASHBOARD, encoding="utf-8"))
    rules_text = open(RULES, encoding="utf-8").read()
    recorded = set(re.findall(r"^\s*- record: (\S+)", rules_text, re.M))

    if not 36 <= dashboard.get("schemaVersion", 0) <= 41:
        errors.append(f"{DASHBOARD}: schemaVersion {dashboard.get('schemaVersion')}, expected 36 to 41")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for needed in ("DS_PROMETHEUS", "job", "instance"):
        if needed not in variables:
            errors.append(f"{DASHBOARD}: no template variable `{needed}`")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            check_names(f"{DASHBOARD} variable {var['name']}", var["definition"], names, used_pending)

    ids = set()
    exprs = 0
    for panel in dashboard["panels"]:
        title = panel.get("title", "?")
        if panel["id"] in ids:
            errors.append(f"{DASHBOARD}: panel id {panel['id']} used twice")
        ids.add(panel["id"])
        if "gridPos" not in panel:
            errors.append(f"{DASHBOARD}: panel {title!r} has no gridPos")
        if panel["type"] == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append(f"{DASHBOARD}: panel {title!r} does not use ${{DS_PROMETHEUS}}")
        if not panel.get("targets"):
            errors.append(f"{DASHBOARD}: panel {title!r} has no query")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if not expr:
                errors.append(f"{DASHBOARD}: panel {title!r} has a target without expr")
            exprs += 1
            check_names(f"{DASHBOARD} panel {title!r}", expr, names, used_pending)
            for rule in RECORDED.findall(expr):
                if rule not in recorded:
                    errors.append(f"{DASHBOARD} panel {title!r}: `{rule}` is not recorded in {RULES}")
            if METRIC.search(expr) and "$job" not in expr:
                errors.append(f"{DASHBOARD} panel {title!r}: a query ignores the job variable")

    check_names(RULES, rules_text, names, used_pending)

    for name in sorted(PENDING & names):
        print(f"note: {name} is now in {OBSERVE}: drop it from PENDING in {sys.argv[0]}")
    for name in sorted(used_pending):
        print(f"note: {name} is not in {OBSERVE} yet (panel shown 'when enabled')")
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    panels = sum(p["type"] != "row" for p in dashboard["panels"])
    print(f"ops: {panels} panels, {exprs} queries, {len(recorded)} recording rules; metrics all in {OBSERVE}")


main()
