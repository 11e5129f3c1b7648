#!/usr/bin/env python3
"""The SSL farm's economics (chapter 13): what each tier spends per new TLS connection, and
what the four tiers cost a request against one tcp-lb terminating TLS in front of the same
applications.

Started by benches/compare/run.sh --farm, which installs wrk and builds the release binaries:

    benches/compare/run.sh --farm
    benches/compare/run.sh --farm --connections 4000 --seconds 8

Measured:
  handshakes  N new TLS connections, each one `GET /` with `Connection: close`, from a Python
              client (OpenSSL) with 8 threads: first with full handshakes, then with every
              client resuming the session its previous connection got (TLS 1.3 tickets), which
              tier 1 sends to whichever offloader it picks. CPU per connection of each tier is
              the tier's CPU time over the run (utime + stime of its processes, from /proc)
              divided by N. The ratio tier 1 / tier 2 says how many offloader cores one tier-1
              core can feed: seed 000's economic claim as a number.
  keepalive   wrk, 50 keep-alive HTTPS connections: requests/s and p50/p99 latency, farm
              against a single tcp-lb terminating TLS in front of the same applications.
  close       wrk with `Connection: close`: a new TLS connection per request, farm against
              single. wrk keeps its TLS session, so these handshakes are resumed ones (the
              offloaders' /metrics count them).

The handshake runs are made twice: with the farm's default ECDSA P-256 certificate, and with
`--key-type rsa` (RSA 2048), what sites served when seed 000 was written.

Everything listens on 127.0.0.x; every process started is stopped at the end (ssl-farm stops
its own children on SIGTERM).
"""
import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import cpu_seconds, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
RELEASE = os.path.join(CARGO_TARGET, "release")
TIERS = ["l4", "offload", "l7", "app"]


def read_listening(proc, what, patience=60.0):
    """The address of the first `listening on` line of `proc`'s stdout."""
    deadline = time.time() + patience
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on "):
            return line.split()[-1]
    raise RuntimeError(f"{what} did not start")


def drain(stream):
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


class Farm:
    def __init__(self, tmp, args, key_type):
        self.dir = os.path.join(tmp, f"farm-{key_type}")
        cmd = [os.path.join(RELEASE, "ssl-farm"), "--listen", "127.0.0.1:0",
               "--offloaders", str(args.offloaders), "--l7", str(args.l7),
               "--apps", str(args.apps), "--state-dir", self.dir, "--key-type", key_type]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.addr = read_listening(self.proc, "ssl-farm")
        drain(self.proc.stdout)
        with open(os.path.join(self.dir, "farm.json")) as f:
            self.json = json.load(f)
        self.ca = os.path.join(self.dir, "ca.pem")

    def members(self, tier):
        return [p for p in self.json["processes"] if p["tier"] == tier]

    def cpu(self):
        return {t: sum(cpu_seconds(p["pid"]) for p in self.members(t)) for t in TIERS}

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Single:
    """One tcp-lb terminating TLS, round robin over the farm's applications."""

    def __init__(self, tmp, farm):
        backends = "".join(f'\n[[backend]]\naddress = "{p["address"]}"\n'
                           for p in farm.members("app"))
        config = os.path.join(tmp, "single.toml")
        with open(config, "w") as f:
            f.write(f'listen = "127.0.0.1:0"\nstrategy = "round-robin"\n'
                    f'[tls]\ncert = "{farm.dir}/cert.pem"\nkey = "{farm.dir}/key.pem"\n{backends}')
        self.proc = subprocess.Popen([os.path.join(RELEASE, "tcp-lb"), "--config", config],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env={**os.environ, "RUST_LOG": "warn"})
        self.addr = read_listening(self.proc, "tcp-lb")
        drain(self.proc.stdout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


CONTEXTS = {}


def handshakes(addr, ca, total, threads, sessions):
    """`total` new TLS connections with one request each, from `threads` clients; client i
    resumes `sessions[i]` when `sessions` is a list (and keeps its newest session there).
    Returns (seconds, resumed, failures)."""
    resume = sessions is not None
    host, port = addr.rsplit(":", 1)
    # One context per CA for the whole run: a session resumes only through the context that
    # made it.
    ctx = CONTEXTS.setdefault(ca, ssl.create_default_context(cafile=ca))
    counts = {"resumed": 0, "failed": 0}
    lock = threading.Lock()

    def client(i, n):
        session = sessions[i] if resume else None
        for _ in range(n):
            try:
                raw = socket.create_connection((host, int(port)), timeout=10)
                s = ctx.wrap_socket(raw, server_hostname="localhost",
                                    session=session if resume else None)
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
                # After the data: TLS 1.3 tickets arrive once the handshake is done.
                session = s.session
                reused = s.session_reused
                s.close()
                if resume:
                    sessions[i] = session
                with lock:
                    counts["resumed"] += int(reused)
            except OSError:
                with lock:
                    counts["failed"] += 1

    started = time.time()
    workers = [threading.Thread(target=client, args=(i, total // threads))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.time() - started, counts["resumed"], counts["failed"]


def wrk(addr, seconds, close):
    port = addr.rsplit(":", 1)[1]
    cmd = ["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", f"https://localhost:{port}/"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    lat = {q: re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for q in ("50", "99")}
    if not rps or not all(lat.values()):
        raise RuntimeError(f"wrk failed: {out[-400:]}")
    errors = re.search(r"Socket errors: (.*)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    ms = {q: float(m.group(1)) * scale[m.group(2)] for q, m in lat.items()}
    return float(rps.group(1)), ms["50"], ms["99"], errors.group(1) if errors else ""


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=4000,
                   help="new TLS connections per handshake run (default 4000)")
    p.add_argument("--seconds", type=int, default=8, help="seconds per wrk run (default 8)")
    p.add_argument("--offloaders", type=int, default=3)
    p.add_argument("--l7", type=int, default=2)
    p.add_argument("--apps", type=int, default=4)
    args = p.parse_args()

    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="ssl-farm-bench-") as tmp:
        for key_type in ("ecdsa", "rsa"):
            farm = Farm(tmp, args, key_type)
            single = None
            try:
                log(f"{key_type} farm on {farm.addr}: {args.offloaders} offloaders, {args.l7} L7, "
                    f"{args.apps} apps")
                for resume in (False, True):
                    # One warm-up connection per client, so the resumed run starts with a
                    # session in each client's hand: every measured connection is a return.
                    sessions = [None] * 8 if resume else None
                    handshakes(farm.addr, farm.ca, 8, 8, sessions)
                    before = farm.cpu()
                    secs, resumed, failed = handshakes(farm.addr, farm.ca, args.connections, 8,
                                                       sessions)
                    after = farm.cpu()
                    n = args.connections
                    per = {t: (after[t] - before[t]) / n * 1e6 for t in TIERS}
                    rows.append((key_type, resume, n, secs, resumed, failed, per))
                if key_type == "ecdsa":
                    single = Single(tmp, farm)
                    for close in (False, True):
                        for name, addr in (("farm", farm.addr), ("single tcp-lb", single.addr)):
                            log(f"wrk {'close' if close else 'keep-alive'}: {name}")
                            runs[(name, close)] = wrk(addr, args.seconds, close)
            finally:
                if single:
                    single.stop()
                farm.stop()

    print("\n## Per new TLS connection, by tier (CPU µs per connection)\n")
    print("| certificate | handshake | connections | conn/s | resumed | failed | tier 1 (L4) | "
          "tier 2 (offload) | tier 3 (L7) | tier 4 (apps) | tier 1 / tier 2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key_type, resume, n, secs, resumed, failed, per in rows:
        ratio = per["l4"] / per["offload"] if per["l4"] and per["offload"] else float("nan")
        cert = "ECDSA P-256" if key_type == "ecdsa" else "RSA 2048"
        print(f"| {cert} | {'resumed' if resume else 'full'} | {n} | {n / secs:.0f} | "
              f"{100 * resumed / n:.1f} % | {failed} | {per['l4']:.0f} | {per['offload']:.0f} | "
              f"{per['l7']:.0f} | {per['app']:.0f} | 1/{1 / ratio:.1f} |")
    print("\n## Through the whole farm against one tcp-lb terminating TLS (wrk, 50 connections)\n")
    print("| workload | target | requests/s | p50 ms | p99 ms | socket errors |")
    print("|---|---|---|---|---|---|")
    for close in (False, True):
        for name in ("farm", "single tcp-lb"):
            rps, p50, p99, errors = runs[(name, close)]
            print(f"| {'close (new TLS each, resumed)' if close else 'keep-alive'} | {name} | "
                  f"{rps:.0f} | "
                  f"{p50:.2f} | {p99:.2f} | {errors or '-'} |")


if __name__ == "__main__":
    main()
