#!/usr/bin/env python3
"""http-lb beside HAProxy (`mode http`) and nginx (`proxy_pass`): one machine, one run.

Started by benches/compare/run.sh --http, which installs the tools and builds http-lb first:

    benches/compare/run.sh --http                     # pinned, then unpinned
    benches/compare/run.sh --http --mode pinned --rounds 5 --seconds 8

Each target balances round robin over the same two dummy-server backends, with keep-alive
connections to them (nginx `upstream { keepalive 64; }` with HTTP/1.1 and `Connection: ""`,
HAProxy's default `http-reuse safe`, http-lb's pool), adds X-Forwarded-For, and streams bodies
(nginx `proxy_request_buffering off; proxy_buffering off;`: it would otherwise spool a large
upload to disk before sending any of it). http-lb and HAProxy insert an affinity cookie
(`cookie lb insert indirect nocache`); open-source nginx has no cookie affinity. wrk sends no
cookie back in `keepalive` and `close`, so there every request is a new user and the cookie is
set on every response; `cookie` is the returning user.

Workloads:
  keepalive   wrk, 50 keep-alive connections: requests/s, proxy CPU per request, p99 latency.
  cookie      keep-alive as above, each request carrying the affinity cookie the proxy set on
              a first answer (a returning browser): HAProxy and http-lb route by it and set
              none, http-lb checking its HMAC; nginx and direct get HAProxy's form of it
              (`lb=s0`), which they pass on.
  close       wrk with `Connection: close`: one new client connection per request (the
              backend connections stay pooled).
  upload      one 1 GiB POST streamed through to the backend's /sink (which reads it and
              answers how much arrived): throughput, and the proxy's peak resident memory above
              its size at the start.
  download    one 1 GiB GET of /bytes/N: throughput and peak memory likewise.
  idle        resident memory per idle keep-alive client connection: --idle connections
              (2,000 by default) each make one request and stay open; the proxy's memory
              after them, less before them, divided by their number.

With `--http-lb-b BIN`, target *http-lb-b* is a second build run with http-lb's flags, for an
A/B test of one change in the same interleaved rounds. With `--page-open`, *http-lb-b* also
has an admin listener whose `/metrics` is fetched every second while it is measured, as the
status page does when it is open (chapter 10): `--http-lb-b` may then be http-lb itself.

Pinned mode: each proxy has one worker on CPU 1, everything else on CPU 0. Unpinned: two
workers each. Rounds interleave the targets; the table shows medians. Everything listens on
127.0.0.1; every process started is stopped by PID at the end.
"""
import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (Procs, cpu_seconds, cpu_split, family, free_port, log,  # noqa: E402
                     wait_port)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where cargo puts the binaries: CARGO_TARGET_DIR when set, as cargo itself reads it.
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
TARGETS = ["direct", "haproxy", "nginx", "http-lb", "http-lb-b"]
WORKLOADS = ["keepalive", "cookie", "close", "upload", "download", "idle"]
# The workloads wrk measures, in interleaved rounds.
WRK = ("keepalive", "cookie", "close")
GIB = 1 << 30


def haproxy_config(listen, backends, workers):
    servers = "\n".join(f"  server s{i} 127.0.0.1:{p} cookie s{i}" for i, p in enumerate(backends))
    return f"""global
  nbthread {workers}
  maxconn 9800
defaults
  mode http
  option http-keep-alive
  option forwardfor
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
frontend f
  bind 127.0.0.1:{listen}
  default_backend b
backend b
  balance roundrobin
  cookie lb insert indirect nocache
{servers}
"""


def nginx_config(listen, backends, workers, prefix):
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    return f"""daemon off;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 19800; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  upstream b {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{listen};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


def rss_now_kib(pid):
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Bench:
    def __init__(self, opts, work):
        self.opts = opts
        self.work = work
        self.procs = Procs()
        self.pinned = opts.mode == "pinned"
        self.workers = 1 if self.pinned else 2
        self.load_cpu = 0 if self.pinned else None
        self.proxy_cpu = 1 if self.pinned else None

    def start_backends(self):
        self.http = [free_port(), free_port()]
        cmd = [self.opts.dummy]
        for p in self.http:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        d = self.procs.start(cmd, cpu=self.load_cpu, env={"RUST_LOG": "warn"})
        for p in self.http:
            wait_port(p, d, "dummy-server")

    def start_proxy(self, target):
        if target == "direct":
            return self.http[0], None
        port = free_port()
        name = f"{target}-{port}"
        logfile = open(os.path.join(self.work, name + ".log"), "w")
        if target == "haproxy":
            cfg = os.path.join(self.work, name + ".cfg")
            with open(cfg, "w") as f:
                f.write(haproxy_config(port, self.http, self.workers))
            p = self.procs.start(["haproxy", "-f", cfg, "-db"], cpu=self.proxy_cpu, stderr=logfile)
        elif target == "nginx":
            prefix = os.path.join(self.work, name)
            os.makedirs(prefix, exist_ok=True)
            cfg = os.path.join(self.work, name + ".conf")
            with open(cfg, "w") as f:
                f.write(nginx_config(port, self.http, self.workers, prefix))
            p = self.procs.start(["nginx", "-c", cfg, "-p", prefix, "-e",
                                  os.path.join(prefix, "nginx-error.log")],
                                 cpu=self.proxy_cpu, stderr=logfile)
        else:
            binary = self.opts.http_lb_b if target == "http-lb-b" else self.opts.http_lb
            cmd = [binary, "--listen", f"127.0.0.1:{port}", "--health-interval", "0",
                   "--workers", str(self.workers)]
            for b in self.http:
                cmd += ["--backend", f"127.0.0.1:{b}"]
            if target == "http-lb-b" and self.opts.page_open:
                self.admin = free_port()
                cmd += ["--admin", f"127.0.0.1:{self.admin}"]
            # Access log off, as for the others (nginx `access_log off`, HAProxy logs nothing
            # without a log target).
            p = self.procs.start(cmd, cpu=self.proxy_cpu, env={"RUST_LOG": self.opts.rust_log},
                                 stderr=logfile)
        wait_port(port, p, target)
        if target == "nginx":
            deadline = time.monotonic() + 10
            while len(family(p.pid)) < 1 + self.workers and time.monotonic() < deadline:
                time.sleep(0.02)
        return port, p

    def page(self, stop):
        """The status page's feed: `/metrics` of the admin listener, every second."""
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.admin), timeout=5) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nhost: page\r\nconnection: close\r\n\r\n")
                    while s.recv(65536):
                        pass
            except OSError:
                pass
            stop.wait(1.0)

    def cookie(self, port):
        """The affinity cookie a first answer from `port` sets (`name=value`), or HAProxy's
        form of one where the proxy sets none (nginx, direct), so that every target reads a
        `Cookie` field of about the same size."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: cookie\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head = data.partition(b"\r\n\r\n")[0]
        found = re.search(rb"(?im)^set-cookie:\s*([^;\r\n]+)", head)
        return found.group(1).decode() if found else "lb=s0"

    def wrk(self, port, close, cookie=None):
        threads = 1 if self.pinned else 2
        cmd = ["wrk", f"-t{threads}", "-c50", f"-d{self.opts.seconds}s", "--latency",
               f"http://127.0.0.1:{port}/"]
        if close:
            cmd += ["-H", "Connection: close"]
        if cookie:
            cmd += ["-H", f"Cookie: {cookie}"]
        if self.load_cpu is not None:
            cmd = ["taskset", "-c", str(self.load_cpu)] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=self.opts.seconds + 30).stdout
        m = re.search(r"(\d+) requests in", out)
        rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
        p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m or not rps or not p99:
            raise RuntimeError(f"wrk failed: {out[-400:]}")
        if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
            raise RuntimeError(f"wrk saw failed answers: {out[-400:]}")
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
        return float(rps.group(1)), int(m.group(1)), float(p99.group(1)) * scale

    def transfer(self, port, pid, upload):
        """One 1 GiB transfer with curl; (MiB/s, peak KiB above the RSS at the start)."""
        size = self.opts.gib * GIB
        base = rss_now_kib(pid) if pid else 0
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_now_kib(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True) if pid else None
        if sampler:
            sampler.start()
        url = f"http://127.0.0.1:{port}/"
        if upload:
            # Streamed from /dev/zero with chunked encoding: curl holds none of it either.
            cmd = (f"head -c {size} /dev/zero | curl -sS -H 'Expect:' -T - -X POST {url}sink")
        else:
            cmd = f"curl -sS -o /dev/null -w '%{{size_download}}' {url}bytes/{size}"
        if self.load_cpu is not None:
            cmd = f"taskset -c {self.load_cpu} sh -c \"{cmd}\""
        start = time.monotonic()
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=600)
        elapsed = time.monotonic() - start
        done.set()
        if sampler:
            sampler.join()
        # The sink answers how many bytes it received; a download says how many it got.
        got = out.stdout.strip().removeprefix("received: ")
        if out.returncode != 0 or got != str(size):
            raise RuntimeError(f"transfer failed: {out.stdout[-200:]} {out.stderr[-300:]}")
        return size / elapsed / 2**20, peak[0] - base

    def idle(self, port, pid):
        """KiB of the proxy's resident memory per idle kept-alive client connection."""
        socks = []

        def open_clients(count):
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"GET / HTTP/1.1\r\nhost: idle\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("a proxy closed an idle client before answering")
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if not length:
                    raise RuntimeError(f"an answer without content-length: {head[:200]!r}")
                while len(body) < int(length.group(1)):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("an answer cut short")
                    body += chunk
                socks.append(s)

        try:
            open_clients(200)  # warm: first allocations, pools, the backend connections
            base = rss_now_kib(pid)
            open_clients(self.opts.idle)
            return (rss_now_kib(pid) - base) / self.opts.idle
        finally:
            for s in socks:
                s.close()

    def run(self):
        rows = {}
        targets = [t for t in TARGETS if t in self.opts.targets]
        self.start_backends()
        for workload in [w for w in WORKLOADS if w in self.opts.workloads]:
            samples = {t: [] for t in targets}
            started = {t: self.start_proxy(t) for t in targets}
            cookies = {t: self.cookie(port) for t, (port, _) in started.items()} \
                if workload == "cookie" else {}
            for r in range(self.opts.rounds if workload in WRK else 1):
                for target, (port, proc) in started.items():
                    pid = proc.pid if proc else None
                    before = cpu_seconds(pid) if pid else 0.0
                    try:
                        self.measure(workload, target, port, pid, before, samples, r,
                                     cookies.get(target))
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        log(f"  {self.opts.mode} {workload:9} {target:8} FAILED: {e}")
                        samples[target].append(None)
            for _, proc in started.values():
                if proc:
                    self.procs.stop(proc)
            rows[workload] = samples
        self.procs.stop_all()
        return rows

    def measure(self, workload, target, port, pid, before, samples, r, cookie=None):
        """One measurement of `workload` through `target`, appended to its samples."""
        if workload in WRK:
            stop = threading.Event()
            feed = None
            if target == "http-lb-b" and self.opts.page_open:
                feed = threading.Thread(target=self.page, args=(stop,), daemon=True)
                feed.start()
            user_before = cpu_split(pid)[0] if pid else 0.0
            try:
                rps, n, p99 = self.wrk(port, workload == "close", cookie)
            finally:
                stop.set()
                if feed:
                    feed.join()
            cpu = (cpu_seconds(pid) - before) if pid else None
            # User space apart: the kernel's share is the TCP work every proxy does alike.
            user = (cpu_split(pid)[0] - user_before) if pid else None
            samples[target].append((rps, n, cpu, p99, user))
            per = "" if cpu is None else \
                f", {cpu / n * 1e6:.1f} µs CPU/req ({user / n * 1e6:.1f} in user space)"
            log(f"  {self.opts.mode} {workload:9} round {r + 1} {target:8} "
                f"{rps:10.0f} req/s, p99 {p99:.2f} ms{per}")
        elif workload == "idle":
            if pid is None:
                return
            kib = self.idle(port, pid)
            samples[target].append((kib, 1, None, None))
            log(f"  {self.opts.mode} idle      {target:8} {kib:.2f} KiB per connection")
        else:
            mibs, peak = self.transfer(port, pid, workload == "upload")
            cpu = (cpu_seconds(pid) - before) if pid else None
            samples[target].append((mibs, self.opts.gib, cpu, peak))
            log(f"  {self.opts.mode} {workload:9} {target:8} {mibs:8.0f} MiB/s, "
                f"peak +{peak / 1024:.1f} MiB")


def table(mode, rows, targets):
    out = [f"### {mode}", "", "| workload | " + " | ".join(targets) + " |",
           "|---|" + "---|" * len(targets)]
    for workload, samples in rows.items():
        cells = []
        for t in targets:
            s = [x for x in samples.get(t, []) if x is not None]
            if not s:
                cells.append("failed" if samples.get(t) else "—")
                continue
            if workload == "idle":
                cell = f"{statistics.median(x[0] for x in s):.2f} KiB per connection"
            elif workload in WRK:
                rps = statistics.median(x[0] for x in s)
                p99 = statistics.median(x[3] for x in s)
                cell = f"{rps:,.0f} req/s, p99 {p99:.2f} ms"
                cpus = [(c / n, u / n) for _, n, c, _, u in s if c is not None and n]
                if cpus:
                    cell += (f", {statistics.median(c for c, _ in cpus) * 1e6:.1f} µs CPU/req "
                             f"({statistics.median(u for _, u in cpus) * 1e6:.1f} user)")
            else:
                mibs = statistics.median(x[0] for x in s)
                cell = f"{mibs:,.0f} MiB/s"
                if t != "direct":
                    peak = statistics.median(x[3] for x in s)
                    cell += f", peak +{peak / 1024:.1f} MiB"
                    cpus = [c / g for _, g, c, _ in s if c is not None]
                    if cpus:
                        cell += f", {statistics.median(cpus):.2f} s CPU/GiB"
            cells.append(cell)
        out.append(f"| {workload} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["pinned", "unpinned", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--gib", type=int, default=1, help="size of the upload and download")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--idle", type=int, default=2000,
                    help="idle keep-alive client connections for the idle workload")
    ap.add_argument("--targets", default=",".join(t for t in TARGETS if t != "http-lb-b"))
    ap.add_argument("--http-lb-b", help="a second build (or any program taking the same flags), "
                    "measured as target http-lb-b in the same interleaved rounds: an A/B test "
                    "of one change (chapter 12's examples/h1-relay.rs)")
    ap.add_argument("--page-open", action="store_true",
                    help="http-lb-b gets an admin listener whose /metrics is fetched every "
                    "second while it is measured: the cost of an open status page")
    ap.add_argument("--http-lb", default=os.path.join(CARGO_TARGET, "release/http-lb"))
    ap.add_argument("--dummy", default=os.path.join(CARGO_TARGET, "release/dummy-server"))
    ap.add_argument("--rust-log", default="warn", help="RUST_LOG for http-lb")
    ap.add_argument("--out", help="also write the tables (markdown) to this file")
    opts = ap.parse_args()
    # Each idle client is a socket here and one or two in the proxy: raise the soft open-file
    # limit to the hard one (children inherit it).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opts.workloads = opts.workloads.split(",")
    opts.targets = opts.targets.split(",")
    for w in opts.workloads:
        if w not in WORKLOADS:
            sys.exit(f"error: unknown workload {w}; known: {', '.join(WORKLOADS)}")
    for t in opts.targets:
        if t not in TARGETS:
            sys.exit(f"error: unknown target {t}; known: {', '.join(TARGETS)}")
    if "http-lb-b" in opts.targets and not opts.http_lb_b:
        sys.exit("error: target http-lb-b needs --http-lb-b BIN")
    for tool in ["taskset", "wrk", "haproxy", "nginx", "curl"]:
        if not shutil.which(tool):
            sys.exit(f"error: {tool} is not installed (benches/compare/run.sh installs it)")
    work = tempfile.mkdtemp(prefix="http-lb-compare-")
    modes = ["pinned", "unpinned"] if opts.mode == "both" else [opts.mode]
    tables = []
    for mode in modes:
        opts.mode = mode
        os.sched_setaffinity(0, {0} if mode == "pinned" else set(range(os.cpu_count() or 1)))
        bench = Bench(opts, work)
        try:
            rows = bench.run()
        finally:
            bench.procs.stop_all()
        label = "1 worker, proxy on CPU 1" if mode == "pinned" else "2 workers"
        tables.append(table(f"{mode} ({label})", rows, [t for t in TARGETS if t in opts.targets]))
    header = (f"{time.strftime('%Y-%m-%d')}, {opts.rounds} rounds of {opts.seconds} s (wrk), "
              f"one {opts.gib} GiB transfer each, medians; CPU is the proxy's own, "
              "user space in brackets.")
    text = header + "\n\n" + "\n\n".join(tables) + "\n"
    print(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
