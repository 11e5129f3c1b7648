#!/usr/bin/env python3
"""Resident memory per idle proxied connection (issue 6's ≤ 4 KiB target).

    cargo build --release --bin tcp-lb
    python3 benches/compare/idle_memory.py target/release/tcp-lb 4000

N clients connect through the balancer to an echo backend (a selector loop in a child
process), each exchanges one byte so that the pair is established on both sides, then all stay
idle; the balancer's VmRSS before and after, over N, is the cost of one idle pair. Loopback
only; everything it starts is killed at the end. Needs 2N+ open files (it raises its own soft
limit towards 20000)."""
import socket, subprocess, sys, time, os, resource
N = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
lb_bin = sys.argv[1]
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = 20000 if hard == resource.RLIM_INFINITY else min(20000, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
# echo backend: a tiny selector-based server in a child process
echo = subprocess.Popen([sys.executable, "-c", """
import selectors, socket
sel = selectors.DefaultSelector()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0)); l.listen(4096); l.setblocking(False)
print(l.getsockname()[1], flush=True)
sel.register(l, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is l:
            c, _ = l.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try: d = key.fileobj.recv(65536)
            except OSError: d = b""
            if d: key.fileobj.send(d)
            else: sel.unregister(key.fileobj); key.fileobj.close()
"""], stdout=subprocess.PIPE, text=True)
port = int(echo.stdout.readline())
lb = subprocess.Popen([lb_bin, "--listen", "127.0.0.1:0", "--backend", f"127.0.0.1:{port}",
                       "--health-interval", "0", "--max-connections", str(N + 1000)],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                      env={**os.environ, "RUST_LOG": "warn"})
addr = lb.stdout.readline().split()[-1]
host, lport = addr.rsplit(":", 1)
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
socks = []
for i in range(200):
    s = socket.create_connection((host, int(lport))); s.send(b"x"); s.recv(1); socks.append(s)
base = rss(lb.pid)
for i in range(N):
    s = socket.create_connection((host, int(lport))); s.send(b"x"); s.recv(1); socks.append(s)
time.sleep(1)
after = rss(lb.pid)
print(f"{N} idle connections: RSS {base} KiB -> {after} KiB, {(after-base)/N:.2f} KiB each")
lb.kill(); echo.kill()
for s in socks: s.close()
