#!/usr/bin/env python3
"""How long a change in etcd takes to reach every balancer (chapter 15).

Started by benches/compare/run.sh --etcd, which installs etcd-server and builds the release
binaries:

    benches/compare/run.sh --etcd
    benches/compare/run.sh --etcd --keys 1000 --changes 40

It starts its own etcd on free loopback ports (a temporary data folder), puts `--keys`
backends under one prefix, and starts two `tcp-lb` and one `http-lb` watching it. Then, one
at a time, it adds a key (or removes the one it added) and notes the time; each balancer logs
`backends changed` once its new balancer is in place, with a microsecond timestamp from the
same clock. The latency of a change is the time from the put to that line: etcd's watch, the
parsing, and the rebuild of a balancer over `--keys` backends. Reported: the median, 90th
percentile and worst, per balancer and for the last of the three (the change has reached
*every* balancer). Target: under 100 ms at the median with 1,000 keys.
"""
import argparse
import base64
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
RELEASE = os.path.join(CARGO_TARGET, "release")
PREFIX = "/lb/bench/"


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd_call(port, path, body):
    """One call to etcd's JSON gateway. By hand: this folder's http.py hides the standard
    library's http package (and urllib with it) from the scripts here."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: etcd\r\ncontent-type: application/json\r\n"
                  f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"etcd answered {head[:40]!r}")
    return body


def put(port, key, value):
    etcd_call(port, "/v3/kv/put", {"key": b64(key), "value": b64(value)})


def delete(port, key):
    etcd_call(port, "/v3/kv/deleterange", {"key": b64(key)})


def changed_lines(path):
    """Timestamps (seconds since the epoch) of the `backends changed` lines in a log."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if "backends changed" in line:
                stamp = line.split()[0].rstrip("Z")
                t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f")
                out.append(t.replace(tzinfo=datetime.timezone.utc).timestamp())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1000, help="backends in etcd (default 1000)")
    p.add_argument("--changes", type=int, default=40, help="changes to time (default 40)")
    args = p.parse_args()
    procs = []
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as tmp:
        try:
            client, peer = free_port(), free_port()
            etcd = subprocess.Popen(
                ["etcd", "--name", "bench", "--data-dir", os.path.join(tmp, "data"),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(etcd)
            for _ in range(200):
                try:
                    etcd_call(client, "/v3/kv/range", {"key": b64("x")})
                    break
                except OSError:
                    time.sleep(0.05)
            log(f"etcd on 127.0.0.1:{client}: putting {args.keys} keys")
            for i in range(args.keys):
                put(client, f"{PREFIX}b{i}", json.dumps({"address": f"127.0.0.1:{20000 + i}"}))
            logs = []
            for k, binary in enumerate(["tcp-lb", "tcp-lb", "http-lb"]):
                path = os.path.join(tmp, f"lb{k}.log")
                logs.append((f"{binary} #{k + 1}", path))
                proc = subprocess.Popen(
                    [os.path.join(RELEASE, binary), "--listen", "127.0.0.1:0",
                     "--etcd", f"http://127.0.0.1:{client}", "--etcd-prefix", PREFIX,
                     "--health-interval", "0"],
                    stdout=subprocess.PIPE, stderr=open(path, "w"), text=True,
                    env={**os.environ, "RUST_LOG": "info,access=off"})
                procs.append(proc)
                if not proc.stdout.readline().startswith("listening on"):
                    raise RuntimeError(f"{binary} did not start: see {path}")
            latencies = {name: [] for name, _ in logs}
            every = []
            for i in range(args.changes):
                before = {name: len(changed_lines(path)) for name, path in logs}
                key = f"{PREFIX}new{i // 2}"
                start = time.time()
                if i % 2 == 0:
                    put(client, key, json.dumps({"address": f"127.0.0.1:{30000 + i}"}))
                else:
                    delete(client, key)
                deadline = time.time() + 10
                last = 0.0
                for name, path in logs:
                    while True:
                        lines = changed_lines(path)
                        if len(lines) > before[name]:
                            latency = lines[before[name]] - start
                            latencies[name].append(latency)
                            last = max(last, latency)
                            break
                        if time.time() > deadline:
                            raise RuntimeError(f"{name} never saw change {i}")
                        time.sleep(0.002)
                every.append(last)
                time.sleep(0.05)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def row(name, xs):
        xs = sorted(xs)
        p90 = xs[int(0.9 * (len(xs) - 1))]
        return (f"| {name} | {statistics.median(xs) * 1e3:.1f} | {p90 * 1e3:.1f} | "
                f"{xs[-1] * 1e3:.1f} |")

    print(f"\n## A change in etcd ({args.keys} keys under the prefix, {args.changes} changes)\n")
    print("| balancer | median ms | p90 ms | worst ms |")
    print("|---|---|---|---|")
    for name, xs in latencies.items():
        print(row(name, xs))
    print(row("**every balancer** (the last of the three)", every))


if __name__ == "__main__":
    main()
