#!/usr/bin/env python3
"""Proxy-overhead benchmark (../shared/BENCHMARKS.md §1), side by side in one run.

Backends: 3 nginx `return 200` servers (one worker) that also answer `GET /version` and add
`XXX-FXLB-WAIT: 1ms`. Contenders on the same backends: direct to one backend; nginx (1 worker,
upstream keepalive 64, HTTP/1.1); HAProxy (nbthread 1, balance uri, http-reuse always); fnlb
--threads 1; fnlb with its default threads. Load: wrk -t1 -c{16,64,256} -d10s --latency on a
function path, and 1 MiB responses. Several interleaved rounds; medians.

    bench/proxy.py                       # 3 rounds, 10 s each (about 15 minutes)
    bench/proxy.py --rounds 1 --seconds 5 --conns 64
    bench/proxy.py --base /tmp/fnlb-old      # adds that binary, -threads 1, as fnlb-1-base
    bench/proxy.py --only direct,fnlb-1 --body-sizes 65536,262144   # answers of those sizes too

Reports req/s (and MB/s for sized answers), p50/p99, peak RSS of the proxy under load, CPU
seconds per 100k requests, and each as a ratio to going direct, nginx and HAProxy of the same
round. nginx, HAProxy and wrk are installed from
Debian's packages if missing.
"""
import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
BACKENDS = [19101, 19102, 19103]
PORTS = {"nginx": 18091, "haproxy": 18092, "fnlb-1": 18093, "fnlb": 18094, "fnlb-1-base": 18095}
PATH = "/r/app/hello"
BIG = "/r/app/big"
SIZES = []  # --body-sizes
TICK = os.sysconf("SC_CLK_TCK")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_tools(build):
    if build:
        sh("cargo", "build", "--release", "-q", "-p", "fnlb", cwd=ROOT)
    missing = [p for p, b in (("nginx-light", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"))
               if not (shutil.which(b) or os.path.exists(f"/usr/sbin/{b}"))]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-qq", env=env)
        sh("apt-get", "install", "-y", "-qq", *missing, env=env)


def which(b):
    return shutil.which(b) or f"/usr/sbin/{b}"


def wait_for(url, limit=20):
    end = time.time() + limit
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


class Procs:
    def __init__(self):
        self.procs = {}

    def start(self, name, args, log):
        self.procs[name] = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self.procs[name]

    def stop(self):
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def start_backends(procs, work):
    # nginx's workers run as nobody: the temp dir and the body file must be readable to them.
    os.chmod(work, 0o755)
    with open(os.path.join(work, "big.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    os.chmod(os.path.join(work, "big.bin"), 0o644)
    for size in SIZES:
        with open(os.path.join(work, f"body-{size}.bin"), "wb") as f:
            f.write(os.urandom(size))
        os.chmod(os.path.join(work, f"body-{size}.bin"), 0o644)
    sized = "".join(f"\n    location = {BIG}-{size} {{ alias {work}/body-{size}.bin; }}" for size in SIZES)
    servers = "\n".join(f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    add_header XXX-FXLB-WAIT 1ms always;
    location = /version {{ default_type application/json; return 200 '{{"version":"0.3.753"}}'; }}
    location = {BIG} {{ alias {work}/big.bin; }}{sized}
    location / {{ return 200 'hello'; }}
  }}""" for port in BACKENDS)
    conf = f"""worker_processes 1; daemon off; pid {work}/backend.pid; error_log {work}/backend-error.log warn;
worker_rlimit_nofile 65535;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 1000000; {servers}
}}"""
    path = os.path.join(work, "backend.conf")
    open(path, "w").write(conf)
    procs.start("backend", [which("nginx"), "-c", path, "-p", work], os.path.join(work, "backend.log"))
    for p in BACKENDS:
        wait_for(f"http://127.0.0.1:{p}/version")


def start_contenders(procs, work, fnlb, base):
    ups = "\n".join(f"    server 127.0.0.1:{p};" for p in BACKENDS)
    conf = f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 65535;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream fn {{
{ups}
    keepalive 64;
  }}
  server {{ listen 127.0.0.1:{PORTS['nginx']} backlog=4096;
    location / {{ proxy_pass http://fn; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; }}
  }}
}}"""
    path = os.path.join(work, "nginx.conf")
    open(path, "w").write(conf)
    procs.start("nginx", [which("nginx"), "-c", path, "-p", work], os.path.join(work, "nginx.log"))

    srv = "\n".join(f"  server n{i} 127.0.0.1:{p}" for i, p in enumerate(BACKENDS))
    hconf = f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']}
  default_backend be
backend be
  balance uri
{srv}
"""
    hpath = os.path.join(work, "haproxy.cfg")
    open(hpath, "w").write(hconf)
    procs.start("haproxy", [which("haproxy"), "-f", hpath, "-db"], os.path.join(work, "haproxy.log"))

    nodes = ",".join(f"127.0.0.1:{p}" for p in BACKENDS)
    fnlbs = [("fnlb-1", fnlb, ["-threads", "1"]), ("fnlb", fnlb, [])]
    if base:
        # Another build (before a change) in the same run, on the same backends.
        fnlbs.append(("fnlb-1-base", base, ["-threads", "1"]))
    else:
        del PORTS["fnlb-1-base"]
    for name, binary, threads in fnlbs:
        port = PORTS[name]
        procs.start(name, [binary, "-listen", f"127.0.0.1:{port}", "-mgmt-listen",
                           f"127.0.0.1:{port}", "-nodes", nodes, *threads],
                    os.path.join(work, f"{name}.log"))
    for name, port in PORTS.items():
        wait_for(f"http://127.0.0.1:{port}{PATH}")
    # fnlb serves once its first health checks passed.
    for name, _, _ in fnlbs:
        end = time.time() + 20
        while time.time() < end:
            body = urllib.request.urlopen(f"http://127.0.0.1:{PORTS[name]}/1/lb/nodes").read()
            if body.count(b"online") == len(BACKENDS):
                break
            time.sleep(0.1)


def proc_cpu_rss(pid):
    """CPU seconds and RSS (bytes) of a process and its children threads (nginx/haproxy master+worker)."""
    pids = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()] \
        if os.path.exists(f"/proc/{pid}/task/{pid}/children") else [pid]
    cpu, rss = 0.0, 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return cpu, rss


def parse_wrk(out):
    def dur(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = dur(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = dur(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, p50, p99, total, errors


def measure(url, conns, seconds, pid):
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            if pid:
                peak[0] = max(peak[0], proc_cpu_rss(pid)[1])
            time.sleep(0.2)
    t = threading.Thread(target=sample)
    cpu0 = proc_cpu_rss(pid)[0] if pid else 0
    t.start()
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    stop.set()
    t.join()
    cpu1 = proc_cpu_rss(pid)[0] if pid else 0
    rps, p50, p99, total, errors = parse_wrk(out)
    return {"rps": rps, "p50": p50, "p99": p99, "rss": peak[0], "cpu100k": (cpu1 - cpu0) / max(total, 1) * 1e5,
            "errors": errors}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", default="16,64,256")
    ap.add_argument("--no-big", action="store_true", help="skip the 1 MiB responses")
    ap.add_argument("--fnlb", help="the fnlb binary to measure (default: target/release/fnlb, built first)")
    ap.add_argument("--base", help="another fnlb binary to run as fnlb-1-base (-threads 1): before/after in one run")
    ap.add_argument("--only", help="comma-separated contenders to measure (default: all)")
    ap.add_argument("--body-sizes", default="", help="comma-separated answer sizes in bytes to add as loads (c16)")
    args = ap.parse_args()
    SIZES.extend(int(s) for s in args.body_sizes.split(",") if s)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65535), hard))
    ensure_tools(build=not args.fnlb)
    work = tempfile.mkdtemp(prefix="fnlb-proxy-bench-")
    procs = Procs()
    try:
        start_backends(procs, work)
        start_contenders(procs, work, args.fnlb or os.path.join(BIN, "fnlb"), args.base)
        contenders = ["direct", "nginx", "haproxy", "fnlb-1", "fnlb"] + (["fnlb-1-base"] if args.base else [])
        if args.only:
            contenders = [c for c in contenders if c in args.only.split(",")]
        loads = [(f"c{c}", PATH, int(c)) for c in args.conns.split(",")]
        if not args.no_big:
            loads.append(("1MiB c16", BIG, 16))
        loads += [(f"{size}B c16", f"{BIG}-{size}", 16) for size in SIZES]
        results = {}  # (load, contender) -> [round results]
        for rnd in range(args.rounds):
            for load, path, conns in loads:
                # Interleaved: every contender once per round, in a rotating order.
                order = contenders[rnd % len(contenders):] + contenders[:rnd % len(contenders)]
                for c in order:
                    port = BACKENDS[0] if c == "direct" else PORTS[c]
                    pid = None if c == "direct" else procs.procs[c].pid
                    r = measure(f"http://127.0.0.1:{port}{path}", conns, args.seconds, pid)
                    results.setdefault((load, c), []).append(r)
                    print(f"  round {rnd + 1} {load} {c}: {r['rps']:.0f} req/s p99 {r['p99']:.2f} ms",
                          file=sys.stderr)
        print(f"\nproxy benchmark: {args.rounds} round(s) x {args.seconds} s, medians; "
              f"{os.cpu_count()} CPUs; ratios are to direct / nginx / HAProxy of the same run\n")

        def ratio(m, med, c):
            return f"{m['rps'] / med[c]['rps']:.2f}" if c in med else "-"
        for load, path, _ in loads:
            print(f"### {load}\n")
            # MB/s of body: the 1 MiB answers' size times req/s.
            size = (1 << 20) if path == BIG else int(path.rsplit("-", 1)[1]) if path.startswith(BIG + "-") else 0
            mbs = " MB/s |" if size else ""
            print(f"| contender | req/s |{mbs} vs direct | vs nginx | vs haproxy | p50 ms | p99 ms | RSS MB | "
                  "CPU s/100k | errors |")
            print("|---|---|" + ("---|" if size else "") + "---|---|---|---|---|---|---|---|")
            med = {c: {k: statistics.median(r[k] for r in results[(load, c)])
                       for k in ("rps", "p50", "p99", "rss", "cpu100k", "errors")} for c in contenders}
            for c in contenders:
                m = med[c]
                rss = f"{m['rss'] / 1e6:.1f}" if c != "direct" else "-"
                cpu = f"{m['cpu100k']:.2f}" if c != "direct" else "-"
                mb = f" {m['rps'] * size / 1e6:.0f} |" if size else ""
                print(f"| {c} | {m['rps']:.0f} |{mb} {ratio(m, med, 'direct')} | {ratio(m, med, 'nginx')} | "
                      f"{ratio(m, med, 'haproxy')} | {m['p50']:.2f} | {m['p99']:.2f} | {rss} | {cpu} | "
                      f"{m['errors']:.0f} |")
            print()
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
