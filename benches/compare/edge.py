#!/usr/bin/env python3
"""http-lb's chapter 16 beside nginx: cache hits, static files, gzip. One machine, one run.

Started by benches/compare/run.sh --edge, which installs nginx and wrk and builds http-lb:

    benches/compare/run.sh --edge
    benches/compare/run.sh --edge --rounds 3 --seconds 5

Both proxies have one worker on CPU 1 (wrk and the backend on CPU 0), the same dummy-server
backend and the same files:

  cache-hit   wrk, 50 keep-alive connections, one URL the backend marks cacheable for an
              hour (nginx `proxy_cache`, http-lb `--cache`): every request after the first is
              a hit. Requests/s and proxy CPU per hit.
  static-4k   a 4 KiB file from a folder (nginx `alias`, http-lb `--static`).
  static-1m   a 1 MiB file from the same folder.
  gzip        1 MB of text from the backend, uncached, compressed for a client that accepts
              gzip (nginx `gzip on` level 6, http-lb `--compress`): proxy CPU per MiB of text.

Rounds interleave the two; the table shows medians. Targets (issue 17): CPU per cache hit and
per static 4 KiB request at most nginx's.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# cpu_seconds counts a process and its children (nginx's workers) once.
from compare import Procs, cpu_seconds, free_port, log, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CARGO_TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
TARGETS = ["nginx", "http-lb"]
WORKLOADS = {
    "cache-hit": ("/cacheable/3600", []),
    "static-4k": ("/assets/4k.bin", []),
    "static-1m": ("/assets/1m.bin", []),
    "gzip": ("/text/1000000", ["-H", "Accept-Encoding: gzip"]),
}


def nginx_config(port, backend, site, prefix):
    return f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  proxy_cache_path {prefix}/cache levels=1:2 keys_zone=c:16m max_size=256m inactive=1h use_temp_path=off;
  upstream b {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /assets/ {{ alias {site}/; }}
    location /cacheable/ {{
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
    }}
    location / {{
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      gzip on;
      gzip_comp_level 6;
      gzip_types text/plain;
      gzip_proxied any;
    }}
  }}
}}
"""


def wrk(port, path, extra, seconds):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"] + extra
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"wrk failed: {out[-400:]}")
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk saw failed answers: {out[-400:]}")
    return float(rps.group(1)), int(m.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--http-lb", default=os.path.join(CARGO_TARGET, "release", "http-lb"))
    p.add_argument("--dummy", default=os.path.join(CARGO_TARGET, "release", "dummy-server"))
    args = p.parse_args()

    procs = Procs()
    results = {(t, w): [] for t in TARGETS for w in WORKLOADS}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as work:
        try:
            # nginx's workers drop root for an unprivileged user: the folder must be readable.
            os.chmod(work, 0o755)
            site = os.path.join(work, "site")
            os.makedirs(site, mode=0o755)
            with open(os.path.join(site, "4k.bin"), "wb") as f:
                f.write(os.urandom(4096))
            with open(os.path.join(site, "1m.bin"), "wb") as f:
                f.write(os.urandom(1 << 20))
            for name in ("4k.bin", "1m.bin"):
                os.chmod(os.path.join(site, name), 0o644)
            backend = free_port()
            d = procs.start([args.dummy, "--listen", f"127.0.0.1:{backend}"], cpu=0,
                            env={"RUST_LOG": "warn"})
            wait_port(backend, d, "dummy-server")
            for rnd in range(args.rounds):
                for target in TARGETS:
                    port = free_port()
                    if target == "nginx":
                        prefix = os.path.join(work, f"nginx{rnd}")
                        os.makedirs(prefix)
                        cfg = os.path.join(work, f"nginx{rnd}.conf")
                        with open(cfg, "w") as f:
                            f.write(nginx_config(port, backend, site, prefix))
                        proc = procs.start(["nginx", "-c", cfg, "-p", prefix, "-e",
                                            os.path.join(prefix, "error.log")], cpu=1)
                    else:
                        proc = procs.start(
                            [args.http_lb, "--listen", f"127.0.0.1:{port}", "--workers", "1",
                             "--health-interval", "0", "--backend", f"127.0.0.1:{backend}",
                             "--affinity", "none", "--cache", "268435456", "--compress",
                             "--static", f"/assets/={site}"],
                            cpu=1, env={"RUST_LOG": "warn"})
                    wait_port(port, proc, target)
                    time.sleep(0.3)
                    for name, (path, extra) in WORKLOADS.items():
                        # Warm: the cache filled, the files in the page cache.
                        subprocess.run(["curl", "-s", "-o", "/dev/null"] + extra
                                       + [f"http://127.0.0.1:{port}{path}"], timeout=30)
                        before = cpu_seconds(proc.pid)
                        rps, n = wrk(port, path, extra, args.seconds)
                        cpu = cpu_seconds(proc.pid) - before
                        results[(target, name)].append((rps, cpu / n * 1e6, n))
                        log(f"  round {rnd + 1} {target:8} {name:10} {rps:9.0f} req/s, "
                            f"{cpu / n * 1e6:7.1f} µs CPU/req")
                    procs.stop(proc)
        finally:
            procs.stop_all()

    print(f"\n{time.strftime('%Y-%m-%d')}, {args.rounds} rounds of {args.seconds} s, "
          "one worker each on CPU 1, medians; CPU is the proxy's own.\n")
    print("| workload | nginx | http-lb | http-lb / nginx (CPU) |")
    print("|---|---|---|---|")
    for name in WORKLOADS:
        cells = []
        cpus = []
        for target in TARGETS:
            rows = results[(target, name)]
            rps = statistics.median(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            cpus.append(cpu)
            if name == "gzip":
                # Per MiB of text: each request carries 1,000,000 bytes.
                cells.append(f"{rps:,.0f} req/s, {cpu / (1_000_000 / 1048576) / 1000:.2f} ms CPU/MiB")
            else:
                cells.append(f"{rps:,.0f} req/s, {cpu:.1f} µs CPU/req")
        print(f"| {name} | {cells[0]} | {cells[1]} | {cpus[1] / cpus[0]:.2f}× |")


if __name__ == "__main__":
    main()
