#!/usr/bin/env python3
"""The system-call budget of each proxy (issue 19, chapter 11; issue 31): which calls, and how
many, `tcp-lb`, HAProxy and nginx make per keep-alive request and per new connection; with
`--http`, `http-lb` beside HAProxy `mode http` and nginx `proxy_pass` (the configs of http.py:
pooled backend connections, X-Forwarded-For, an affinity cookie for HAProxy and http-lb);
with `--tls`, the three layer-4 proxies terminating TLS 1.3 as compare.py's `tls-*` workloads
do (ECDSA P-256, wrk resuming its session): per TLS keep-alive request and per handshake.

Started by benches/compare/run.sh --syscalls (installs the peers, builds tcp-lb). Each proxy
has one worker on CPU 1, in front of the same two dummy-server backends; wrk on CPU 0 sends
`--seconds` of load, with 50 kept-alive connections, then with `Connection: close`. `perf
record -e raw_syscalls:sys_enter` counts the proxy's calls by number (strace cannot attach in
every container; perf's tracepoint can), divided by the requests wrk completed.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (Procs, family, free_port, haproxy_config, log,  # noqa: E402
                     nginx_config, wait_port)
import http as http_configs  # noqa: E402  (benches/compare/http.py, not the standard library's)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
# x86_64 numbers of the calls a proxy makes.
NAMES = {0: "read", 1: "write", 3: "close", 7: "poll", 19: "readv", 20: "writev", 41: "socket",
         42: "connect", 43: "accept", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
         47: "recvmsg", 48: "shutdown", 49: "bind", 54: "setsockopt", 55: "getsockopt",
         51: "getsockname", 52: "getpeername", 72: "fcntl", 202: "futex", 228: "clock_gettime",
         232: "epoll_wait", 233: "epoll_ctl", 257: "openat", 275: "splice", 281: "epoll_pwait",
         288: "accept4", 293: "pipe2", 291: "epoll_create1", 441: "epoll_pwait2"}


def count(pids, seconds, load):
    """Runs `load` while recording the system calls of `pids`; ({name: count}, requests)."""
    out = tempfile.mktemp(suffix=".perf")
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "raw_syscalls:sys_enter", "-o", out,
                             "-p", ",".join(str(p) for p in pids), "--", "sleep",
                             str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    requests = load()
    perf.wait()
    script = subprocess.run(["perf", "script", "-i", out, "-F", "trace"],
                            capture_output=True, text=True).stdout
    os.unlink(out)
    calls = collections.Counter()
    for line in script.splitlines():
        m = re.search(r"NR (\d+)", line)
        if m:
            calls[NAMES.get(int(m.group(1)), f"#{m.group(1)}")] += 1
    return calls, requests


def wrk(port, seconds, close, scheme):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{seconds}s",
           f"{scheme}://127.0.0.1:{port}/"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--http", action="store_true", help="layer 7: http-lb, HAProxy mode http, "
                   "nginx proxy_pass")
    p.add_argument("--tls", action="store_true", help="layer 4 with TLS terminated by each "
                   "proxy: per TLS keep-alive request and per handshake")
    args = p.parse_args()
    if args.http and args.tls:
        p.error("--tls measures layer 4; it does not combine with --http")
    ours = "http-lb" if args.http else "tcp-lb"
    scheme = "https" if args.tls else "http"
    targets = ["haproxy", "nginx", ours]
    procs = Procs()
    tables = {}
    with tempfile.TemporaryDirectory(prefix="syscalls-") as work:
        cert, key, combined = (os.path.join(work, n) for n in
                               ("localhost.pem", "localhost-key.pem", "combined.pem"))
        if args.tls:
            subprocess.run([os.path.join(CARGO_TARGET, "release", "certs"), "--out", work,
                            "--force"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            with open(combined, "w") as f:
                for part in (cert, key):
                    with open(part) as src:
                        f.write(src.read())
        try:
            backends = [free_port(), free_port()]
            dummy = [os.path.join(CARGO_TARGET, "release", "dummy-server")]
            for b in backends:
                dummy += ["--listen", f"127.0.0.1:{b}"]
            d = procs.start(dummy, cpu=0, env={"RUST_LOG": "warn"})
            for b in backends:
                wait_port(b, d, "dummy-server")
            for target in targets:
                port = free_port()
                if target == "haproxy":
                    cfg = os.path.join(work, "haproxy.cfg")
                    with open(cfg, "w") as f:
                        f.write(http_configs.haproxy_config(port, backends, 1) if args.http
                                else haproxy_config(port, backends, "roundrobin", 1,
                                                 combined if args.tls else None))
                    proc = procs.start(["haproxy", "-f", cfg, "-db"], cpu=1)
                elif target == "nginx":
                    prefix = os.path.join(work, "nginx")
                    os.makedirs(prefix)
                    cfg = os.path.join(work, "nginx.conf")
                    with open(cfg, "w") as f:
                        f.write(http_configs.nginx_config(port, backends, 1, prefix) if args.http
                                else nginx_config(port, backends, "roundrobin", 1,
                                                  cert if args.tls else None, key, prefix))
                    proc = procs.start(["nginx", "-c", cfg, "-p", prefix, "-e",
                                        os.path.join(prefix, "error.log")], cpu=1)
                else:
                    cmd = [os.path.join(CARGO_TARGET, "release", ours), "--listen",
                           f"127.0.0.1:{port}", "--workers", "1", "--health-interval", "0"]
                    for b in backends:
                        cmd += ["--backend", f"127.0.0.1:{b}"]
                    if args.tls:
                        cmd += ["--cert", cert, "--key", key]
                    proc = procs.start(cmd, cpu=1, env={"RUST_LOG": "warn"})
                wait_port(port, proc, target)
                time.sleep(0.5)
                pids = family(proc.pid)
                for close in (False, True):
                    calls, n = count(pids, args.seconds, lambda: wrk(port, args.seconds, close, scheme))
                    tables[(target, close)] = (calls, n)
                    log(f"{target} {'close' if close else 'keep-alive'}: {n} requests, "
                        f"{sum(calls.values()) / n:.2f} calls each")
                procs.stop(proc)
        finally:
            procs.stop_all()
    for close in (False, True):
        what = ("TLS handshake" if args.tls else "new connection") if close else \
            ("TLS keep-alive request" if args.tls else "keep-alive request")
        print(f"\n### System calls per {what}\n")
        names = sorted({c for (t, cl), (calls, _) in tables.items() if cl == close for c in calls},
                       key=lambda c: -max(tables[(t, close)][0][c] / tables[(t, close)][1]
                                           for t in targets))
        print(f"| call | HAProxy | nginx | {ours} |")
        print("|---|---|---|---|")
        for name in names:
            cells = []
            for t in targets:
                calls, n = tables[(t, close)]
                cells.append(f"{calls[name] / n:.2f}" if calls[name] else "–")
            if any(c != "–" and float(c) >= 0.01 for c in cells):
                print(f"| `{name}` | " + " | ".join(cells) + " |")
        totals = [sum(tables[(t, close)][0].values()) / tables[(t, close)][1]
                  for t in targets]
        print("| **all** | " + " | ".join(f"**{x:.2f}**" for x in totals) + " |")


if __name__ == "__main__":
    main()
