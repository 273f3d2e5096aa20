#!/usr/bin/env python3
"""Routing-quality benchmark (../shared/BENCHMARKS.md §2), side by side on the same trace.

For every scenario (variant, rho, seed) and every contender, starts 8 fresh simulated Fn nodes
(fnsim), the contender in front of them, replays the seeded trace open loop with `fnsim drive`,
and prints one table per scenario. Contenders: fnlb with each policy, nginx with
`hash $request_uri consistent`, nginx round-robin.

    bench/routing.py                                  # the full default run (long: ~10 min a scenario)
    bench/routing.py --scenarios steady:0.3 --seeds 1 --warmup 10s --duration 30s
    bench/routing.py --contenders fnlb-bounded,nginx-hash --json out.json
    bench/routing.py --scenario azure --rho 0.45 --window 120:10,300:10 --seeds 1
    bench/routing.py --scenarios steady:0.45 --seeds 1-30 --shortest 3   # the short-function seeds
    bench/routing.py --seeds 1-30 --seed-means                            # only list the seeds' E[exec]

Scenarios are VARIANT[:RHO]; variants: steady, bursty, ramp, churn, multi-lb, overload, spike
(2x the rate for 10 s a third of the way through the measured window; the report says when the
cold-start ratio is back to its level before), many (5,000 functions, Zipf 1.1), azure (a replay
of ../shared/traces/azure2019: --window START:MINUTES, one scenario per window, --rho or --speed,
--arrivals). Every row carries the trace's calls/s and popularity-weighted mean execution time.
Seeds: a list and/or ranges (1-30). nginx is installed from Debian's packages if missing.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
NODES = 8
NODE_PORT = 19001
LB_PORTS = [18081, 18083, 18084]
POLICIES = ["bounded", "ch", "fnlb-classic", "round-robin", "least-conn"]
CONTENDERS = [f"fnlb-{p}" for p in POLICIES] + ["nginx-hash", "nginx-rr"]


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_tools():
    sh("cargo", "build", "--release", "-q", "-p", "fnlb", "-p", "fnsim", cwd=ROOT)
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-qq", env=env)
        sh("apt-get", "install", "-y", "-qq", "nginx-light", env=env)


def wait_for(pred, what, limit=30.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read()


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log):
        p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs = []


def node_addrs():
    return [f"127.0.0.1:{NODE_PORT + i}" for i in range(NODES)]


def start_nodes(procs, work, idle):
    log = os.path.join(work, "fnsim.log")
    procs.start([os.path.join(BIN, "fnsim"), "serve", "--nodes", str(NODES), "--port", str(NODE_PORT),
                 "--slots", "64", "--idle-timeout", idle], log)
    wait_for(lambda: "fnsim ready" in open(log).read(), "fnsim")


def start_fnlb(procs, work, policy, n_lbs):
    for k in range(n_lbs):
        port = LB_PORTS[k]
        log = os.path.join(work, f"fnlb{k}.log")
        procs.start([os.path.join(BIN, "fnlb"), "-listen", f"127.0.0.1:{port}", "-mgmt-listen",
                     f"127.0.0.1:{port}", "-nodes", ",".join(node_addrs()), "-policy", policy,
                     "-balancers", str(n_lbs), "-hc-interval", "1"], log)
    for k in range(n_lbs):
        url = f"http://127.0.0.1:{LB_PORTS[k]}/1/lb/nodes"
        wait_for(lambda: list(json.loads(get(url))["nodes"].values()).count("online") == NODES, "fnlb nodes online")


def start_nginx(procs, work, mode, n_lbs):
    balance = "hash $request_uri consistent;" if mode == "hash" else ""
    servers = "\n".join(f"    server {a} max_fails=1 fail_timeout=5s;" for a in node_addrs())
    listens = "\n".join(f"    listen 127.0.0.1:{LB_PORTS[k]} backlog=4096;" for k in range(n_lbs))
    conf = f"""
worker_processes 1;
worker_rlimit_nofile 65535;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 32768; }}
http {{
  access_log off;
  upstream fn {{
    {balance}
{servers}
    keepalive 512;
  }}
  server {{
{listens}
    location / {{
      proxy_pass http://fn;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 300s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.start([nginx, "-c", path, "-p", work], os.path.join(work, "nginx.log"))
    wait_for(lambda: get(f"http://127.0.0.1:{LB_PORTS[0]}/version"), "nginx")


def drive_flags(variant, rho, seed, args, window=None):
    """The trace-selecting flags of `fnsim drive` (shared by the runs and the dry runs)."""
    drive_variant = "steady" if variant == "multi-lb" else variant
    cmd = ["--variant", drive_variant, "--seed", str(seed), "--warmup", args.warmup, "--duration", args.duration,
           "--idle-timeout", args.idle_timeout]
    if rho is not None and not (variant == "azure" and args.speed):
        cmd += ["--rho", str(rho)]
    if args.functions:
        cmd += ["--functions", str(args.functions)]
    if variant == "azure":
        cmd += ["--window", window or args.window.split(",")[0], "--arrivals", args.arrivals,
                "--max-exec", args.max_exec]
        if args.speed:
            cmd += ["--speed", str(args.speed)]
        if args.trace_dir:
            cmd += ["--trace-dir", args.trace_dir]
    return cmd


def dry_run(variant, rho, seed, args, window=None):
    cmd = [os.path.join(BIN, "fnsim"), "drive", "--dry-run", "--json"] + drive_flags(variant, rho, seed, args, window)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def seed_list(spec):
    """`1,2,3`, `1-30`, or both (`1-3,7`)."""
    out = []
    for part in spec.split(","):
        a, sep, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    return out


def seed_means(seeds, variant, rho, args):
    """Each seed's trace: calls/s and popularity-weighted mean execution time (dry runs)."""
    rows = []
    for seed in seeds:
        r = dry_run(variant, rho, seed, args)
        rows.append((seed, r["rate"], r["mean_exec_ms"], r["bound_cold_ratio"]))
    print(f"\n### seeds of {variant}, rho {rho}: calls/s and mean execution time\n")
    print("| seed | calls/s | E[exec] ms | bound cold % |")
    print("|---|---|---|---|")
    for seed, rate, mean, bound in sorted(rows, key=lambda r: r[2]):
        print(f"| {seed} | {rate:.0f} | {mean:.0f} | {100 * bound:.2f} |")
    sys.stdout.flush()
    return rows


def run_one(contender, variant, rho, seed, args, work, window=None):
    procs = Procs()
    n_lbs = 3 if variant == "multi-lb" else 1
    try:
        start_nodes(procs, work, args.idle_timeout)
        if contender.startswith("fnlb-"):
            start_fnlb(procs, work, contender[len("fnlb-"):], n_lbs)
        else:
            start_nginx(procs, work, contender[len("nginx-"):], n_lbs)
        targets = ",".join(f"http://127.0.0.1:{LB_PORTS[k]}" for k in range(n_lbs))
        cmd = [os.path.join(BIN, "fnsim"), "drive", "--target", targets, "--json",
               "--nodes-url", ",".join(f"http://{a}" for a in node_addrs())]
        cmd += drive_flags(variant, rho, seed, args, window)
        if variant == "churn":
            cmd += ["--admin", f"http://127.0.0.1:{NODE_PORT + 1}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)
    finally:
        procs.stop()


def fmt_table(rows):
    head = ["contender", "calls/s", "E[exec]", "cold %", "x bound", "excess p50", "p99", "p99.9", "busy max/mean",
            "on home %", "errors"]
    lines = [head]
    for name, r in rows:
        if r is None:
            lines.append([name, "failed"] + [""] * (len(head) - 2))
            continue
        e = r["excess_ms"]
        lines.append([name, f"{r['rate']:.0f}", f"{r['mean_exec_ms']:.0f} ms", f"{100 * r['cold_ratio']:.1f}", f"{r['cold_vs_bound']:.2f}", f"{e['p50']:.0f} ms",
                      f"{e['p99']:.0f} ms", f"{e['p999']:.0f} ms", f"{r['busy_max_over_mean']:.2f}",
                      f"{100 * r.get('home_share', 0):.1f}", str(r["errors"])])
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    out = []
    for k, l in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(l)) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def fmt_churn(rows):
    """Churn only: functions remapped while the node was away and after it returned, and the
    cold-start ratio per 5 s of the measured window (the spike follows each event)."""
    lines = []
    for name, r in rows:
        k = r and r.get("churn_keys")
        if not k:
            continue
        timeline = " ".join(f"{100 * b['cold'] / b['calls']:.0f}" if b["calls"] else "-" for b in r["cold_timeline"])
        lines.append(f"- {name}: node {k['node']} away: of {k['compared_down']} functions, "
                     f"{k['moved_off_leaving_node']} moved off it, {k['moved_elsewhere']} others moved; back: "
                     f"{k['returned_home']} of its {k['compared_return']} returned to it; cold % per 5 s: {timeline}")
    return "\n".join(lines)


def fmt_spike(rows):
    """Spike only: when the cold-start ratio was back to its level before the spike, for each
    contender and for the lower bound on the same calls."""
    lines = []
    for name, r in rows:
        sp, b = r and r.get("spike"), r and r.get("bound_spike")
        if not sp:
            continue
        back = lambda x: "not back by the end" if x["recovered_after_s"] is None else f"back {x['recovered_after_s']:.0f} s after"
        per_s = " ".join(f"{100 * x:.0f}" for x in sp["per_second"])
        lines.append(f"- {name}: spike {sp['start_s']:.0f}-{sp['end_s']:.0f} s, cold {100 * sp['before_ratio']:.2f}% before, "
                     f"{100 * sp['during_ratio']:.2f}% during, {back(sp)} (bound: {100 * b['before_ratio']:.2f}% / "
                     f"{100 * b['during_ratio']:.2f}%, {back(b)}); cold % per s from 5 s before: {per_s}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="steady:0.3,steady:0.45,bursty:0.3,churn:0.3,multi-lb:0.3,overload:0.6,"
                    "overload:0.8,spike:0.3,many:0.3,azure:0.3,azure:0.45,azure:0.8")
    ap.add_argument("--scenario", help="one variant (with --rho): same as --scenarios VARIANT:RHO")
    ap.add_argument("--rho", type=float, help="with --scenario")
    ap.add_argument("--seeds", default="1,2,3", help="a list and/or ranges: 1,2,3 or 1-30")
    ap.add_argument("--shortest", type=int, metavar="N",
                    help="of --seeds, run only the N whose traces have the shortest mean execution time")
    ap.add_argument("--seed-means", action="store_true",
                    help="print every seed's calls/s and mean execution time, then stop")
    ap.add_argument("--functions", type=int, help="number of functions (default 200; many: 5000)")
    ap.add_argument("--window", default="120:10", help="azure: START:MINUTES of the trace, comma-separated for several")
    ap.add_argument("--speed", type=float, help="azure: time compression instead of --rho")
    ap.add_argument("--arrivals", default="poisson", choices=["poisson", "uniform"], help="azure")
    ap.add_argument("--max-exec", default="30s", help="azure: execution times are clipped to this")
    ap.add_argument("--trace-dir", help="azure: default ../shared/traces/azure2019 beside the repository")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--warmup", default="10s")
    ap.add_argument("--duration", default="60s")
    ap.add_argument("--idle-timeout", default="30s")
    ap.add_argument("--json", help="write every result to this file")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65535), hard))
    if args.scenario:
        args.scenarios = args.scenario + (f":{args.rho}" if args.rho is not None else "")
    elif args.rho is not None:
        ap.error("--rho goes with --scenario (or write --scenarios VARIANT:RHO)")
    ensure_tools()
    scenarios = []
    for scen in args.scenarios.split(","):
        variant, _, rho = scen.partition(":")
        rho = float(rho) if rho else None
        for window in (args.window.split(",") if variant == "azure" else [None]):
            scenarios.append((variant, rho, window))
    seeds = seed_list(args.seeds)
    if args.seed_means or args.shortest:
        variant, rho, _ = next(((v, r, w) for v, r, w in scenarios if v != "azure"), ("steady", None, None))
        means = seed_means(seeds, variant, rho, args)
        if args.seed_means:
            return
        seeds = [s for s, _, _, _ in sorted(means, key=lambda r: r[2])[:args.shortest]]
        print(f"\nthe {args.shortest} with the shortest mean execution time: {','.join(map(str, seeds))}")
    results = []
    for variant, rho, window in scenarios:
        for seed in seeds:
            rows = []
            for c in args.contenders.split(","):
                work = tempfile.mkdtemp(prefix="fnlb-bench-")
                t0 = time.time()
                try:
                    r = run_one(c, variant, rho, seed, args, work, window)
                except Exception as e:  # a contender that fails is reported, not fatal
                    print(f"  {c}: failed: {e} (logs in {work})", file=sys.stderr)
                    r = None
                else:
                    shutil.rmtree(work, ignore_errors=True)
                print(f"  {variant} rho={rho} seed={seed} {c}: {time.time() - t0:.0f}s", file=sys.stderr)
                rows.append((c, r))
                results.append({"variant": variant, "rho": rho, "window": window, "seed": seed, "contender": c,
                                "result": r})
            az = next((r["azure"] for _, r in rows if r and r.get("azure")), None)
            where = f", window {window}, speed {az['speed']:.2f}, {az['arrivals']} arrivals" if az else ""
            reached = next((r["rho"] for _, r in rows if r), rho)
            print(f"\n### {variant}, rho {reached if reached is None else f'{reached:.2f}'}{where}, seed {seed}\n")
            print(fmt_table(rows))
            if variant == "churn":
                print()
                print(fmt_churn(rows))
            if variant == "spike":
                print()
                print(fmt_spike(rows))
            sys.stdout.flush()
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
