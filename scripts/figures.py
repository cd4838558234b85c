#!/usr/bin/env python3
"""Turns what scripts/figures.sh measured into docs/performance.md's tables and chart.

    scripts/figures.py target/figures [--write]

Reads criterion's estimates (target/criterion/**/new/), the proxy_hop and
multicore output, the throughput rounds and scripts/hop.sh's rounds (through
scripts/hop.py); prints markdown. With --write, replaces docs/performance.md's
sections between `<!-- figures:NAME:begin -->` and `<!-- figures:NAME:end -->`
and writes docs/figures.svg (scripts/hop.py draws it).
"""

import json
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def criterion_estimates(baseline="new"):
    """full_id -> (median, low, high) in ns, from criterion's last run (or
    from the named baseline a run saved with `--save-baseline`)."""
    found = {}
    for bench in (ROOT / "target" / "criterion").glob(f"**/{baseline}/benchmark.json"):
        meta = json.loads(bench.read_text())
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        median = estimates["median"]
        ci = median["confidence_interval"]
        found[meta["full_id"]] = (
            median["point_estimate"],
            ci["lower_bound"],
            ci["upper_bound"],
        )
    return found


def ns(value):
    if value >= 10_000:
        return f"{value / 1000:.1f} µs"
    if value >= 1_000:
        return f"{value / 1000:.2f} µs"
    return f"{value:.0f} ns"


def with_ci(est):
    median, low, high = est
    return f"{ns(median)} ({ns(low)}–{ns(high)})"


def added(est, base):
    """Difference of medians, with the widest range the two intervals allow."""
    return est[0] - base[0], est[1] - base[2], est[2] - base[1]


def added_text(est, base):
    diff, low, high = added(est, base)
    return f"+{ns(diff)} (+{ns(max(low, 0))} to +{ns(high)})"


def machine(out):
    info = dict(
        line.split(": ", 1)
        for line in (out / "machine.txt").read_text().splitlines()
        if ": " in line
    )
    return (
        f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores, "
        f"{info.get('memory', '?')}; {info.get('rustc', '?')}; "
        f"{info.get('date', '?')}; load average before/after: "
        f"{info.get('load_before', '?')} / {info.get('load_after', '?')}"
    )


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bench_section(out, est, thp):
    parts = []
    base = est.get("peers/bare")
    if base:
        rows = []
        for name, label in [
            ("peers/tower_governor", "tower_governor 0.8 `GovernorLayer`, no headers"),
            ("peers/tower_governor_headers", "tower_governor 0.8, `use_headers()`"),
            ("peers/tollgate", "tollgate `RateLimitLayer`, IETF headers (default)"),
            ("peers/tollgate_no_headers", "tollgate `RateLimitLayer`, `HeaderStyle::Off`"),
        ]:
            if name in est:
                rows.append([label, with_ci(est[name]), added_text(est[name], base)])
        parts.append(
            "Limiter layers side by side (`cargo bench --bench tollgate -- peers`: "
            "same request, same never-refusing quota keyed by peer IP, over a "
            f"service answering with one header; bare service {with_ci(base)}):\n\n"
            + table(["layer", "time per request", "added over bare"], rows)
        )
    rows = []
    for name, label in [
        ("rate_limit/local_decision/1000000_keys/uniform", "local decision, 1M keys, uniformly random key"),
        ("rate_limit/local_decision/1000000_keys/hot_1k", "local decision, 1M keys, hot set of 1,000"),
        ("fast_path/HS256/auth_miss", "auth layer, HS256 cookie, cache miss (full verification)"),
        ("fast_path/HS256/auth_hit", "auth layer, HS256 cookie, verified-token cache hit"),
        ("rate_limit/stack/ip_limit_only", "per-IP limit alone"),
        ("rate_limit/stack/ip_auth_user_HS256", "per-IP limit → auth (no cache) → per-subject limit"),
        ("fast_path/HS256/stack_hit", "per-IP limit → auth (cache hit) → per-subject limit"),
    ]:
        if name in est:
            base_name = "rate_limit/stack/bare" if name.startswith("rate_limit/stack") else "fast_path/bare"
            extra = added_text(est[name], est[base_name]) if base_name in est and "decision" not in name else "—"
            rows.append([label, with_ci(est[name]), extra])
            if name in thp:
                rows.append(
                    [
                        label + ", malloc on transparent huge pages "
                        "(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`)",
                        with_ci(thp[name]),
                        "—",
                    ]
                )
    if rows:
        parts.append(
            "Decisions and stacks (`cargo bench --bench tollgate -- 'rate_limit|fast_path'`; "
            "\"added\" is over the bare service of the same group):\n\n"
            + table(["bench", "time", "added over bare"], rows)
        )
    if "example/bare" in est and "example/layers" in est:
        parts.append(
            "The example's exact stack in process, with a Prometheus recorder "
            "(`cargo bench --bench tollgate -- example`: the same router with "
            "`TOLLGATE_LAYERS=off` and on, one GraphQL query with a session cookie):\n\n"
            + table(
                ["router", "time per request", "added by tollgate"],
                [
                    ["layers off", with_ci(est["example/bare"]), "—"],
                    ["layers on", with_ci(est["example/layers"]), added_text(est["example/layers"], est["example/bare"])],
                ],
            )
        )
    rows = []
    for full_id, value in sorted(est.items()):
        match = re.fullmatch(r"multicore/threads/(\d+)", full_id)
        if match:
            median, low, high = value
            rows.append(
                [match.group(1), f"{1e9 / median / 1e6:.2f} M/s ({1e9 / high / 1e6:.2f}–{1e9 / low / 1e6:.2f})"]
            )
    if rows:
        parts.append(
            "The full stack (cache hit) from several tokio worker threads, one "
            "user and address each (`cargo bench --bench tollgate -- multicore`):\n\n"
            + table(["worker threads", "requests per second, all threads"], rows)
        )
    return "\n\n".join(parts)


def proxy_hop_section(out):
    text = (out / "proxy_hop.txt").read_text()
    paths = {}
    for name, p50, p99, n in re.findall(
        r"proxy_hop/(\w+): p50 ([\d.]+) µs, p99 ([\d.]+) µs \((\d+) interleaved", text
    ):
        paths[name] = (float(p50), float(p99), int(n))
    adds = {
        name: tuple(map(float, (m, lo, hi)))
        for name, m, lo, hi in re.findall(
            r"proxy_hop/added/(\w+): (-?[\d.]+) µs \(95 % CI (-?[\d.]+) – (-?[\d.]+)\)", text
        )
    }
    # A ratio is quoted only when the bench resolved it (it prints "not
    # resolved (...)" otherwise).
    ratios = dict(re.findall(r"proxy_hop/(ratio\w*): (.*)", text))
    labels = {
        "a_bare": "(a) client → bare service",
        "b_embedded_tollgate": "(b) client → service with tollgate's auth + rate limit",
        "c_rust_gateway_hop": "(c) client → Rust gateway (same JWT check) → service",
        "d_nginx_hop": "(d) client → nginx `proxy_pass`, keep-alive, no JWT check → service",
    }
    rows = []
    for name, (p50, p99, n) in paths.items():
        add = adds.get(name)
        add_text = f"{add[0]:.2f} µs ({add[1]:.2f}–{add[2]:.2f})" if add else "—"
        rows.append([labels.get(name, name), f"{p50:.1f} µs", f"{p99:.1f} µs", add_text])
    n = next(iter(paths.values()))[2] if paths else 0
    lines = [
        f"Per-request latency over loopback, keep-alive HTTP/1.1, within one bench "
        f"process, the paths taken in turn ({n:,} rounds; `cargo bench --bench "
        "tollgate -- proxy_hop`); added latency is the difference of medians with a "
        "bootstrap 95 % interval (within this run; runs differ by more):",
        "",
        table(["path", "p50", "p99", "added over (a), median (95 % CI)"], rows),
    ]
    sentences = []
    for name, what in [("ratio", "the Rust gateway hop"), ("ratio_nginx", "the nginx hop")]:
        said = ratios.get(name, "").strip()
        if said.startswith("not resolved"):
            sentences.append(f"What {what} adds ÷ what the embedded layers add: {said}.")
        elif said:
            sentences.append(f"In this run, {said}.")
    if sentences:
        lines += ["", " ".join(sentences)]
    return "\n".join(lines)


def throughput_section(out):
    runs = {"on": [], "off": []}
    for line in (out / "throughput.txt").read_text().splitlines():
        variant, rate = line.split()
        runs[variant].append(float(rate))
    if not runs["on"] or not runs["off"]:
        return "", None
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    kept = [a / b for a, b in zip(runs["on"], runs["off"])]
    text = (
        f"Throughput of the example (server pinned to one core, wrk to the other, "
        f"{len(runs['on'])} alternating rounds; medians, range in brackets):\n\n"
        + table(
            ["layers off", "layers on", "kept (median of rounds, range)"],
            [
                [
                    f"{off:,.0f} req/s ({min(runs['off']):,.0f}–{max(runs['off']):,.0f})",
                    f"{on:,.0f} req/s ({min(runs['on']):,.0f}–{max(runs['on']):,.0f})",
                    f"**{100 * statistics.median(kept):.1f} %** ({100 * min(kept):.1f}–{100 * max(kept):.1f} %)",
                ]
            ],
        )
    )
    return text, (statistics.median(kept), min(kept), max(kept))


def ratio_of_added(est, path, base, peer, peer_base):
    """(path − base) ÷ (peer − peer_base) with the widest interval the four
    criterion intervals allow; None when a bench is missing."""
    if not all(k in est for k in (path, base, peer, peer_base)):
        return None
    num = added(est[path], est[base])
    den = added(est[peer], est[peer_base])
    point = num[0] / den[0] if den[0] > 0 else math.nan
    if den[1] <= 0 or num[1] <= 0:
        return point, None
    return point, (num[1] / den[2], num[2] / den[1])


def ratio_text(r, goal):
    if r is None:
        return "not measured"
    point, interval = r
    if interval is None:
        return "not resolved (an interval reaches zero)"
    low, high = interval
    met = "met" if high <= goal else ("not met" if low > goal else "not resolved against the goal")
    return f"{point:.2f} × ({low:.2f}–{high:.2f}): {met}"


def goals_section(out, est, hop_summary):
    """The performance issue's goals, each next to what this run measured."""
    import budgets

    rows = []
    if "fast_path/HS256/auth_hit" in est and "fast_path/bare" in est:
        d, low, high = added(est["fast_path/HS256/auth_hit"], est["fast_path/bare"])
        met = "met" if high <= 150 else ("not met" if low > 150 else "not resolved")
        rows.append(["verified-token cache hit, added over a bare service", "≤ 150 ns",
                     f"+{ns(d)} (+{ns(max(low, 0))} to +{ns(high)}): {met}"])
    rows.append(["HS256 uncached, layer's added time ÷ `jsonwebtoken::decode`", "≤ 1.0 ×",
                 ratio_text(hs256_ratio(est), 1.0)])
    rows.append(["limiter without headers ÷ tower_governor without", "≤ 1.0 ×",
                 ratio_text(ratio_of_added(est, "peers/tollgate_no_headers", "peers/bare",
                                           "peers/tower_governor", "peers/bare"), 1.0)])
    rows.append(["limiter with IETF headers ÷ tower_governor with `use_headers()`", "≤ 0.7 ×",
                 ratio_text(ratio_of_added(est, "peers/tollgate", "peers/bare",
                                           "peers/tower_governor_headers", "peers/bare"), 0.7)])
    _, kept = throughput_section(out)
    if kept:
        median, low, high = (100 * k for k in kept)
        met = "met" if low >= 92 else ("not met" if high < 92 else "not resolved")
        rows.append(["the example, share of its bare throughput (wrk, pinned)", "≥ 92 %",
                     f"{median:.1f} % (rounds {low:.1f}–{high:.1f} %): {met}"])
    if hop_summary:
        a = hop_summary["added"]["cpu_us"]["embedded"]
        low, high = a["ci"]
        met = "met" if high <= 3 else ("not met" if low > 3 else "not resolved")
        rows.append(["CPU per request the layers add in the example (`scripts/hop.sh`)", "≤ 3 µs",
                     f"+{a['median']:.1f} µs (95 % CI +{low:.1f} to +{high:.1f}): {met}"])
        r = hop_summary["ratio"]["p50_us"]
        if r["resolved"]:
            low, high = r["ci"]
            met = "met" if low >= 10 else ("not met" if high < 10 else "not resolved")
            text = f"{r['ratio']:.1f} × (95 % CI {low:.1f}–{high:.1f}): {met}"
        else:
            text = "not resolved (its interval reaches zero)"
        rows.append(["nginx hop's added p50 latency ÷ the layers' (`scripts/hop.sh`)", "≥ 10 ×", text])
    text = (
        "The goals of the performance issue, each next to this run's figure "
        "(wall-clock ratios carry the widest interval their criterion "
        "intervals allow; \"not resolved\" where it reaches the goal or zero):\n\n"
        + table(["goal", "target", "measured"], rows)
    )
    if (out.parent / "budgets" / "instructions.json").exists():
        text += (
            "\n\nThe same paths in instructions per request (callgrind through "
            "gungraun, `scripts/budgets.sh`; exact counts, so ratios carry no "
            "interval) and heap allocations (dhat), next to the budgets CI "
            "enforces (`benches/budgets.txt`):\n\n" + budgets.markdown(out.parent / "budgets")
        )
    return text


def hs256_ratio(est):
    """(layer − bare) ÷ decode alone, with the widest interval."""
    keys = ("auth/HS256/layer", "auth/HS256/bare", "auth/HS256/jsonwebtoken_decode")
    if not all(k in est for k in keys):
        return None
    num = added(est[keys[0]], est[keys[1]])
    den = est[keys[2]]
    if num[1] <= 0:
        return num[0] / den[0], None
    return num[0] / den[0], (num[1] / den[2], num[2] / den[1])


def readme_hop(s):
    """The README's one-paragraph summary of scripts/hop.sh's run."""
    m = s["machine"]
    cpu, p50 = s["added"]["cpu_us"], s["added"]["p50_us"]
    r = s["ratio"]["cpu_us"]
    if r["resolved"]:
        ratio = f"{r['ratio']:.1f} × as much CPU (95 % CI {r['ci'][0]:.1f}–{r['ci'][1]:.1f})"
    else:
        ratio = "a CPU ratio this run did not resolve"
    return (
        "What the hop costs, measured on loopback with the example service\n"
        f"(`scripts/hop.sh`; an {m.get('cpu', '?')} VM, {m.get('cores', '?')} cores, "
        f"{m.get('date', '?')[:10]}): an nginx hop that\n"
        f"checks nothing added {cpu['gateway']['median']:.1f} µs of CPU and "
        f"{p50['gateway']['median']:.0f} µs of median latency per request,\n"
        f"tollgate's layers {cpu['embedded']['median']:.1f} µs and "
        f"{p50['embedded']['median']:.0f} µs — {ratio}. The\n"
        "intervals, the spread between runs and the machine are in\n"
        "[Performance](docs/performance.md)."
    )


def replace_section(readme, name, body):
    begin, end = f"<!-- figures:{name}:begin -->", f"<!-- figures:{name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        sys.exit(f"docs/performance.md has no {begin} ... {end} section")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", readme)


def main():
    out = Path(sys.argv[1])
    write = "--write" in sys.argv[2:]
    est = criterion_estimates()
    # The 1M-key decision with malloc on huge pages, when this run measured it.
    thp = criterion_estimates("thp") if (out / "criterion-thp.txt").exists() else {}
    where = f"Machine and date: {machine(out)}. Generated by `scripts/figures.sh`."
    # scripts/hop.sh's comparison (its own machine and date line).
    import hop

    hop_summary = hop.summarize(out)
    hop_body = hop.markdown(hop_summary)
    through, _ = throughput_section(out)
    latency_body = "\n\n".join(part for part in [proxy_hop_section(out), through, where] if part)
    bench_body = bench_section(out, est, thp) + "\n\n" + where
    goals_body = goals_section(out, est, hop_summary) + "\n\n" + where
    for body in (goals_body, hop_body, latency_body, bench_body):
        print(body)
        print()
    if write:
        readme_path = ROOT / "docs" / "performance.md"
        readme = readme_path.read_text()
        readme = replace_section(readme, "hop", hop_body)
        readme = replace_section(readme, "latency", latency_body)
        readme = replace_section(readme, "bench", bench_body)
        readme = replace_section(readme, "goals", goals_body)
        readme_path.write_text(readme)
        front = ROOT / "README.md"
        front.write_text(replace_section(front.read_text(), "readme", readme_hop(hop_summary)))
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "figures.svg").write_text(hop.svg(hop_summary))
        print("docs/performance.md and docs/figures.svg updated", file=sys.stderr)


if __name__ == "__main__":
    main()
