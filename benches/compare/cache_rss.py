#!/usr/bin/env python3
"""What `http-lb --cache BYTES` really costs in memory (chapter 16, issue 26).

Started by benches/compare/run.sh --cache-rss, which builds the release binaries:

    benches/compare/run.sh --cache-rss
    benches/compare/run.sh --cache-rss --cache 8000000 --small 20000 --large 2000

One http-lb with `--cache BYTES` in front of one dummy-server. The process's resident memory
(RSS, from /proc) is read once warm, then after each phase, every entry a new URL the backend
marks cacheable for an hour:

  small   SMALL answers of about 300 bytes (`/cacheable/3600?i=N`): the per-entry overhead.
  large   LARGE answers of 64 KiB (`/cacheable/3600?size=65536&i=N`): bodies far past the
          bound, so eviction runs all along, and answers being stored are reserved first.
  heavy   5,000 answers to requests with a 2 KiB URL and a 4 KiB field the answer varies on:
          what an entry keeps of the request.

Target (issue 26): growth at most 1.25 x BYTES + 8 MiB, whatever was stored. RSS is read
right after each phase (the peak, fragmentation included) and again 11 s later, once the
balancer's trimmer has returned what the allocator held free (lib `memory`). The table also
gives what the cache says it holds (`httplb_cache_bytes`) and its entries.
"""
import argparse
import os
import sys
import threading
import time

# This folder's http.py (chapter 12's comparison) would shadow the standard library's `http`.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
import http.client  # noqa: E402

sys.path.insert(0, HERE)
from compare import Procs, free_port, log, rss_kib, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
CLIENTS = 8
# Longer than lb::memory::INTERVAL (10 s), the trimmer's period.
SETTLE = float(os.environ.get("CACHE_RSS_SETTLE", "11"))


def fetch_all(port, paths, headers):
    """GETs every path, CLIENTS keep-alive connections at once; the statuses seen."""
    statuses = {}
    lock = threading.Lock()
    chunks = [paths[i::CLIENTS] for i in range(CLIENTS)]

    def client(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        seen = {}
        for path in chunk:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            seen[r.status] = seen.get(r.status, 0) + 1
        conn.close()
        with lock:
            for k, v in seen.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def metric(admin, name):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=int, default=8_000_000, help="the cache's bound in bytes")
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--large", type=int, default=2_000)
    ap.add_argument("--heavy", type=int, default=5_000)
    args = ap.parse_args()

    bins = os.path.join(CARGO_TARGET, "release")
    procs = Procs()
    try:
        backend, port, admin = free_port(), free_port(), free_port()
        dummy = procs.start([os.path.join(bins, "dummy-server"), "--listen", f"127.0.0.1:{backend}"])
        wait_port(backend, dummy, "dummy-server")
        lb = procs.start(
            [
                os.path.join(bins, "http-lb"),
                "--listen", f"127.0.0.1:{port}",
                "--admin", f"127.0.0.1:{admin}",
                "--backend", f"127.0.0.1:{backend}",
                "--cache", str(args.cache),
                "--health-interval", "0",
            ],
            env={"RUST_LOG": "warn"},
        )
        wait_port(port, lb, "http-lb")
        # Warm: the runtime's threads, the pools, the allocator's first arenas.
        fetch_all(port, [f"/cacheable/3600?warm={i}" for i in range(200)], {})
        base = rss_kib(lb.pid)
        bound_kib = args.cache / 1024
        target_kib = 1.25 * bound_kib + 8 * 1024
        rows = [("warm", 0, base, 0, metric(admin, "httplb_cache_bytes"), metric(admin, "httplb_cache_entries"))]
        phases = [
            ("small", [f"/cacheable/3600?i={i}" for i in range(args.small)], {}),
            ("large", [f"/cacheable/3600?size=65536&i={i}" for i in range(args.large)], {}),
            (
                "heavy",
                [f"/cacheable/3600?vary=x-long&i={i}&pad={'p' * 2000}" for i in range(args.heavy)],
                {"X-Long": "v" * 4096},
            ),
        ]
        for name, paths, headers in phases:
            started = time.monotonic()
            statuses = fetch_all(port, paths, headers)
            took = time.monotonic() - started
            if set(statuses) != {200}:
                log(f"{name}: statuses {statuses}")
            rss = rss_kib(lb.pid)
            counted = metric(admin, "httplb_cache_bytes"), metric(admin, "httplb_cache_entries")
            rows.append((name, len(paths), rss, took, *counted))
            log(f"{name}: {len(paths)} requests in {took:.1f} s, RSS {rss / 1024:.1f} MiB")
            # The balancer returns freed memory every 10 s after churn (lb::memory): what an
            # operator's dashboard shows once the phase is over.
            time.sleep(SETTLE)
            rss = rss_kib(lb.pid)
            rows.append((f"{name}, settled", len(paths), rss, took, *counted))
            log(f"{name}: RSS {rss / 1024:.1f} MiB {SETTLE} s later")

        print(f"\n`http-lb --cache {args.cache}` ({bound_kib / 1024:.1f} MiB), RSS growth over the warm process; "
              f"target {target_kib / 1024:.1f} MiB (1.25 x the bound + 8 MiB)\n")
        print("| after | requests | RSS | growth | cache says | entries | within target |")
        print("|---|---|---|---|---|---|---|")
        peak = max(rss - base for name, _, rss, *_ in rows if "settled" not in name)
        settled = max((rss - base for name, _, rss, *_ in rows if "settled" in name), default=0)
        for name, n, rss, _took, counted, entries in rows:
            growth = rss - base
            ok = "yes" if growth <= target_kib else "**no**"
            print(f"| {name} | {n} | {rss / 1024:.1f} MiB | {growth / 1024:.1f} MiB | "
                  f"{counted / 1e6:.2f} MB | {entries:.0f} | {ok} |")
        print(f"\nworst growth right after a phase {peak / 1024:.1f} MiB ({peak / bound_kib:.2f} x the bound), "
              f"once settled {settled / 1024:.1f} MiB ({settled / bound_kib:.2f} x)")
        return 0 if settled <= target_kib else 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
