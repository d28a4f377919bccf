"""Aggregate the run's records into Markdown (printed and written to --output).

Each metric is the median over the repetitions. Ratios are proxy / nginx.
Exit status 3 when any run saw errors or non-2xx answers, a proxy was skipped,
or idle connections failed; 0 otherwise.
"""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict

SCENARIOS = {
    "small-c64": "GET 64-byte body, keep-alive, 64 connections",
    "small-c256": "GET 64-byte body, keep-alive, 256 connections",
    "resp-16k": "GET 16 KiB body, keep-alive, 64 connections",
    "resp-1m": "GET 1 MiB body, keep-alive, 16 connections",
    "post-1m": "POST 1 MiB body (backend reads it all), keep-alive, 16 connections",
    "close": "GET 64-byte body, new connection per request, 64 concurrent",
    "routes-1": "small-c64 through one prefix route",
    "routes-1k": "small-c64 through 1,000 exact hosts + 1,000 prefix routes + 10 regexes, hitting a prefix route",
    "limit-1": "routes-1 with a per-client-address rate limit on the route that never refuses",
    "idle-10k": "10,000 idle keep-alive client connections (one request each, then held)",
    "scaling": "small-c256 with 2 workers (scaling ratio = 2 workers / 1 worker)",
    "tls-small-c64": "small-c64 over TLS 1.3 (ECDSA P-256, X25519), keep-alive, 64 connections",
    "tls-handshake": "GET 64-byte body over a new TLS 1.3 connection per request, full handshake each, 32 concurrent",
    "tls-resume": "as tls-handshake, each new connection resumed with a session ticket",
    "tls-1m": "GET 1 MiB body over TLS 1.3, keep-alive, 16 connections",
    "tls-idle-10k": "10,000 idle keep-alive TLS connections (handshake and one request each, then held)",
}
PROXY_ORDER = ["ringproxy", "nginx", "haproxy", "direct"]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            meta[key] = value
    return meta


def read_lines(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, TypeError):
        return []


def summarize(records):
    """(scenario, proxy) -> medians and error totals over the reps."""
    groups = defaultdict(list)
    for r in records:
        if r["kind"] == "load":
            groups[(r["scenario"], r["proxy"])].append(r)
    out = {}
    for key, rs in groups.items():
        rss = med([r["rss_kb"] for r in rs])
        out[key] = {
            "reps": len(rs),
            "rps": med([r["rps"] for r in rs]),
            "p50": med([r["p50_ms"] for r in rs]),
            "p99": med([r["p99_ms"] for r in rs]),
            "cpu": med([r["cpu_us_per_req"] for r in rs]),
            "kernel": med([r.get("kernel_us_per_req") for r in rs]),
            "rss_mib": rss / 1024 if rss is not None else None,
            "upstream": med([r["upstream_conns"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "non2xx": sum(r["non2xx"] for r in rs),
            "error_detail": [r["error_detail"] for r in rs if r["error_detail"]],
        }
    return out


def ordered(proxies):
    return sorted(proxies, key=lambda p: PROXY_ORDER.index(p) if p in PROXY_ORDER else 99)


def load_tables(summary, problems):
    lines = []
    scen = [s for s in SCENARIOS if any(k[0] == s for k in summary)]
    if "ringproxy" in {k[1] for k in summary}:
        lines += ["### ringproxy / nginx", "",
                  "| scenario | req/s | CPU µs/req | p99 | RSS |", "|---|---:|---:|---:|---:|"]
        for s in scen:
            r, n = summary.get((s, "ringproxy")), summary.get((s, "nginx"))
            if r and n:
                lines.append(f"| {s} | {ratio(r['rps'], n['rps'])} | {ratio(r['cpu'], n['cpu'])} "
                             f"| {ratio(r['p99'], n['p99'])} | {ratio(r['rss_mib'], n['rss_mib'])} |")
        lines += ["", "req/s above 1 is better; CPU µs/req, p99 and RSS below 1 are better.", ""]
        lines += calibration_lines(summary, scen)
    lines += ["### All proxies (median of the repetitions)", "",
              "| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req | RSS MiB | upstream conns | errors / non-2xx "
              "| req/s ÷ nginx | CPU ÷ nginx | p99 ÷ nginx | RSS ÷ nginx |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for s in scen:
        base = summary.get((s, "nginx"))
        for p in ordered({k[1] for k in summary if k[0] == s}):
            v = summary[(s, p)]
            bad = v["errors"] + v["non2xx"]
            err = f"**⚠ {v['errors']} / {v['non2xx']}**" if bad else "0 / 0"
            if bad:
                problems.append(f"{s} / {p}: {v['errors']} errors, {v['non2xx']} non-2xx "
                                f"{json.dumps(v['error_detail'])}")
            name = "direct (no proxy; CPU is the backend's)" if p == "direct" else p
            rss = None if p == "direct" else v["rss_mib"]
            lines.append(
                f"| {s} | {name} | {fmt(v['rps'])} | {fmt(v['p50'], 2)} | {fmt(v['p99'], 2)} | {fmt(v['cpu'], 1)} "
                f"| {fmt(rss, 1)} | {fmt(v['upstream'])} | {err} "
                + ("| — | — | — | — |" if p == "direct" or not base else
                   f"| {ratio(v['rps'], base['rps'])} | {ratio(v['cpu'], base['cpu'])} "
                   f"| {ratio(v['p99'], base['p99'])} | {ratio(v['rss_mib'], base['rss_mib'])} |"))
    return lines


def routing_lines(summary):
    """What routing costs each proxy: CPU per request of the routes scenarios over small-c64's
    (the same request without routes) in the same run."""
    rows = []
    for p in ordered({k[1] for k in summary if k[0].startswith("routes-") or k[0] == "limit-1"}):
        base = summary.get(("small-c64", p), {}).get("cpu")
        cells = [summary.get((s, p), {}).get("cpu") for s in ("routes-1", "routes-1k")]
        routed = summary.get(("routes-1", p), {}).get("cpu")
        limited = summary.get(("limit-1", p), {}).get("cpu")
        rows.append(f"| {p} | {fmt(base, 1)} | " + " | ".join(
            f"{fmt(c, 1)} ({ratio(c, base)})" for c in cells)
            + f" | {fmt(limited, 1)} ({ratio(limited, routed)} of routes-1) |")
    if not rows:
        return []
    return ["### Routing: CPU µs/req with routes (÷ small-c64, the same load without them)", "",
            "limit-1 is routes-1 with a rate limit on the route that never refuses, ÷ routes-1.", "",
            "| proxy | small-c64 | routes-1 | routes-1k | limit-1 |", "|---|---:|---:|---:|---:|", *rows, ""]


def calibration_lines(summary, scen):
    """Proxy CPU per request against the floor: a proxy does the backend's socket work twice (one
    connection each side), so about 2 x the backend's own CPU per request when it serves the same
    load directly is the least any proxy can spend."""
    rows = []
    for s in scen:
        d = summary.get((s, "direct"), {}).get("cpu")
        if not d:
            continue
        cells = [f"{p} {summary[(s, p)]['cpu'] / (2 * d):.2f}x" for p in ordered(k[1] for k in summary if k[0] == s)
                 if p != "direct" and summary[(s, p)]["cpu"]]
        rows.append(f"| {s} | {d:.1f} | {2 * d:.1f} | {', '.join(cells)} |")
    if not rows:
        return []
    return ["The floor: 2 × the backend's own CPU per request when it serves the load directly (a proxy "
            "does that socket work twice, once per side). Proxy CPU per request ÷ the floor:", "",
            "| scenario | direct µs/req | floor µs/req | proxy ÷ floor |", "|---|---:|---:|---|", *rows, "",
            *kernel_lines(summary, scen)]


def kernel_lines(summary, scen):
    """The kernel's part of each one's CPU per request (stime), next to 2 x the direct backend's: the
    socket work any proxy does, which no user-space change removes."""
    rows = []
    for s in scen:
        d = summary.get((s, "direct"), {}).get("kernel")
        if d is None:
            continue
        cells = []
        for p in ordered(k[1] for k in summary if k[0] == s):
            v = summary[(s, p)]
            if p != "direct" and v["kernel"] is not None and v["cpu"]:
                cells.append(f"{p} {v['kernel']:.1f} ({100 * v['kernel'] / v['cpu']:.0f}%)")
        rows.append(f"| {s} | {d:.1f} | {2 * d:.1f} | {', '.join(cells)} |")
    if not rows:
        return []
    return ["The kernel's part (stime) of the CPU per request, and 2 × the direct backend's: the socket "
            "work any proxy does twice, which no change in user space removes:", "",
            "| scenario | direct kernel µs/req | 2 × direct kernel | proxy kernel µs/req (share of its CPU) |",
            "|---|---:|---:|---|", *rows, ""]


def idle_tables(records, problems):
    out = []
    for scenario in ("idle-10k", "tls-idle-10k"):
        out += idle_table([r for r in records if r.get("scenario", "idle-10k") == scenario], scenario, problems)
    return out


def idle_table(records, scenario, problems):
    rs = {r["proxy"]: r for r in records if r["kind"] == "idle"}
    if not rs:
        return []
    lines = [f"### {scenario}: proxy memory with idle keep-alive connections", "",
             "| proxy | held / asked | failed | closed by proxy | RSS before MiB | RSS held MiB | KiB per held conn "
             "| RSS held ÷ nginx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = rs.get("nginx")
    fell = False
    for p in ordered(rs):
        r = rs[p]
        held = r["opened"] - r["closed_by_proxy"]
        per = (r["rss_held_kb"] - r["rss_before_kb"]) / held if held else None
        fell = fell or (per is not None and per < 0)
        if r["failed"] or r["non2xx"] or r["closed_by_proxy"]:
            problems.append(f"{scenario} / {p}: {r['failed']} failed, {r['non2xx']} non-2xx, "
                            f"{r['closed_by_proxy']} closed by the proxy; statuses {r.get('statuses')}"
                            + (f", first error {r['first_error']}" if r["first_error"] else ""))
        lines.append(f"| {p} | {held} / {r['count']} | {r['failed']} | {r['closed_by_proxy']} "
                     f"| {r['rss_before_kb'] / 1024:.1f} | {r['rss_held_kb'] / 1024:.1f} | {fmt(per, 2)} "
                     f"| {ratio(r['rss_held_kb'], base['rss_held_kb']) if base else '—'} |")
    if fell:
        lines += ["", "A negative KiB per connection means RSS fell while the connections were held: "
                  "the proxy returned heap pages freed since earlier scenarios (ringproxy trims the "
                  "heap once many connections have parked), so RSS held is the figure to compare."]
    return lines + [""]


def scaling_table(summary, meta):
    note = meta.get("scaling")
    if not note:
        return []
    lines = ["### scaling: 2 workers / 1 worker (small-c256 req/s)", "", f"Setup: {note}.", ""]
    w2 = {k[1]: v for k, v in summary.items() if k[0] == "scaling"}
    if not w2:
        return lines
    lines += ["| proxy | req/s 1 worker | req/s 2 workers | ratio |", "|---|---:|---:|---:|"]
    for p in ordered(w2):
        w1 = summary.get(("small-c256", p))
        lines.append(f"| {p} | {fmt(w1 and w1['rps'])} | {fmt(w2[p]['rps'])} "
                     f"| {ratio(w2[p]['rps'], w1 and w1['rps'])} |")
    return lines + [""]


def commands(records, meta):
    """One command line per scenario, with ports, pids and temp paths replaced."""
    seen = {}
    for r in records:
        if r["kind"] not in ("load", "idle") or r["scenario"] in seen:
            continue
        c = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", r["cmd"])
        c = re.sub(r"-s \S*/wrk_report\.lua", "-s bench/lib/wrk_report.lua", c)
        if r["kind"] == "idle":
            c = re.sub(r"--port \d+", "--port <port>", c)
            c = re.sub(r"--pids \S+", "--pids <proxy pid>", c)
            c = re.sub(r" --out \S+", "", c)
            c = f"taskset -c {meta.get('other_cores')} python3 {c}"
        seen[r["scenario"]] = c
    return seen


def raw_table(records):
    lines = ["<details><summary>Every repetition</summary>", "",
             "| scenario | proxy | rep | req/s | p50 ms | p99 ms | CPU µs/req | CPU s | RSS MiB | upstream conns "
             "| errors | non-2xx | note |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        if r["kind"] != "load":
            continue
        rss = r["rss_kb"] / 1024 if r["rss_kb"] is not None and r["proxy"] != "direct" else None
        lines.append(f"| {r['scenario']} | {r['proxy']} | {r['rep']} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 2)} "
                     f"| {fmt(r['p99_ms'], 2)} | {fmt(r['cpu_us_per_req'], 1)} | {fmt(r['cpu_s'], 2)} "
                     f"| {fmt(rss, 1)} | {r['upstream_conns']} | {r['errors']} | {r['non2xx']} "
                     f"| {r.get('note', '')} |")
    return lines + ["", "</details>", ""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--affinity")
    ap.add_argument("--startup", help="what the proxies printed at startup")
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    with open(a.records) as f:
        records = [json.loads(line) for line in f if line.strip()]
    meta = load_meta(a.meta)
    affinity = [line.split("\t") for line in read_lines(a.affinity)]

    problems = [f"{r['scenario']} / {r['proxy']}: skipped, {r['reason']}" for r in records if r["kind"] == "skipped"]
    problems += [f"{k[len('failed_'):]}: {v}" for k, v in meta.items() if k.startswith("failed_")]
    problems += [f"{r['scenario']} / {r['proxy']} rep {r['rep']}: {r['note']}" for r in records
                 if r["kind"] == "load" and r.get("note")]
    outside = [row for row in affinity if len(row) == 4 and row[3] != "ok"]
    problems += [f"affinity: {row[0]} thread {row[1]} may run on CPUs {row[2]} ({row[3]})" for row in outside]

    summary = summarize(records)
    body = load_tables(summary, problems) + [""] + routing_lines(summary) + idle_tables(records, problems) \
        + scaling_table(summary, meta)

    out = [f"# ringproxy benchmark results ({meta.get('mode', '?')} run, {meta.get('date', '?')})", "",
           f"Command: `{meta.get('command', '').strip()}` — {meta.get('duration_s')} s per run, "
           f"{meta.get('reps')} repetition(s) (median reported), {meta.get('warmup_s')} s warm-up per proxy "
           "and scenario. Generated by bench/compare.sh; see bench/README.md for the method.", "",
           "## Machine", "",
           f"- CPU: {meta.get('cpu')}, nproc {meta.get('nproc')}; kernel {meta.get('kernel')}; "
           f"open files limit {meta.get('nofile')}",
           f"- Layout: every proxy on core {meta.get('proxy_cores')} with 1 worker/thread; backend nginx and "
           f"load generator on core(s) {meta.get('other_cores')}",
           f"- Load average (1/5/15 min) at start {meta.get('loadavg_start')}, at end {meta.get('loadavg_end')}"
           " (anything else running on the machine skews the numbers)",
           f"- ringproxy: {meta.get('ringproxy', 'not run')}",
           f"- {meta.get('nginx')}; {meta.get('haproxy')}",
           f"- {meta.get('wrk')}; {meta.get('oha')}; {meta.get('rustc')}", "",
           "## Results", ""]
    out += ["**Problems seen in this run:**", ""] + [f"- ⚠ {p}" for p in problems] + [""] if problems else \
        ["No errors, no non-2xx answers, every proxy passed its correctness checks.", ""]
    out += body
    out += ["## Scenarios and commands", "", "| scenario | meaning | load command |", "|---|---|---|"]
    cmds = commands(records, meta)
    for s, meaning in SCENARIOS.items():
        c = f"`{cmds[s]}`" if s in cmds else "not run"
        out.append(f"| {s} | {meaning} | {c} |")
    out += ["", *raw_table(records)]
    if affinity:
        out += ["<details><summary>Thread CPU affinity of the proxies</summary>", "", "| proxy | pid/tid name | CPUs | |",
                "|---|---|---|---|"] + [f"| {' | '.join(row)} |" for row in affinity] + ["", "</details>", ""]

    startup = read_lines(a.startup)
    if startup:
        out += ["<details><summary>What the proxies printed at startup</summary>", "", "```"] + startup + \
            ["```", "", "</details>", ""]

    text = "\n".join(out).rstrip("\n") + "\n"
    with open(a.output, "w") as f:
        f.write(text)
    print("\n".join(body))
    if problems:
        print("\n!!! PROBLEMS:\n" + "\n".join(f"!!! {p}" for p in problems), file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
