"""Run one load-generator invocation and record one measurement.

Around the load it samples the proxy's process trees (CPU ticks, RSS) and the
backend's stub_status "accepts" counter (upstream connections opened), then
parses the load generator's output (wrk + wrk_report.lua, or oha JSON) and
appends one JSON record to --out.

usage: run_load.py --proxy NAME --scenario S --rep N --pids "PID..."
                   --status-port P --out FILE [--warmup] -- CMD...
"""
import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

import procstat

# oha reports requests still running at the deadline as errors with this text.
OHA_DEADLINE_ERROR = "aborted due to deadline"


def backend_accepts(port):
    """stub_status 'accepts' minus the connection used to ask."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return int(lines[2].split()[0])


def parse_wrk(stdout):
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            return {
                "requests": d["requests"],
                "duration_s": d["duration_us"] / 1e6,
                "p50_ms": d["p50_us"] / 1e3,
                "p99_ms": d["p99_us"] / 1e3,
                "errors": d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"],
                "error_detail": {k: d[k] for k in ("err_connect", "err_read", "err_write", "err_timeout") if d[k]},
                "non2xx": d["non2xx"],
            }
    raise ValueError("no BENCH_JSON line in wrk output")


def parse_oha(stdout):
    d = json.loads(stdout[stdout.index("{"):])
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errs = {k: v for k, v in d.get("errorDistribution", {}).items() if k != OHA_DEADLINE_ERROR}
    pct = d.get("latencyPercentiles", {})
    return {
        "requests": sum(codes.values()),
        "duration_s": d["summary"]["total"],
        "p50_ms": (pct.get("p50") or 0) * 1e3,
        "p99_ms": (pct.get("p99") or 0) * 1e3,
        "errors": sum(errs.values()),
        "error_detail": errs,
        "non2xx": sum(v for k, v in codes.items() if not 200 <= k < 300),
    }


def main():
    # On TERM/INT exit through an exception, so subprocess.run kills the load generator.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--rep", type=int, default=0)
    ap.add_argument("--pids", default="", help="root pids of the proxy (empty: no CPU/RSS)")
    ap.add_argument("--status-port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--warmup", action="store_true", help="run, check, record nothing")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    tool = "oha" if any(c.endswith("oha") for c in cmd[:4]) else "wrk"
    roots = a.pids.split()

    acc0 = backend_accepts(a.status_port)
    s0 = procstat.sample(roots) if roots else None
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    wall = time.monotonic() - t0
    s1 = procstat.sample(roots) if roots else None
    try:
        acc1 = backend_accepts(a.status_port)
    except OSError as e:  # the backend is gone: the run is being interrupted
        sys.exit(f"backend status unreachable after the run ({e})")

    try:
        r = parse_oha(p.stdout) if tool == "oha" else parse_wrk(p.stdout)
    except (ValueError, KeyError) as e:
        sys.stderr.write(f"cannot parse {tool} output ({e}); exit {p.returncode}\n"
                         f"stdout:\n{p.stdout[-2000:]}\nstderr:\n{p.stderr[-2000:]}\n")
        sys.exit(1)

    rec = {
        "kind": "load", "scenario": a.scenario, "proxy": a.proxy, "rep": a.rep, "tool": tool,
        "cmd": shlex.join(cmd), **r,
        "rps": r["requests"] / r["duration_s"] if r["duration_s"] else 0.0,
        "wall_s": wall,
        "upstream_conns": max(acc1 - acc0 - 1, 0),
        "cpu_us_per_req": None, "kernel_us_per_req": None, "cpu_s": None, "rss_kb": None,
    }
    if s0 and s1:
        cpu_s = (s1["ticks"] - s0["ticks"]) / procstat.CLK_TCK
        rec["cpu_s"] = cpu_s
        rec["cpu_us_per_req"] = cpu_s * 1e6 / r["requests"] if r["requests"] else None
        kernel_s = (s1["sys_ticks"] - s0["sys_ticks"]) / procstat.CLK_TCK
        rec["kernel_us_per_req"] = kernel_s * 1e6 / r["requests"] if r["requests"] else None
        rec["rss_kb"] = s1["rss_kb"]
        rec["nprocs"] = len(s1["pids"])
        if set(s0["pids"]) != set(s1["pids"]):
            rec["note"] = f"proxy processes changed during the run: {s0['pids']} -> {s1['pids']}"

    bad = rec["errors"] or rec["non2xx"] or p.returncode != 0
    cpu = f"{rec['cpu_us_per_req']:.1f}" if rec["cpu_us_per_req"] is not None else "-"
    label = "warmup" if a.warmup else f"rep {a.rep}"
    sys.stderr.write(
        f"  {a.scenario:<10} {a.proxy:<9} {label:<6} {rec['rps']:>10.0f} req/s  p50 {rec['p50_ms']:.2f} ms"
        f"  p99 {rec['p99_ms']:.2f} ms  cpu {cpu} us/req  upstream conns {rec['upstream_conns']}"
        f"{'  !!! ERRORS ' + json.dumps(rec['error_detail']) + ' non2xx=' + str(rec['non2xx']) if bad else ''}\n")
    if p.returncode != 0:
        sys.stderr.write(f"  !!! {tool} exited {p.returncode}: {p.stderr.strip()[-500:]}\n")
        rec["note"] = (rec.get("note", "") + f" {tool} exit code {p.returncode}").strip()
    if not a.warmup:
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
