#!/usr/bin/env python3
"""Memory under 1,000,000 distinct paths: does per-path state in fnlb stay bounded?

Starts fnsim (--mode fast: no per-function model, so the nodes stay small too) and fnlb in front
of it, warms up on a few paths, then sends --requests requests through fnlb, every one to a path
never used before (wrk with a Lua script; each wrk thread numbers its own paths and stops at its
share). fnlb's RSS is sampled every --interval seconds. With --rounds 2 a second million follows
the first: memory that only fills a bounded cache levels off, memory that grows with the number
of paths keeps rising. At the end it reads /1/lb/stats once (the stats recorder drains on read)
and samples again after a pause.

    bench/paths.py                                  # 1M paths, default policy
    bench/paths.py --rounds 2 --policy fnlb-classic
    bench/paths.py --rounds 2 --cycle 500         # control: the same 1,000 paths over and over
    bench/paths.py --fnlb /work/wt-rel/target/release/fnlb --fnsim /work/wt-rel/target/release/fnsim

Binaries default to this repository's target/release. All traffic stays on 127.0.0.1.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import RELEASE, Procs, check_bin, ensure_wrk, log, mib, parse_wrk, sample, start_fnlb, start_fnsim, \
    wait_online  # noqa: E402

# Each thread sends to /r/paths/<round>/<thread>/<n>, n = 1, 2, ... and stops at its quota,
# leaving a marker file so the driver can end wrk at once.
PATHS_LUA = r"""
local quota = tonumber(os.getenv("PATHS_QUOTA"))
local round = os.getenv("PATHS_ROUND") or "0"
local marks = os.getenv("PATHS_MARKS")
local cycle = tonumber(os.getenv("PATHS_CYCLE") or "0")
local sent, answered, bad = 0, 0, 0

function setup(thread)
  tid = (tid or 0) + 1
  thread:set("tid", tid)
end

function request()
  sent = sent + 1
  local n = sent
  if cycle > 0 then n = sent % cycle end
  return wrk.format("GET", "/r/paths/" .. round .. "/" .. tid .. "/" .. n)
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then bad = bad + 1 end
  if answered == quota then
    local f = io.open(marks .. "/done-" .. tid, "w")
    f:write(tostring(bad))
    f:close()
    wrk.thread:stop()
  end
end
"""


# Load generators still running, stopped (by pid) however the run ends.
WRKS = []


def run_round(base, pid, work, script, rnd, requests, threads, conns, interval, samples, t0, cycle):
    marks = os.path.join(work, f"marks-{rnd}")
    os.makedirs(marks, exist_ok=True)
    quota = requests // threads
    env = dict(os.environ, PATHS_QUOTA=str(quota), PATHS_ROUND=str(rnd), PATHS_MARKS=marks, PATHS_CYCLE=str(cycle))
    wrk = subprocess.Popen(["wrk", f"-t{threads}", f"-c{conns}", "-d3600s", "--timeout", "10s", "-s", script, base],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)
    WRKS.append(wrk)
    out = {}
    reader = threading.Thread(target=lambda: out.__setitem__("text", wrk.communicate()[0]))
    reader.start()
    start = time.time()
    while True:
        s = sample(pid)
        if s is None:
            wrk.send_signal(signal.SIGINT)
            sys.exit(f"fnlb (pid {pid}) exited during round {rnd}: see {work}/fnlb.log")
        t = time.time() - t0
        samples.append((round(t, 1), f"round {rnd}", *s))
        log(f"{t:7.0f} {'round ' + str(rnd):>9} {mib(s[0]):8.1f} {s[1]:5d} {s[2]:7d}")
        if len(os.listdir(marks)) >= threads or wrk.poll() is not None:
            break
        time.sleep(interval)
    wrk.send_signal(signal.SIGINT)  # wrk prints its summary and exits
    reader.join(timeout=30)
    # The last thread's marker says when the round's last answer came (samples are coarser).
    done = [os.path.getmtime(os.path.join(marks, f)) for f in os.listdir(marks)]
    elapsed = (max(done) if len(done) >= threads else time.time()) - start
    bad = sum(int(open(os.path.join(marks, f)).read() or 0) for f in os.listdir(marks))
    load = parse_wrk(out.get("text", "")) if "requests in" in out.get("text", "") else None
    return load, bad, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000, help="distinct paths per round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cycle", type=int, default=0,
                    help="control run: each thread cycles over this many paths instead of new ones (0: all distinct)")
    ap.add_argument("--policy", help="fnlb -policy (default: fnlb's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--interval", type=float, default=2)
    ap.add_argument("--fnlb", default=os.path.join(RELEASE, "fnlb"))
    ap.add_argument("--fnsim", default=os.path.join(RELEASE, "fnsim"))
    ap.add_argument("--fnlb-arg", action="append", default=[], help="extra fnlb flag (repeat)")
    ap.add_argument("--json", help="write the samples and the result here")
    a = ap.parse_args()

    fnlb, fnsim = check_bin(a.fnlb, "fnlb"), check_bin(a.fnsim, "fnsim")
    ensure_wrk()
    work = tempfile.mkdtemp(prefix="fnlb-paths-")
    script = os.path.join(work, "paths.lua")
    with open(script, "w") as f:
        f.write(PATHS_LUA)
    procs = Procs()
    try:
        nodes = start_fnsim(procs, fnsim, work, 3, ["--mode", "fast"])
        extra = list(a.fnlb_arg) + (["-policy", a.policy] if a.policy else [])
        lb, base = start_fnlb(procs, fnlb, work, nodes, extra)
        wait_online(base, nodes)
        what = f"requests over {a.cycle * a.threads} paths (control)" if a.cycle else "distinct paths"
        log(f"paths: fnlb pid {lb.pid} at {base} (policy {a.policy or 'default'}), {a.rounds} x {a.requests} "
            f"{what}, wrk -t{a.threads} -c{a.conns}; logs in {work}")
        # Warm-up: a few thousand calls on a few paths, so the baseline has pools and buffers.
        warm = subprocess.run(["wrk", "-t1", "-c16", "-d3s", base + "/r/warm/fn"], capture_output=True, text=True)
        log("warm-up: " + (re.search(r"\d+ requests in [^,]+", warm.stdout) or [warm.stdout[-200:]])[0])
        time.sleep(1)
        t0 = time.time()
        before = sample(lb.pid)
        samples = [(0.0, "before", *before)]
        log(f"{'t (s)':>7} {'phase':>9} {'RSS MiB':>8} {'fds':>5} {'threads':>7}")
        log(f"{0:7.0f} {'before':>9} {mib(before[0]):8.1f} {before[1]:5d} {before[2]:7d}")
        results = []
        for rnd in range(1, a.rounds + 1):
            load, bad, elapsed = run_round(base, lb.pid, work, script, rnd, a.requests, a.threads, a.conns,
                                           a.interval, samples, t0, a.cycle)
            after = sample(lb.pid)
            samples.append((round(time.time() - t0, 1), f"after {rnd}", *after))
            results.append({"round": rnd, "load": load, "non200": bad, "seconds": round(elapsed, 1),
                            "rss_after": after[0]})
            n = load["requests"] if load else 0
            log(f"round {rnd}: {n} requests in {elapsed:.0f} s ({n / max(elapsed, 1e-9):.0f}/s), {bad} non-200, "
                f"RSS after {mib(after[0]):.1f} MiB")
        time.sleep(5)
        idle = sample(lb.pid)
        samples.append((round(time.time() - t0, 1), "idle 5s", *idle))
        stats = urllib.request.urlopen(base + "/1/lb/stats", timeout=30).read()
        n_stats = len(json.loads(stats).get("stats", []))
        time.sleep(2)
        drained = sample(lb.pid)
        samples.append((round(time.time() - t0, 1), "stats read", *drained))
        peak = max(s[2] for s in samples)
        log("")
        log(f"RSS before {mib(before[0]):.1f} MiB; peak {mib(peak):.1f} MiB; "
            + "; ".join(f"after round {r['round']} {mib(r['rss_after']):.1f} MiB" for r in results)
            + f"; idle {mib(idle[0]):.1f} MiB; after reading /1/lb/stats ({n_stats} entries, {len(stats)} bytes) "
            f"{mib(drained[0]):.1f} MiB")
        growth = results[-1]["rss_after"] - before[0]
        total = sum((r["load"] or {}).get("requests", 0) for r in results)
        log(f"growth over {total} {'requests' if a.cycle else 'distinct paths'}: {mib(growth):+.1f} MiB "
            f"({growth / max(total, 1):.1f} bytes per path)")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"samples": samples, "rounds": results, "stats_entries": n_stats,
                           "stats_bytes": len(stats), "args": vars(a)}, f, indent=1)
        return 0
    finally:
        for w in WRKS:
            if w.poll() is None:
                w.send_signal(signal.SIGINT)
                try:
                    w.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    w.kill()
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
