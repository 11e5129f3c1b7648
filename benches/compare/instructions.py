#!/usr/bin/env python3
"""Instructions http-lb runs per request, counted by callgrind: a measure that does not move.

Started by benches/compare/run.sh --instructions, which installs valgrind and h2load and builds
http-lb first:

    benches/compare/run.sh --instructions                       # HTTP/2 GETs, the own hop
    benches/compare/run.sh --instructions --workload h1          # HTTP/1.1 keep-alive GETs
    benches/compare/run.sh --instructions --http-lb-b OLD_BINARY # A/B: the functions that moved

CPU time per request on a shared virtual machine moves by a fifth between runs of the same
binary (chapter 17 saw HAProxy at 16.9 and 24.0 µs a request on one day), which hides a change
worth 5 %. The number of instructions a request takes in user space does not move: callgrind
counts them one by one, in every function, and this script divides by the requests. It counts
user space only (the kernel's TCP work is the same for any proxy: compare that with
`run.sh --syscalls`), and instructions are not time (a cache miss costs more than an add), so
the time comparisons stay with h2.py and http.py; this is for finding where the instructions
go and whether a change removed any.

http-lb runs under valgrind with one worker, in front of two dummy servers; h2load warms it up
(the pool's connections, the first allocations), then the count is zeroed, N requests run
(h2load -c 50 -m 10, as h2.py's, or --h1 -c 50 for HTTP/1.1), and the count is dumped. It
prints the instructions per request and the functions that ran the most of them (self: in the
function's own code; with --http-lb-b, the functions whose count changed most between the
two builds). Everything listens on 127.0.0.1; every process started is stopped by PID.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Procs, free_port, log, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def self_costs(path):
    """Instructions in each function's own code, from a callgrind output file.

    The format (valgrind's callgrind format specification): `fn=(id) name` starts a
    function's records, `cfn=` names the function a following `calls=` line calls, and the
    cost line after `calls=` is that call's inclusive cost, which is not the caller's own.
    Every other cost line is `position cost`, the function's own."""
    names, costs = {}, collections.Counter()
    fn, after_call = None, False
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if m:
                kind, idx, name = m.groups()
                if name:
                    names[idx] = name
                if kind == "fn":
                    fn = idx
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    if not after_call:
                        costs[fn] += int(parts[1])
                    after_call = False
    return {names.get(k, k): v for k, v in costs.items()}


class Run:
    def __init__(self, opts, work):
        self.opts = opts
        self.work = work
        self.procs = Procs()

    def load(self, port, requests):
        url = f"http://127.0.0.1:{port}/"
        cmd = ["h2load", "-c", "50", "-t", "1", "-n", str(requests)]
        cmd += ["--h1"] if self.opts.workload == "h1" else ["-m", "10"]
        out = subprocess.run(cmd + [url], capture_output=True, text=True,
                             timeout=600).stdout
        done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
        if not done or int(done.group(1)) != requests:
            raise RuntimeError(f"h2load did not finish cleanly: {out[-400:]}")

    def count(self, binary, label):
        """Self instructions per function, per request, for one build."""
        backends = [free_port(), free_port()]
        cmd = [self.opts.dummy]
        for p in backends:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        dummy = self.procs.start(cmd, env={"RUST_LOG": "warn"})
        for p in backends:
            wait_port(p, dummy, "dummy-server")
        port = free_port()
        out = os.path.join(self.work, f"callgrind.{label}")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
               "--listen", f"127.0.0.1:{port}", "--health-interval", "0", "--workers", "1",
               "--affinity", "none", "--header-timeout", "120"]
        if self.opts.workload == "h2":
            cmd.append("--h2c")
        for b in backends:
            cmd += ["--backend", f"127.0.0.1:{b}"]
        log_file = open(os.path.join(self.work, f"valgrind.{label}.log"), "w")
        lb = self.procs.start(cmd, env={"RUST_LOG": "warn"}, stderr=log_file)
        # Under valgrind the start takes seconds.
        wait_port(port, lb, "http-lb under valgrind", patience=120)
        try:
            self.load(port, 5000)
            subprocess.run(["callgrind_control", "-z", str(lb.pid)], check=True,
                           capture_output=True, timeout=60)
            self.load(port, self.opts.requests)
            subprocess.run(["callgrind_control", "-d", str(lb.pid)], check=True,
                           capture_output=True, timeout=60)
        finally:
            self.procs.stop(lb)
            self.procs.stop(dummy)
        dumps = sorted(f for f in os.listdir(self.work) if f.startswith(f"callgrind.{label}."))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        if self.opts.save:
            os.makedirs(self.opts.save, exist_ok=True)
            shutil.copy(os.path.join(self.work, dumps[0]),
                        os.path.join(self.opts.save, f"callgrind.{label}"))
        costs = self_costs(os.path.join(self.work, dumps[0]))
        return {k: v / self.opts.requests for k, v in costs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=["h2", "h1"], default="h2",
                    help="h2: HTTP/2 GETs by prior knowledge (h2load -m 10); h1: HTTP/1.1 "
                    "keep-alive GETs (h2load --h1)")
    ap.add_argument("--requests", type=int, default=20000, help="requests counted")
    ap.add_argument("--top", type=int, default=30, help="functions listed")
    ap.add_argument("--http-lb", default=os.path.join(CARGO_TARGET, "release/http-lb"))
    ap.add_argument("--http-lb-b", help="a second build, counted the same way: an A/B test")
    ap.add_argument("--dummy", default=os.path.join(CARGO_TARGET, "release/dummy-server"))
    ap.add_argument("--save", metavar="DIR",
                    help="keep the callgrind dumps in DIR (callgrind.a, callgrind.b), for "
                    "callgrind_annotate --inclusive=yes or kcachegrind")
    opts = ap.parse_args()
    for tool in ["valgrind", "callgrind_control", "h2load"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: benches/compare/run.sh --instructions installs it")
    work = tempfile.mkdtemp(prefix="lb-instructions-")
    run = Run(opts, work)
    try:
        a = run.count(opts.http_lb, "a")
        b = run.count(opts.http_lb_b, "b") if opts.http_lb_b else None
    finally:
        run.procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    what = "HTTP/2 GET, own hop" if opts.workload == "h2" else "HTTP/1.1 keep-alive GET"
    print(f"{time.strftime('%Y-%m-%d')}, callgrind, {opts.requests:,} requests ({what}): "
          "instructions a request in user space")
    print()
    if b is None:
        total = sum(a.values())
        print(f"total: {total:,.0f}")
        print()
        print("| self | share | function |")
        print("|---:|---:|---|")
        for name, v in sorted(a.items(), key=lambda kv: -kv[1])[:opts.top]:
            print(f"| {v:,.0f} | {100 * v / total:.1f} % | `{name[:100]}` |")
        return
    ta, tb = sum(a.values()), sum(b.values())
    print(f"total: a {ta:,.0f}, b {tb:,.0f} ({100 * (tb - ta) / ta:+.1f} %)")
    print()
    print("| a | b | b - a | function |")
    print("|---:|---:|---:|---|")
    moved = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))
    for name in moved[:opts.top]:
        va, vb = a.get(name, 0), b.get(name, 0)
        print(f"| {va:,.0f} | {vb:,.0f} | {vb - va:+,.0f} | `{name[:100]}` |")


if __name__ == "__main__":
    log("counting instructions under callgrind (http-lb runs about 50x slower there)")
    main()
