#!/usr/bin/env python3
"""Routing-quality benchmark (../shared/BENCHMARKS.md §2), side by side on the same trace.

For every scenario (variant, rho, seed) and every contender, starts 8 fresh simulated Fn nodes
(fnsim), the contender in front of them, replays the seeded trace open loop with `fnsim drive`,
and prints one table per scenario. Contenders: fnlb with each policy, nginx with
`hash $request_uri consistent`, nginx round-robin.

    bench/routing.py                                  # the full default run (long: ~10 min a scenario)
    bench/routing.py --scenarios steady:0.3 --seeds 1 --warmup 10s --duration 30s
    bench/routing.py --contenders fnlb-bounded,nginx-hash --json out.json

Scenarios are VARIANT[:RHO]; variants: steady, bursty, ramp, churn, multi-lb, overload.
nginx is installed from Debian's packages if missing.
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


def run_one(contender, variant, rho, seed, args, work):
    procs = Procs()
    n_lbs = 3 if variant == "multi-lb" else 1
    drive_variant = "steady" if variant == "multi-lb" else variant
    try:
        start_nodes(procs, work, args.idle_timeout)
        if contender.startswith("fnlb-"):
            start_fnlb(procs, work, contender[len("fnlb-"):], n_lbs)
        else:
            start_nginx(procs, work, contender[len("nginx-"):], n_lbs)
        targets = ",".join(f"http://127.0.0.1:{LB_PORTS[k]}" for k in range(n_lbs))
        cmd = [os.path.join(BIN, "fnsim"), "drive", "--target", targets, "--variant", drive_variant,
               "--seed", str(seed), "--warmup", args.warmup, "--duration", args.duration,
               "--idle-timeout", args.idle_timeout, "--json",
               "--nodes-url", ",".join(f"http://{a}" for a in node_addrs())]
        if rho is not None:
            cmd += ["--rho", str(rho)]
        if variant == "churn":
            cmd += ["--admin", f"http://127.0.0.1:{NODE_PORT + 1}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)
    finally:
        procs.stop()


def fmt_table(rows):
    head = ["contender", "cold %", "x bound", "excess p50", "p99", "p99.9", "busy max/mean", "on home %", "errors"]
    lines = [head]
    for name, r in rows:
        if r is None:
            lines.append([name, "failed"] + [""] * (len(head) - 2))
            continue
        e = r["excess_ms"]
        lines.append([name, f"{100 * r['cold_ratio']:.1f}", f"{r['cold_vs_bound']:.2f}", f"{e['p50']:.0f} ms",
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="steady:0.3,steady:0.45,bursty:0.3,churn:0.3,multi-lb:0.3,overload:0.7")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--warmup", default="10s")
    ap.add_argument("--duration", default="60s")
    ap.add_argument("--idle-timeout", default="30s")
    ap.add_argument("--json", help="write every result to this file")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65535), hard))
    ensure_tools()
    results = []
    for scen in args.scenarios.split(","):
        variant, _, rho = scen.partition(":")
        rho = float(rho) if rho else None
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows = []
            for c in args.contenders.split(","):
                work = tempfile.mkdtemp(prefix="fnlb-bench-")
                t0 = time.time()
                try:
                    r = run_one(c, variant, rho, seed, args, work)
                except Exception as e:  # a contender that fails is reported, not fatal
                    print(f"  {c}: failed: {e} (logs in {work})", file=sys.stderr)
                    r = None
                else:
                    shutil.rmtree(work, ignore_errors=True)
                print(f"  {variant} rho={rho} seed={seed} {c}: {time.time() - t0:.0f}s", file=sys.stderr)
                rows.append((c, r))
                results.append({"variant": variant, "rho": rho, "seed": seed, "contender": c, "result": r})
            print(f"\n### {variant}, rho {rho}, seed {seed}\n")
            print(fmt_table(rows))
            if variant == "churn":
                print()
                print(fmt_churn(rows))
            sys.stdout.flush()
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
