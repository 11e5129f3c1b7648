#!/usr/bin/env python3
"""tcp-lb beside HAProxy and nginx: one machine, one run, the same backends and load.

Started by benches/compare/run.sh, which installs the tools and builds tcp-lb first:

    benches/compare/run.sh                    # pinned, then unpinned; about 15 minutes
    benches/compare/run.sh --mode pinned --rounds 5 --seconds 8

Targets: *direct* (the load generator talks to backend 1 itself), HAProxy (`mode tcp`), nginx
(`stream`) and tcp-lb, each balancing round robin over two backends; and *haproxy-splice*,
HAProxy with `option splice-request` and `option splice-response` (splice(2) forced both ways,
where its default copies), on the plain-TCP workloads only (with 256 pipes and 9,000
connections, to stay within the open-file limit); and, when `--tcp-lb-b BIN` names one,
*tcp-lb-b*: a second build run with the same flags, for an A/B test of one change in the same
interleaved rounds (chapter 11's step 10; any program that takes tcp-lb's flags will do, as
examples/uring-relay.rs does). Workloads:

  bulk-1, bulk-4   iperf3 with 1 and 4 streams. iperf3's control connection and its data
                   streams must reach the same server, so these balance by source address
                   (HAProxy `balance source`, nginx `hash $remote_addr`, tcp-lb ip-hash).
  keepalive        wrk, 50 keep-alive connections, against the small HTTP backend.
  close            wrk with `Connection: close`: one new connection (through the proxy, a new
                   connection to a backend too) per request.
  tls-close        the proxy terminates TLS (ECDSA P-256, TLS 1.3 only: nginx 1.22 would
                   otherwise settle on TLS 1.2, whose resumption skips the key exchange): one
                   handshake per request. wrk keeps its session across reconnects, so these are
                   resumed handshakes, X25519 without a certificate signature, on all three.
  tls-keepalive    the same with keep-alive: the cost of encryption without handshakes.
  idle             resident memory per idle proxied connection, with --idle pairs held open.

Pinned mode: each proxy has one worker and runs on CPU 1; backends, load generator and this
script run on CPU 0. Unpinned mode: two workers each, no pinning. Rounds interleave the targets
(A B C D A B C D ...) so that drift in the machine hits all alike; the table shows medians.
The proxy's CPU time comes from /proc/PID/stat (utime + stime of the proxy's processes) read
before and after each run. Everything listens on 127.0.0.1 and every process this script starts
is stopped by its PID at the end.
"""
import argparse
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where cargo puts the binaries: CARGO_TARGET_DIR when set, as cargo itself reads it.
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
TARGETS = ["direct", "haproxy", "haproxy-splice", "nginx", "tcp-lb", "tcp-lb-b"]
# HAProxy cannot splice TLS, and splicing does not change what an idle pair holds.
SPLICE_WORKLOADS = ("bulk-1", "bulk-4", "keepalive", "close")
WORKLOADS = ["bulk-1", "bulk-4", "keepalive", "close", "tls-close", "tls-keepalive", "idle"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something listens on 127.0.0.1:port, from /proc/net/tcp: no probe connection,
    which an iperf3 server would take for a test and abort (and which would count in the
    proxies' CPU time)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:])


def wait_port(port, proc, what, patience=20.0):
    """Readiness: the port is listening (or the process died: say why)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: {what} exited with {proc.returncode} before listening on {port}")
        if listening(port):
            return
        time.sleep(0.02)
    sys.exit(f"error: {what} did not listen on 127.0.0.1:{port} within {patience} s")


class Procs:
    """Everything started, stopped by PID at the end (SIGTERM, then SIGKILL)."""

    def __init__(self):
        self.started = []

    def start(self, cmd, cpu=None, env=None, **kw):
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, **kw)
        self.started.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.started:
            self.started.remove(p)

    def stop_all(self):
        for p in reversed(list(self.started)):
            self.stop(p)


def family(pid):
    """The process and its children (nginx's workers), from /proc."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_split(pid):
    """(user, kernel) CPU seconds of `pid` and its children, from /proc."""
    user = kernel = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            kernel += int(fields[12])  # stime
        except OSError:
            pass
    return user / TICK, kernel / TICK


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def rss_kib(pid):
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            pass
    return total


# ---------------------------------------------------------------- the proxies' configurations

def haproxy_config(listen, backends, balance, workers, tls_pem, splice=False):
    bind = f"bind 127.0.0.1:{listen}" + (f" ssl crt {tls_pem} ssl-min-ver TLSv1.3"
                                         if tls_pem else "")
    servers = "\n".join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    return f"""global
  nbthread {workers}
{"  maxconn 9000" + chr(10) + "  maxpipes 256" if splice else "  maxconn 9800"}
  tune.ssl.default-dh-param 2048
defaults
  mode tcp
  timeout connect 3s
  timeout client 300s
  timeout server 300s
{"  option splice-request" + chr(10) + "  option splice-response" + chr(10) if splice else ""}frontend f
  {bind}
  default_backend b
backend b
  balance {"source" if balance == "source" else "roundrobin"}
{servers}
"""


def nginx_config(listen, backends, balance, workers, tls_pem, tls_key, prefix):
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    hashing = "    hash $remote_addr;\n" if balance == "source" else ""
    ssl = (f"    ssl_certificate {tls_pem};\n    ssl_certificate_key {tls_key};\n"
           "    ssl_protocols TLSv1.3;\n" if tls_pem else "")
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 19800; }}
stream {{
  upstream b {{
{hashing}{servers}
  }}
  server {{
    listen 127.0.0.1:{listen}{" ssl" if tls_pem else ""};
{ssl}    proxy_pass b;
    proxy_timeout 300s;
  }}
}}
"""


class Bench:
    def __init__(self, opts, work):
        self.opts = opts
        self.work = work
        self.procs = Procs()
        self.pinned = opts.mode == "pinned"
        self.workers = 1 if self.pinned else 2
        self.load_cpu = 0 if self.pinned else None
        self.proxy_cpu = 1 if self.pinned else None
        self.cert = os.path.join(work, "localhost.pem")
        self.key = os.path.join(work, "localhost-key.pem")
        self.combined = os.path.join(work, "combined.pem")

    # -- backends: started once per mode, on the load generator's CPU
    def start_backends(self):
        self.http = [free_port(), free_port()]
        cmd = [self.opts.dummy]
        for p in self.http:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        d = self.procs.start(cmd, cpu=self.load_cpu, env={"RUST_LOG": "warn"})
        for p in self.http:
            wait_port(p, d, "dummy-server")
        self.iperf = [free_port(), free_port()]
        for p in self.iperf:
            s = self.procs.start(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(p)],
                                 cpu=self.load_cpu)
            wait_port(p, s, "iperf3 -s")

    def start_proxy(self, target, backends, balance, tls):
        """Starts one target for one workload; returns (port, pid or None)."""
        if target == "direct":
            return backends[0], None
        port = free_port()
        name = f"{target}-{port}"
        if target in ("haproxy", "haproxy-splice"):
            cfg = os.path.join(self.work, name + ".cfg")
            with open(cfg, "w") as f:
                f.write(haproxy_config(port, backends, balance, self.workers,
                                       self.combined if tls else None,
                                       splice=target == "haproxy-splice"))
            p = self.procs.start(["haproxy", "-f", cfg, "-db"], cpu=self.proxy_cpu,
                                 stderr=open(os.path.join(self.work, name + ".log"), "w"))
        elif target == "nginx":
            cfg = os.path.join(self.work, name + ".conf")
            prefix = os.path.join(self.work, name)
            os.makedirs(prefix, exist_ok=True)
            with open(cfg, "w") as f:
                f.write(nginx_config(port, backends, balance, self.workers,
                                     self.cert if tls else None, self.key, prefix))
            p = self.procs.start(["nginx", "-c", cfg, "-p", prefix, "-e",
                                  os.path.join(prefix, "nginx-error.log")],
                                 cpu=self.proxy_cpu,
                                 stderr=open(os.path.join(self.work, name + ".log"), "w"))
        else:
            binary = self.opts.tcp_lb_b if target == "tcp-lb-b" else self.opts.tcp_lb
            cmd = [binary, "--listen", f"127.0.0.1:{port}",
                   "--strategy", "ip-hash" if balance == "source" else "round-robin",
                   "--health-interval", "0"]
            if "--workers" not in self.opts.tcp_lb_args:
                cmd += ["--workers", str(self.workers)]
            for b in backends:
                cmd += ["--backend", f"127.0.0.1:{b}"]
            if tls:
                cmd += ["--cert", self.cert, "--key", self.key]
            cmd += self.opts.tcp_lb_args
            # The access log is off, as HAProxy and nginx log nothing here (chapter 11 measures
            # what the line costs).
            p = self.procs.start(cmd, cpu=self.proxy_cpu, env={"RUST_LOG": self.opts.rust_log},
                                 stderr=open(os.path.join(self.work, name + ".log"), "w"))
        wait_port(port, p, target)
        if target == "nginx":
            # Readiness of the workers, not only the master: the port is bound by the master,
            # so wait until the worker processes exist.
            deadline = time.monotonic() + 10
            while len(family(p.pid)) < 1 + self.workers and time.monotonic() < deadline:
                time.sleep(0.02)
        return port, p

    # -- one measurement: returns (value, unit count, proxy cpu seconds)
    def iperf3(self, port, streams):
        cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(self.opts.seconds),
               "-P", str(streams), "-J"]
        if self.load_cpu is not None:
            cmd = ["taskset", "-c", str(self.load_cpu)] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.opts.seconds + 30)
        try:
            result = json.loads(out.stdout)
            bits = result["end"]["sum_received"]["bits_per_second"]
            nbytes = result["end"]["sum_received"]["bytes"]
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"iperf3 failed: {out.stdout[-300:]} {out.stderr[-300:]}") from e
        return bits / 8 / 2**20, nbytes / 2**30  # MiB/s, GiB moved

    def wrk(self, url, close):
        threads = 1 if self.pinned else 2
        cmd = ["wrk", f"-t{threads}", "-c50", f"-d{self.opts.seconds}s", url]
        if close:
            cmd += ["-H", "Connection: close"]
        if self.load_cpu is not None:
            cmd = ["taskset", "-c", str(self.load_cpu)] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=self.opts.seconds + 30).stdout
        m = re.search(r"(\d+) requests in", out)
        rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
        if not m or not rps:
            raise RuntimeError(f"wrk failed: {out[-300:]}")
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: (.*)", out)
        if bad:
            raise RuntimeError(f"wrk saw {bad.group(1)} failed answers")
        if errors and re.search(r"(read|write|timeout) [1-9]", errors.group(1)):
            log(f"    note: wrk socket errors: {errors.group(1)}")
        return float(rps.group(1)), int(m.group(1))

    def measure(self, workload, port, pid):
        before = cpu_seconds(pid) if pid else 0.0
        if workload.startswith("bulk"):
            value, units = self.iperf3(port, 1 if workload == "bulk-1" else 4)
        else:
            scheme = "https" if workload.startswith("tls") else "http"
            value, units = self.wrk(f"{scheme}://127.0.0.1:{port}/", workload.endswith("close"))
        cpu = (cpu_seconds(pid) - before) if pid else None
        return value, units, cpu

    # -- idle memory: N pairs held open through the proxy
    def idle(self, target, n):
        if target == "direct":
            return None
        backend = self.procs.start([sys.executable, "-c", IDLE_BACKEND], cpu=self.load_cpu,
                                   stdout=subprocess.PIPE, text=True)
        bport = int(backend.stdout.readline())
        port, proxy = self.start_proxy(target, [bport, bport], "roundrobin", False)
        socks = []
        try:
            def open_pairs(count):
                for _ in range(count):
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                    s.sendall(b"x")
                    if s.recv(1) != b"x":
                        raise RuntimeError("idle pair did not echo")
                    socks.append(s)
            open_pairs(200)  # warm: first allocations, thread stacks, pools
            base = rss_kib(proxy.pid)
            open_pairs(n)
            after = rss_kib(proxy.pid)
            return (after - base) / n
        finally:
            for s in socks:
                s.close()
            self.procs.stop(proxy)
            self.procs.stop(backend)

    def run(self):
        rows = {}
        workloads = [w for w in WORKLOADS if w in self.opts.workloads]
        targets = [t for t in TARGETS if t in self.opts.targets]
        self.start_backends()
        for workload in workloads:
            if workload == "idle":
                continue
            bulk = workload.startswith("bulk")
            tls = workload.startswith("tls")
            backends = self.iperf if bulk else self.http
            started = {}
            for target in targets:
                if tls and target == "direct":
                    continue
                if target == "haproxy-splice" and workload not in SPLICE_WORKLOADS:
                    continue
                started[target] = self.start_proxy(target, backends,
                                                   "source" if bulk else "roundrobin", tls)
            samples = {t: [] for t in started}
            for r in range(self.opts.rounds):
                for target, (port, proc) in started.items():
                    value, units, cpu = self.measure(workload, port, proc.pid if proc else None)
                    samples[target].append((value, units, cpu))
                    per = "" if cpu is None else f", proxy cpu {cpu:.2f} s"
                    log(f"  {self.opts.mode} {workload:13} round {r + 1} {target:8} "
                        f"{value:10.1f}{per}")
            for target, (_, proc) in started.items():
                if proc:
                    self.procs.stop(proc)
            rows[workload] = samples
        if "idle" in workloads:
            rows["idle"] = {}
            for target in targets:
                if target == "haproxy-splice":
                    continue
                kib = self.idle(target, self.opts.idle)
                if kib is not None:
                    rows["idle"][target] = [(kib, 1, None)]
                    log(f"  {self.opts.mode} idle {target:8} {kib:.2f} KiB per pair")
        self.procs.stop_all()
        return rows


IDLE_BACKEND = """
import selectors, socket, resource
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0)); l.listen(4096); l.setblocking(False)
print(l.getsockname()[1], flush=True)
sel.register(l, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is l:
            try:
                c, _ = l.accept()
            except OSError:
                continue
            c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try: d = key.fileobj.recv(65536)
            except OSError: d = b""
            if d: key.fileobj.send(d)
            else: sel.unregister(key.fileobj); key.fileobj.close()
"""

UNITS = {
    "bulk-1": ("MiB/s", "GiB", "s/GiB"),
    "bulk-4": ("MiB/s", "GiB", "s/GiB"),
    "keepalive": ("req/s", "req", "µs/req"),
    "close": ("conn/s", "conn", "µs/conn"),
    "tls-close": ("handshakes/s", "handshake", "µs/handshake"),
    "tls-keepalive": ("req/s", "req", "µs/req"),
    "idle": ("KiB/pair", None, None),
}


def table(mode, rows, targets):
    out = [f"### {mode}", "",
           "| workload | " + " | ".join(targets) + " |",
           "|---|" + "---|" * len(targets)]
    for workload, samples in rows.items():
        rate_unit, _, cpu_unit = UNITS[workload]
        direct = samples.get("direct")
        direct_median = statistics.median(v for v, _, _ in direct) if direct else None
        cells = []
        for t in targets:
            if t not in samples:
                cells.append("—")
                continue
            value = statistics.median(v for v, _, _ in samples[t])
            cell = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
            if direct_median and t != "direct":
                cell += f" ({value / direct_median:.2f}×)"
            cpus = [c / u for _, u, c in samples[t] if c is not None and u]
            if cpus:
                per = statistics.median(cpus)
                cell += f", {per:.2f} {cpu_unit}" if cpu_unit == "s/GiB" else \
                    f", {per * 1e6:.1f} {cpu_unit}"
            cells.append(cell)
        out.append(f"| {workload} ({rate_unit}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["pinned", "unpinned", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=9000,
                    help="idle pairs (each takes two of the proxy's file descriptors)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--targets", default=",".join(t for t in TARGETS if t != "tcp-lb-b"))
    ap.add_argument("--tcp-lb", default=os.path.join(CARGO_TARGET, "release/tcp-lb"))
    ap.add_argument("--tcp-lb-b", help="a second build (or any program taking tcp-lb's flags), "
                    "measured as target tcp-lb-b in the same interleaved rounds: an A/B test "
                    "of one change")
    ap.add_argument("--dummy", default=os.path.join(CARGO_TARGET, "release/dummy-server"))
    ap.add_argument("--certs", default=os.path.join(CARGO_TARGET, "release/certs"))
    ap.add_argument("--rust-log", default="warn", help="RUST_LOG for tcp-lb")
    ap.add_argument("--out", help="also write the tables (markdown) to this file")
    ap.add_argument("tcp_lb_args", nargs="*", help="extra tcp-lb flags, after --")
    opts = ap.parse_args()
    opts.workloads = opts.workloads.split(",")
    opts.targets = opts.targets.split(",")
    for w in opts.workloads:
        if w not in WORKLOADS:
            sys.exit(f"error: unknown workload {w}; known: {', '.join(WORKLOADS)}")
    for t in opts.targets:
        if t not in TARGETS:
            sys.exit(f"error: unknown target {t}; known: {', '.join(TARGETS)}")
    if "tcp-lb-b" in opts.targets and not opts.tcp_lb_b:
        sys.exit("error: target tcp-lb-b needs --tcp-lb-b BIN")
    for tool in ["taskset", "iperf3", "wrk", "haproxy", "nginx"]:
        if not shutil.which(tool):
            sys.exit(f"error: {tool} is not installed (benches/compare/run.sh installs it)")

    # Every proxy needs two descriptors per idle pair; raise our soft limit to the hard one
    # (children inherit it) and shrink the idle count to fit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fit = (hard - 400) // 2 if hard != resource.RLIM_INFINITY else opts.idle
    if opts.idle > fit:
        log(f"open-file limit {hard}: {fit} idle pairs instead of {opts.idle}")
        opts.idle = fit

    work = tempfile.mkdtemp(prefix="tcp-lb-compare-")
    subprocess.run([opts.certs, "--out", work, "--force"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(work, "combined.pem"), "w") as f:
        for name in ["localhost.pem", "localhost-key.pem"]:
            with open(os.path.join(work, name)) as part:
                f.write(part.read())

    modes = ["pinned", "unpinned"] if opts.mode == "both" else [opts.mode]
    tables = []
    for mode in modes:
        opts.mode = mode
        if mode == "pinned":
            os.sched_setaffinity(0, {0})
        else:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        bench = Bench(opts, work)
        try:
            rows = bench.run()
        finally:
            bench.procs.stop_all()
        tables.append(table(f"{mode} ({'1 worker, proxy on CPU 1' if mode == 'pinned' else '2 workers'})",
                            rows, [t for t in TARGETS if t in opts.targets]))
    header = (f"{time.strftime('%Y-%m-%d')}, {opts.rounds} rounds of {opts.seconds} s, "
              f"medians; (×) is the ratio to direct; then the proxy's CPU time per unit; "
              f"idle: {opts.idle} pairs.")
    text = header + "\n\n" + "\n\n".join(tables) + "\n"
    print(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
