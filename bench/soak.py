#!/usr/bin/env python3
"""Soak: fnlb in front of fnsim nodes for N minutes under steady load with node churn.

Runs one fnsim process serving --nodes simulated Fn nodes, and fnlb in front of them (default
flags, loopback ports). Two wrk load generators run for the whole soak, rate-limited with wrk's
`delay()` hook so the machine is not saturated: idempotent GETs and POSTs with a small body. Of
the calls, 90 % go to a hot set of --functions paths (log-uniform popularity) and 10 % to a path
never seen before, so per-path state that is not bounded shows up as growth. Every --churn-every
seconds one node (in turn) is taken down for --down-ms by fnsim's `/fnsim/down?node=I&for_ms=N`
(listener closed, connections dropped, back by itself).

Every --interval seconds it samples fnlb's RSS, open file descriptors and threads, prints a row,
and at the end prints the table every minute, the load (requests, errors per method, from wrk)
and a verdict on memory: the median RSS of the last minute against the median of the minute after
warm-up, and the least-squares slope after warm-up. Warm-up is 5 minutes (at most half the run):
fnlb's stats history keeps 5 minutes of per-second summaries, so memory legitimately rises until
it is full.

    bench/soak.py                               # 10 minutes
    bench/soak.py --minutes 1 --interval 2      # a quick look
    bench/soak.py --fnlb /work/wt-rel/target/release/fnlb --fnsim /work/wt-rel/target/release/fnsim

Binaries default to this repository's target/release (build them with
`cargo build --release -p fnlb -p fnsim`). On a shared machine, run copies under other names
(e.g. `cp target/release/fnlb /tmp/fnlb-soak`) so that someone's `pkill -x fnlb` does not end the
soak. wrk is installed from Debian's packages if missing.
All traffic stays on 127.0.0.1. Exit code 0 when memory is flat and no GET failed, 1 otherwise.
"""
import argparse
import json
import os
import re
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
RELEASE = os.path.join(ROOT, "target", "release")

# wrk script: a hot set of paths with log-uniform popularity plus 10 % never-seen paths,
# rate-limited per connection by delay().
LOAD_LUA = r"""
local method = os.getenv("SOAK_METHOD") or "GET"
local functions = tonumber(os.getenv("SOAK_FUNCTIONS") or "500")
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "5")
local body = nil
if method == "POST" then body = '{"soak":true,"pad":"0123456789abcdef"}' end
local n = 0
local prefix = ""

function setup(thread)
  tid = (tid or 0) + 1
  thread:set("tid", tid)
end

function init(args)
  math.randomseed(os.time() + (tid or 0) * 7919)
  prefix = method:lower() .. (tid or 0)
end

function request()
  n = n + 1
  local path
  if math.random() < 0.1 then
    path = "/r/soak/new-" .. prefix .. "-" .. n
  else
    path = "/r/soak/fn" .. math.floor(functions ^ math.random())
  end
  return wrk.format(method, path, nil, body)
end

function delay()
  return delay_ms
end
"""


def log(msg):
    print(msg, flush=True)


def ensure_wrk():
    if shutil.which("wrk"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)


def check_bin(path, what):
    if not os.access(path, os.X_OK):
        sys.exit(f"no {what} binary at {path}: build it (cargo build --release -p fnlb -p fnsim) or pass --{what}")
    return path


class Procs:
    """Child processes, each stopped by its own pid at the end (never by name)."""

    def __init__(self):
        self.procs = []

    def start(self, args, log_path, env=None, stdout_pipe=False):
        p = subprocess.Popen(args, stdout=subprocess.PIPE if stdout_pipe else open(log_path, "w"),
                             stderr=open(log_path + ".err", "w") if stdout_pipe else subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True, text=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_fnsim(procs, fnsim, work, nodes, extra):
    """Starts fnsim; returns the node addresses from its `listening on` lines."""
    p = procs.start([fnsim, "serve", "--nodes", str(nodes), "--port", "0", *extra],
                    os.path.join(work, "fnsim.log"), stdout_pipe=True)
    addrs = []
    deadline = time.time() + 20
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            sys.exit("fnsim exited: see " + os.path.join(work, "fnsim.log.err"))
        m = re.search(r"listening on (\S+)", line)
        if m:
            addrs.append(m.group(1))
        if line.strip() == "fnsim ready":
            break
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    if len(addrs) != nodes:
        sys.exit(f"fnsim gave {addrs}")
    return addrs


def start_fnlb(procs, fnlb, work, nodes, extra):
    """Starts fnlb on a free loopback port; returns (process, base URL)."""
    log_path = os.path.join(work, "fnlb.log")
    env = dict(os.environ, LOG_LEVEL="info")
    args = [fnlb, "-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-nodes", ",".join(nodes), *extra]
    p = procs.start(args, log_path, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            sys.exit("fnlb exited:\n" + open(log_path).read())
        m = re.search(r"fnlb ready.*traffic=(\S+)", open(log_path).read())
        if m:
            return p, "http://" + m.group(1)
        time.sleep(0.05)
    sys.exit("fnlb did not become ready:\n" + open(log_path).read())


def wait_online(base, nodes, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            got = json.load(urllib.request.urlopen(base + "/1/lb/nodes", timeout=2))["nodes"]
            if all(got.get(n) == "online" for n in nodes):
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nodes never all online at {base}")


def sample(pid):
    """RSS (bytes), open fds, threads of a process; None once it is gone."""
    try:
        rss = threads = 0
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                return None  # exited, not yet reaped
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds, threads
    except (FileNotFoundError, ProcessLookupError):
        return None


def parse_wrk(out):
    """Requests, non-2xx/3xx responses and socket errors from wrk's summary."""
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        non2xx = int(m.group(1))
    sock = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        sock = dict(zip(sock, (int(x) for x in m.groups())))
    return {"requests": total, "non2xx": non2xx, "socket": sock}


def mib(b):
    return b / (1 << 20)


def slope_per_hour(points):
    """Least-squares slope of (seconds, bytes) points, in MiB per hour."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 3600 / (1 << 20)


def verdict(samples, warmup):
    """Compares the minute after warm-up with the last minute; returns (flat, text)."""
    after = [(t, r) for t, r, *_ in samples if t >= warmup]
    if len(after) < 4:
        return True, "too short to judge"
    base = statistics.median(r for t, r in after if t < warmup + 60)
    end_t = after[-1][0]
    last = statistics.median(r for t, r in after if t >= end_t - 60)
    growth = last - base
    slope = slope_per_hour(after)
    flat = growth < max(0.05 * base, 4 << 20)
    word = "FLAT" if flat else "GROWING"
    return flat, (f"{word}: RSS median {mib(base):.1f} MiB in the minute after warm-up, {mib(last):.1f} MiB in the "
                  f"last minute ({'+' if growth >= 0 else ''}{mib(growth):.1f} MiB, "
                  f"{100 * growth / base:+.1f} %); slope {slope:+.1f} MiB/hour")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=5, help="seconds between samples")
    ap.add_argument("--fnlb", default=os.path.join(RELEASE, "fnlb"))
    ap.add_argument("--fnsim", default=os.path.join(RELEASE, "fnsim"))
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--functions", type=int, default=500, help="hot-set size")
    ap.add_argument("--get-conns", type=int, default=16)
    ap.add_argument("--post-conns", type=int, default=4)
    ap.add_argument("--delay-ms", type=int, default=5, help="pause per connection between requests")
    ap.add_argument("--churn-every", type=float, default=20, help="seconds between node outages (0: none)")
    ap.add_argument("--down-ms", type=int, default=3000)
    ap.add_argument("--warmup", type=float, default=300,
                    help="seconds before the memory baseline (fnlb's stats history fills for its first 5 minutes)")
    ap.add_argument("--fnlb-arg", action="append", default=[], help="extra fnlb flag (repeat)")
    ap.add_argument("--json", help="write the samples and the result here")
    a = ap.parse_args()

    fnlb, fnsim = check_bin(a.fnlb, "fnlb"), check_bin(a.fnsim, "fnsim")
    ensure_wrk()
    seconds = int(a.minutes * 60)
    work = tempfile.mkdtemp(prefix="fnlb-soak-")
    script = os.path.join(work, "load.lua")
    with open(script, "w") as f:
        f.write(LOAD_LUA)
    procs = Procs()
    wrks = {}
    try:
        nodes = start_fnsim(procs, fnsim, work, a.nodes, ["--exec-ms", "2", "--cold-ms", "5"])
        lb, base = start_fnlb(procs, fnlb, work, nodes, a.fnlb_arg)
        wait_online(base, nodes)
        log(f"soak: fnlb pid {lb.pid} at {base}, nodes {', '.join(nodes)}, {a.minutes:g} min, logs in {work}")
        rate = (a.get_conns + a.post_conns) * 1000 / max(a.delay_ms, 1)
        log(f"load: {a.get_conns} GET + {a.post_conns} POST connections, {a.delay_ms} ms pause each "
            f"(at most ~{rate:.0f} req/s); churn: one node down {a.down_ms} ms every {a.churn_every:g} s")

        for method, conns in (("GET", a.get_conns), ("POST", a.post_conns)):
            env = dict(os.environ, SOAK_METHOD=method, SOAK_FUNCTIONS=str(a.functions), SOAK_DELAY_MS=str(a.delay_ms))
            wrks[method] = subprocess.Popen(
                ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script, base],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        outs = {}
        readers = [threading.Thread(target=lambda m=m, p=p: outs.__setitem__(m, p.communicate()[0]))
                   for m, p in wrks.items()]
        for r in readers:
            r.start()

        outages = []
        stop = threading.Event()

        def churn():
            k = 0
            while not stop.wait(a.churn_every):
                i = k % a.nodes
                via = nodes[(i + 1) % a.nodes]
                try:
                    urllib.request.urlopen(urllib.request.Request(
                        f"http://{via}/fnsim/down?node={i}&for_ms={a.down_ms}", method="POST"), timeout=5).read()
                    outages.append((time.time(), i))
                except Exception as e:
                    log(f"churn: could not take node {i} down: {e}")
                k += 1

        churner = threading.Thread(target=churn, daemon=True)
        if a.churn_every > 0:
            churner.start()

        t0 = time.time()
        samples = []
        log(f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'outages':>7}")
        exited = None
        while time.time() - t0 < seconds and all(p.poll() is None for p in wrks.values()):
            s = sample(lb.pid)
            if s is None or lb.poll() is not None:
                exited = lb.wait()
                log(f"fnlb exited with code {exited}: see {work}/fnlb.log")
                break
            t = time.time() - t0
            samples.append((round(t, 1), *s, len(outages)))
            log(f"{t:7.0f} {mib(s[0]):8.1f} {s[1]:5d} {s[2]:7d} {len(outages):7d}")
            time.sleep(max(0.0, a.interval - (time.time() - t0 - t)))
        stop.set()
        for r in readers:
            r.join(timeout=30)
        final = sample(lb.pid)

        loads = {m: parse_wrk(outs.get(m, "")) if "requests in" in outs.get(m, "") else None for m in wrks}
        log("")
        log("RSS over time (one row a minute):")
        log(f"{'minute':>6} {'RSS MiB':>8} {'fds':>5} {'threads':>7}")
        next_t = 0
        for t, rss, fds, threads, _ in samples:
            if t >= next_t:
                log(f"{t / 60:6.1f} {mib(rss):8.1f} {fds:5d} {threads:7d}")
                next_t += 60
        if final:
            log(f"{'end':>6} {mib(final[0]):8.1f} {final[1]:5d} {final[2]:7d}")
        flat, text = verdict([(t, r) for t, r, *_ in samples], min(a.warmup, seconds / 2))
        fds = [f for _, _, f, _, _ in samples]
        log("")
        for m, l in loads.items():
            if l is None:
                log(f"{m}: wrk gave no summary: {outs.get(m, '')[-500:]}")
                continue
            log(f"{m}: {l['requests']} requests, {l['non2xx']} non-2xx, socket errors {l['socket']}")
        log(f"outages: {len(outages)} (one node down {a.down_ms} ms each)")
        log(f"open fds: min {min(fds)}, max {max(fds)}, last {fds[-1]}" if fds else "no samples")
        log("memory: " + text)
        get = loads.get("GET")
        get_failed = get is None or get["non2xx"] > 0 or sum(get["socket"].values()) > 0
        log("GETs: " + ("FAILURES" if get_failed else "none failed"))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"samples": samples, "load": loads, "outages": len(outages), "verdict": text,
                           "flat": flat, "args": vars(a)}, f, indent=1)
        if exited is not None:
            log(f"INVALID RUN: fnlb exited (code {exited}) before the end")
            return 1
        return 0 if flat and not get_failed else 1
    finally:
        for p in wrks.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
