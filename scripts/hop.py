#!/usr/bin/env python3
"""The statistics of scripts/hop.sh: CPU and latency per request of the
example bare, with tollgate's layers embedded, and behind an nginx hop.

    scripts/hop.py target/figures [--write]

Reads hop-runs.txt (one line per round and variant) and hop-machine.txt;
writes hop.json (the rounds and the summary), hop.txt (the report) and
hop.md (docs/performance.md's `hop` section), and prints the report. With
--write, also replaces the `hop` section of docs/performance.md and redraws
docs/figures.svg.

Per variant: the median over rounds and the rounds' range. What embedded and
gateway add over bare is taken within each round (variant − bare of the same
round), then the median over rounds, with a bootstrap 95 % interval of that
median (resampling rounds). The ratio gateway added ÷ embedded added is given
only when resolved: its interval's low bound above zero and the interval of
the denominator clear of zero; otherwise "not resolved" with the interval.
Python 3.11 standard library only.
"""

import json
import math
import os
import random
import statistics
import sys
from pathlib import Path

from figures import replace_section, table

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("bare", "embedded", "gateway")
RESAMPLES = 10_000
# The same resamples from run to run, so only the data varies.
SEED = 23


def read_machine(out):
    return dict(
        line.split(": ", 1)
        for line in (out / "hop-machine.txt").read_text().splitlines()
        if ": " in line
    )


def read_rounds(out, clk_tck):
    """round -> variant -> measurements (CPU in µs per request)."""
    rounds = {}
    for line in (out / "hop-runs.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rnd, variant, responses, service, proxy, wall_ns, p50, p99, lat_n = line.split()
        responses = int(responses)
        per_request = 1e6 / clk_tck / responses
        rounds.setdefault(int(rnd), {})[variant] = {
            "responses": responses,
            "service_ticks": int(service),
            "proxy_ticks": int(proxy),
            "cpu_us": (int(service) + int(proxy)) * per_request,
            "service_us": int(service) * per_request,
            "proxy_us": int(proxy) * per_request,
            "requests_per_s": responses / (int(wall_ns) / 1e9),
            "p50_us": float(p50),
            "p99_us": float(p99),
            "latency_responses": int(lat_n),
        }
    complete = {r: v for r, v in rounds.items() if all(name in v for name in VARIANTS)}
    if len(complete) < 2:
        sys.exit(f"{out}/hop-runs.txt: fewer than two complete rounds")
    return [complete[r] for r in sorted(complete)]


def quantile(sorted_values, q):
    return sorted_values[round((len(sorted_values) - 1) * q)]


def bootstrap(n, stat):
    """2.5 % and 97.5 % points of stat(indices) over resampled rounds."""
    rng = random.Random(SEED)
    values = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(RESAMPLES))
    return quantile(values, 0.025), quantile(values, 0.975)


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def added(rounds, variant, metric):
    """What `variant` adds over bare, per round: median, range, 95 % CI."""
    diffs = [r[variant][metric] - r["bare"][metric] for r in rounds]
    low, high = bootstrap(len(diffs), lambda idx: statistics.median(diffs[i] for i in idx))
    return {**spread(diffs), "ci": [low, high], "rounds": diffs}


def ratio(rounds, metric, den):
    """(gateway − bare) ÷ (embedded − bare), or why it is not resolved."""
    num = [r["gateway"][metric] - r["bare"][metric] for r in rounds]
    dens = [r["embedded"][metric] - r["bare"][metric] for r in rounds]

    def stat(idx):
        d = statistics.median(dens[i] for i in idx)
        return statistics.median(num[i] for i in idx) / d if d > 0 else -math.inf

    low, high = bootstrap(len(num), stat)
    point = statistics.median(num) / statistics.median(dens) if statistics.median(dens) else math.nan
    resolved = den["ci"][0] > 0 and low > 0 and math.isfinite(point)
    return {"ratio": point, "ci": [low, high], "resolved": resolved}


def summarize(out):
    machine = read_machine(out)
    clk_tck = os.sysconf("SC_CLK_TCK")
    if "clk_tck" in machine and int(machine["clk_tck"]) != clk_tck:
        sys.exit(f"hop-machine.txt was written with CLK_TCK {machine['clk_tck']}, not {clk_tck}")
    rounds = read_rounds(out, clk_tck)
    summary = {"machine": machine, "clk_tck": clk_tck, "rounds": rounds, "variants": {}, "added": {}, "ratio": {}}
    for variant in VARIANTS:
        summary["variants"][variant] = {
            metric: spread([r[variant][metric] for r in rounds])
            for metric in ("cpu_us", "service_us", "proxy_us", "p50_us", "p99_us", "requests_per_s")
        }
    for metric in ("cpu_us", "p50_us"):
        summary["added"][metric] = {v: added(rounds, v, metric) for v in ("embedded", "gateway")}
        summary["ratio"][metric] = ratio(rounds, metric, summary["added"][metric]["embedded"])
    return summary


def us(value, digits=1):
    return f"{value:.{digits}f} µs"


def with_range(s, digits=1):
    return f"{us(s['median'], digits)} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def signed(value, digits=1):
    return f"{value:+.{digits}f}"


def added_text(a, digits=1, bold=False):
    point = f"{signed(a['median'], digits)} µs"
    if bold:
        point = f"**{point}**"
    return (
        f"{point} (rounds {signed(a['min'], digits)} to {signed(a['max'], digits)}; "
        f"95 % CI {signed(a['ci'][0], digits)} to {signed(a['ci'][1], digits)})"
    )


def ratio_text(r, bold=False):
    low, high = r["ci"]
    interval = f"95 % CI {low:.1f} to {high:.1f}" if math.isfinite(low) else f"95 % CI reaches below 0, to {high:.1f}"
    if not r["resolved"]:
        return f"not resolved ({interval})"
    point = f"{r['ratio']:.1f} ×"
    return f"{'**' + point + '**' if bold else point} ({interval})"


def machine_line(m):
    return (
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory', '?')}; "
        f"{m.get('rustc', '?')}; {m.get('nginx', '?')}; {m.get('wrk', '?')}; "
        f"{m.get('date', '?')}; load average before/after: "
        f"{m.get('load_before', '?')} / {m.get('load_after', '?')}"
    )


def markdown(s):
    m, v = s["machine"], s["variants"]
    n = len(s["rounds"])
    labels = {
        "bare": "bare: layers off, no proxy",
        "embedded": "embedded: tollgate's layers on",
        "gateway": "gateway: layers off, behind nginx",
    }
    rows = []
    for name in VARIANTS:
        rows.append(
            [
                labels[name],
                with_range(v[name]["cpu_us"]),
                with_range(v[name]["proxy_us"]) if name == "gateway" else "—",
                with_range(v[name]["p50_us"], 0),
                with_range(v[name]["p99_us"], 0),
            ]
        )
    cpu, lat = s["added"]["cpu_us"], s["added"]["p50_us"]
    added_rows = [
        ["embedded: tollgate's layers", added_text(cpu["embedded"], bold=True), added_text(lat["embedded"], 0)],
        ["gateway: an nginx hop that checks nothing", added_text(cpu["gateway"], bold=True), added_text(lat["gateway"], 0)],
        ["gateway added ÷ embedded added", ratio_text(s["ratio"]["cpu_us"], bold=True), ratio_text(s["ratio"]["p50_us"])],
    ]
    return "\n".join(
        [
            "The example service on loopback three ways (`scripts/hop.sh`): **bare**, "
            "tollgate's layers off (`TOLLGATE_LAYERS=off`), no proxy; **embedded**, the "
            "layers on (per-IP limit → JWT auth from the cookie, verified-token cache → "
            "CSRF guard → per-user limit → GraphQL cost limit, the query charged by the handler → in-flight cap); **gateway**, the layers off behind nginx "
            "(`proxy_pass` to a keep-alive upstream pool, one worker, no access log). "
            "The gateway checks nothing, where a real one would at least verify the JWT, "
            "so the comparison favours it. "
            f"{n} rounds, each running the three in a rotating order with fresh processes; "
            "the servers pinned to one core, wrk to the other.",
            "",
            "CPU per request: user + system time of the server processes (the example; "
            "for gateway also nginx's master and worker), from `/proc/PID/stat` before and "
            f"after {int(m['requests']):,} requests over {m['connections']} connections. "
            f"Latency: wrk over one connection for {m['seconds']} s. "
            "Medians over the rounds, the rounds' range in brackets:",
            "",
            table(["variant", "CPU per request", "of which nginx", "latency p50", "latency p99"], rows),
            "",
            "What each adds over bare, per round (variant − bare of the same round): the "
            "median over rounds, the rounds' range, and a bootstrap 95 % interval of the "
            f"median ({RESAMPLES:,} resamples of rounds). A ratio whose interval reaches "
            "zero is not given:",
            "",
            table(["over bare", "CPU per request", "latency p50"], added_rows),
            "",
            f"Machine and date: {machine_line(m)}. Generated by `scripts/hop.sh`.",
        ]
    )


def report(s):
    lines = [f"hop: {len(s['rounds'])} rounds; {machine_line(s['machine'])}"]
    for name in VARIANTS:
        v = s["variants"][name]
        lines.append(
            f"hop/{name}: CPU {with_range(v['cpu_us'])} per request"
            + (f" (nginx {with_range(v['proxy_us'])})" if name == "gateway" else "")
            + f", p50 {with_range(v['p50_us'], 0)}, p99 {with_range(v['p99_us'], 0)}, "
            f"{v['requests_per_s']['median']:,.0f} req/s over {s['machine'].get('connections', '?')} connections"
        )
    for metric, label in (("cpu_us", "CPU"), ("p50_us", "latency p50")):
        for name in ("embedded", "gateway"):
            lines.append(f"hop/added/{name}: {label} {added_text(s['added'][metric][name])}")
        lines.append(f"hop/ratio: {label}, gateway added ÷ embedded added: {ratio_text(s['ratio'][metric])}")
    return "\n".join(lines)


def svg(s):
    """What embedded and gateway add over bare, CPU and latency, with intervals."""
    groups = [
        ("CPU per request", s["added"]["cpu_us"]),
        ("latency p50, one connection", s["added"]["p50_us"]),
    ]
    bars = [
        ("embedded tollgate layers", "embedded", "#2e7d32"),
        ("nginx hop, no checks", "gateway", "#c62828"),
    ]
    width, left, bar_h, gap = 640, 200, 24, 8
    top = 40
    height = top + len(groups) * (24 + len(bars) * (bar_h + gap) + 12) + 24
    scale_max = max(max(a[name]["ci"][1], a[name]["median"]) for _, a in groups for _, name, _ in bars) * 1.15
    x = lambda value: left + (width - left - 60) * max(value, 0) / scale_max
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="10" y="22" font-weight="bold">Added per request over the bare example (µs; median of rounds, 95 % CI)</text>',
    ]
    y = top
    for title, values in groups:
        out.append(f'<text x="10" y="{y + 14}" font-style="italic">{title}</text>')
        y += 24
        for label, name, color in bars:
            a = values[name]
            low, high = a["ci"]
            out.append(f'<text x="10" y="{y + bar_h * 0.7:.0f}">{label}</text>')
            out.append(f'<rect x="{left}" y="{y}" width="{x(a["median"]) - left:.1f}" height="{bar_h}" fill="{color}"/>')
            out.append(
                f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y + bar_h / 2}" y2="{y + bar_h / 2}" stroke="black"/>'
            )
            out.append(f'<text x="{x(max(high, a["median"])) + 6:.1f}" y="{y + bar_h * 0.7:.0f}">{a["median"]:.1f}</text>')
            y += bar_h + gap
        y += 12
    m = s["machine"]
    out.append(
        f'<text x="10" y="{y + 8}" font-size="11">{len(s["rounds"])} rounds, {m.get("date", "?")}, '
        f'{m.get("cpu", "?")}; scripts/hop.sh</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    out = Path(sys.argv[1])
    write = "--write" in sys.argv[2:]
    s = summarize(out)
    (out / "hop.json").write_text(json.dumps(s, indent=1) + "\n")
    (out / "hop.txt").write_text(report(s) + "\n")
    (out / "hop.md").write_text(markdown(s) + "\n")
    print(report(s))
    print()
    print(markdown(s))
    if write:
        path = ROOT / "docs" / "performance.md"
        path.write_text(replace_section(path.read_text(), "hop", markdown(s)))
        (ROOT / "docs" / "figures.svg").write_text(svg(s))
        print("docs/performance.md (hop) and docs/figures.svg updated", file=sys.stderr)


if __name__ == "__main__":
    main()
