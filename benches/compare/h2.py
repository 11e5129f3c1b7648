#!/usr/bin/env python3
"""http-lb's HTTP/2 beside nginx (`http2`, `grpc_pass`) and HAProxy (`proto h2`): one machine, one run.

Started by benches/compare/run.sh --h2, which installs the tools and builds http-lb first:

    benches/compare/run.sh --h2                        # pinned: one worker on CPU 1
    benches/compare/run.sh --h2 --rounds 5 --seconds 8

Each target accepts HTTP/2 in clear text by prior knowledge (http-lb `--h2c`, nginx 1.22's
`listen ... http2`, HAProxy's `bind ... proto h2`) and balances round robin over the same two
dummy servers, without an affinity cookie (nginx has none). Each adds the four fields
http-lb adds to a request (X-Forwarded-For, -Proto, -Host and X-Real-IP), so each writes, and
each backend reads, the same; the dummy server echoes a request's fields in its answer, so
the answers are the same size too (before 2026-12-07 the peers added X-Forwarded-For alone,
and carried answers about 80 bytes shorter). `http-lb-hyper` is the same
binary with `LB_H2_OWN=off`: hyper's HTTP/2 server in place of the own codec (chapter 17).
`http-lb-b` is another build (`--http-lb-b PATH`), for an A/B test of a change:

    h2.py --targets http-lb,http-lb-b --http-lb-b /tmp/lb-before --workloads h2load --rounds 9

Workloads:
  h2load   h2load -c 50 -m 10: 50 connections, 10 streams each at once, GET / to HTTP/1.1
           backends kept alive: requests/s and the proxy's CPU per request. As fast as each
           proxy goes (a closed loop, where a slower proxy gets bigger batches), or with
           --rps N at the same rate for all (N requests a second per connection).
  grpc     the same load as unary gRPC calls (`POST /echo.Echo/Unary`, content-type
           application/grpc, one 5-byte message) to the dummy servers over HTTP/2 (http-lb
           `h2c://`, nginx `grpc_pass`, HAProxy `proto h2` on the server line): calls/s and CPU
           per call.
  idle     resident memory per idle HTTP/2 client connection: --idle connections (1,000 by
           default) each send the preface, SETTINGS and one request, read the answer and stay
           open; the proxy's memory after them, less before, divided by their number.

The proxy has one worker on CPU 1, everything else is on CPU 0; rounds interleave the targets,
and the table shows medians. Everything listens on 127.0.0.1; every process started is stopped
by PID at the end.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Procs, cpu_seconds, family, free_port, log, rss_kib, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
TARGETS = ["haproxy", "nginx", "http-lb", "http-lb-hyper", "http-lb-b"]
WORKLOADS = ["h2load", "grpc", "idle"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def haproxy_config(listen, backends, grpc):
    # `proto h2` on the server lines speaks HTTP/2 to the backends, as gRPC needs.
    proto = " proto h2" if grpc else ""
    servers = "\n".join(f"  server s{i} 127.0.0.1:{p}{proto}" for i, p in enumerate(backends))
    return f"""global
  nbthread 1
  maxconn 9800
defaults
  mode http
  option http-keep-alive
  option forwardfor
  timeout connect 3s
  timeout client 120s
  timeout server 60s
  timeout http-request 10s
frontend f
  bind 127.0.0.1:{listen} proto h2
  # The fields http-lb adds to every request (chapter 12), so that each proxy writes as much
  # and each backend reads (and the dummy server echoes back) the same.
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  default_backend b
backend b
  balance roundrobin
{servers}
"""


def nginx_config(listen, backends, grpc, prefix):
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    # The fields http-lb adds to every request (chapter 12), as in haproxy_config.
    fields = ["X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme",
              "X-Forwarded-Host $http_host", "X-Real-IP $remote_addr"]
    if grpc:
        location = "grpc_pass grpc://b;" + "".join(f"\n      grpc_set_header {f};" for f in fields)
    else:
        location = ('proxy_pass http://b;\n      proxy_http_version 1.1;\n'
                    '      proxy_set_header Connection "";'
                    + "".join(f"\n      proxy_set_header {f};" for f in fields))
    return f"""daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 19800; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  keepalive_timeout 120s;
  # HTTP/2 connections otherwise end after 1,000 requests (GOAWAY), and h2load does not
  # reconnect.
  keepalive_requests 100000000;
  upstream b {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{listen} http2;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      {location}
    }}
  }}
}}
"""


class Bench:
    def __init__(self, opts, work):
        self.opts = opts
        self.work = work
        self.procs = Procs()

    def start_backends(self):
        self.backends = [free_port(), free_port()]
        cmd = [self.opts.dummy]
        for p in self.backends:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        d = self.procs.start(cmd, cpu=0, env={"RUST_LOG": "warn"})
        for p in self.backends:
            wait_port(p, d, "dummy-server")

    def start_proxy(self, target, grpc):
        port = free_port()
        name = f"{target}-{port}"
        logfile = open(os.path.join(self.work, name + ".log"), "w")
        if target == "haproxy":
            cfg = os.path.join(self.work, name + ".cfg")
            with open(cfg, "w") as f:
                f.write(haproxy_config(port, self.backends, grpc))
            p = self.procs.start(["haproxy", "-f", cfg, "-db"], cpu=1, stderr=logfile)
        elif target == "nginx":
            prefix = os.path.join(self.work, name)
            os.makedirs(prefix, exist_ok=True)
            cfg = os.path.join(self.work, name + ".conf")
            with open(cfg, "w") as f:
                f.write(nginx_config(port, self.backends, grpc, prefix))
            p = self.procs.start(["nginx", "-c", cfg, "-p", prefix, "-e",
                                  os.path.join(prefix, "nginx-error.log")],
                                 cpu=1, stderr=logfile)
        else:
            # Idle HTTP/2 connections are kept as long as the others keep them.
            binary = self.opts.http_lb_b if target == "http-lb-b" else self.opts.http_lb
            cmd = [binary, "--listen", f"127.0.0.1:{port}", "--h2c",
                   "--health-interval", "0", "--workers", "1", "--affinity", "none",
                   "--header-timeout", "120"]
            scheme = "h2c://" if grpc else ""
            for b in self.backends:
                cmd += ["--backend", f"{scheme}127.0.0.1:{b}"]
            env = {"RUST_LOG": "warn"}
            if target == "http-lb-hyper":
                # The same binary with hyper's HTTP/2 server in place of the own codec.
                env["LB_H2_OWN"] = "off"
            p = self.procs.start(cmd, cpu=1, env=env, stderr=logfile)
        wait_port(port, p, target)
        if target == "nginx":
            deadline = time.monotonic() + 10
            while len(family(p.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        return port, p

    def h2load(self, port, grpc):
        url = f"http://127.0.0.1:{port}/" + ("echo.Echo/Unary" if grpc else "")
        cmd = ["taskset", "-c", "0", "h2load", "-c", "50", "-m", "10", "-t", "1",
               "-D", str(self.opts.seconds), url]
        if self.opts.rps:
            cmd[-1:-1] = ["--rps", str(self.opts.rps)]
        if grpc:
            data = os.path.join(self.work, "message")
            with open(data, "wb") as f:
                f.write(b"\0\0\0\0\x05hello")
            cmd += ["-d", data, "-H", "content-type: application/grpc", "-H", "te: trailers"]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=self.opts.seconds + 60).stdout
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
        if not done or not rps:
            raise RuntimeError(f"h2load failed: {out[-400:]}")
        if int(done.group(2)) < int(done.group(1)):
            raise RuntimeError(f"h2load saw failed answers: {out[-400:]}")
        return float(rps.group(1)), int(done.group(2))

    def idle(self, port, pid):
        """KiB of the proxy's resident memory per idle HTTP/2 client connection."""
        socks = []
        # SETTINGS (empty), then HEADERS for `GET /` on stream 1 (HPACK static table:
        # :method GET, :scheme http, :path /, and :authority `b` as a literal).
        hello = PREFACE + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
        block = bytes([0x82, 0x86, 0x84, 0x01, 0x01, ord("b")])
        hello += len(block).to_bytes(3, "big") + bytes([1, 0x05, 0, 0, 0, 1]) + block

        def open_clients(count):
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(hello)
                data, ended, acked = b"", False, False
                # Until a frame on stream 1 ends it (END_STREAM on DATA or HEADERS); the
                # balancer's SETTINGS acknowledged once.
                while not ended:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("a proxy closed an idle client before answering")
                    data += chunk
                    while len(data) >= 9:
                        length = int.from_bytes(data[:3], "big")
                        if len(data) < 9 + length:
                            break
                        kind, flags = data[3], data[4]
                        stream = int.from_bytes(data[5:9], "big") & 0x7fffffff
                        if kind == 4 and not flags & 1 and not acked:
                            s.sendall(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))  # SETTINGS ACK
                            acked = True
                        if stream == 1 and kind in (0, 1) and flags & 1:
                            ended = True
                        data = data[9 + length:]
                socks.append(s)

        try:
            open_clients(100)  # warm: first allocations, the backend connections
            base = rss_kib(pid)
            open_clients(self.opts.idle)
            return (rss_kib(pid) - base) / self.opts.idle
        finally:
            for s in socks:
                s.close()

    def run(self):
        rows = {}
        self.start_backends()
        for workload in [w for w in WORKLOADS if w in self.opts.workloads]:
            grpc = workload == "grpc"
            samples = {t: [] for t in self.opts.targets}
            started = {t: self.start_proxy(t, grpc) for t in self.opts.targets}
            for r in range(self.opts.rounds if workload != "idle" else 1):
                for target, (port, proc) in started.items():
                    try:
                        if workload == "idle":
                            kib = self.idle(port, proc.pid)
                            samples[target].append((kib, 1, None))
                            log(f"  idle   {target:8} {kib:.2f} KiB per connection")
                            continue
                        before = cpu_seconds(proc.pid)
                        rps, n = self.h2load(port, grpc)
                        cpu = cpu_seconds(proc.pid) - before
                        samples[target].append((rps, n, cpu))
                        log(f"  {workload:6} round {r + 1} {target:8} {rps:10.0f} req/s, "
                            f"{cpu / n * 1e6:.1f} µs CPU/req")
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        log(f"  {workload:6} {target:8} FAILED: {e}")
                        samples[target].append(None)
            for _, proc in started.values():
                self.procs.stop(proc)
            rows[workload] = samples
        self.procs.stop_all()
        return rows


def table(rows, targets):
    out = ["| workload | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for workload, samples in rows.items():
        cells = []
        for t in targets:
            s = [x for x in samples.get(t, []) if x is not None]
            if not s:
                cells.append("failed" if samples.get(t) else "—")
                continue
            if workload == "idle":
                cells.append(f"{statistics.median(x[0] for x in s):.2f} KiB per connection")
                continue
            rps = statistics.median(x[0] for x in s)
            cpu = statistics.median(c / n for _, n, c in s)
            unit = "calls" if workload == "grpc" else "req"
            cell = f"{rps:,.0f} {unit}/s, {cpu * 1e6:.1f} µs CPU/{unit.rstrip('s')}"
            # Each round runs the targets one after the other: the ratio of a target's CPU to
            # the first target's in the same round moves less with the machine's phases than
            # either median does.
            ref = samples.get(targets[0], [])
            pairs = [x[2] / x[1] / (r[2] / r[1]) for x, r in zip(samples.get(t, []), ref)
                     if x is not None and r is not None and r[2] > 0]
            if t != targets[0] and len(pairs) > 1:
                cell += f" ({statistics.median(pairs):.2f}× {targets[0]}, paired)"
            cells.append(cell)
        out.append(f"| {workload} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--idle", type=int, default=1000,
                    help="idle HTTP/2 client connections for the idle workload")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--rps", type=int, help="requests a second per h2load client (50 of them): "
                    "every target at the same rate, below its limit, instead of as fast as it goes")
    ap.add_argument("--http-lb", default=os.path.join(CARGO_TARGET, "release/http-lb"))
    ap.add_argument("--http-lb-b", help="a second build, target http-lb-b: an A/B test "
                    "(--targets http-lb,http-lb-b gives b's CPU over a's, paired)")
    ap.add_argument("--dummy", default=os.path.join(CARGO_TARGET, "release/dummy-server"))
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    opts = ap.parse_args()
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
        sys.exit("error: target http-lb-b needs --http-lb-b PATH (a second build)")
    for tool in ["taskset", "h2load", "haproxy", "nginx"]:
        if not shutil.which(tool):
            sys.exit(f"error: {tool} is not installed (benches/compare/run.sh --h2 installs it)")
    work = tempfile.mkdtemp(prefix="http-lb-h2-")
    os.sched_setaffinity(0, {0})
    bench = Bench(opts, work)
    try:
        rows = bench.run()
    finally:
        bench.procs.stop_all()
    header = (f"{time.strftime('%Y-%m-%d')}, pinned (one worker on CPU 1, the load on CPU 0), "
              f"{opts.rounds} rounds of {opts.seconds} s (h2load -c 50 -m 10"
              f"{f' --rps {opts.rps}' if opts.rps else ''}), medians; CPU is "
              f"the proxy's own. Paired: the median, over the rounds, of a target's CPU per "
              f"request over {opts.targets[0]}'s in the same round.")
    text = header + "\n\n" + table(rows, opts.targets) + "\n"
    print(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
