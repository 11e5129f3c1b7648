#!/usr/bin/env bash
# tcp-lb beside HAProxy and nginx on this machine: installs what is missing (Debian/Ubuntu,
# apt-get), builds the release binaries, then runs benches/compare/compare.py with the flags
# given here (--mode pinned|unpinned|both, --rounds N, --seconds S, --out FILE, ...).
#
#   benches/compare/run.sh                       # both modes, about 15 minutes
#   benches/compare/run.sh --mode pinned --workloads keepalive,close --targets haproxy,tcp-lb
#   benches/compare/run.sh --http                # http-lb (chapter 12): benches/compare/http.py
#   benches/compare/run.sh --h2                  # http-lb's HTTP/2 and gRPC (chapter 17): h2.py
#   benches/compare/run.sh --farm                # ssl-farm (chapter 13): benches/compare/farm.py
#   benches/compare/run.sh --etcd                # etcd to every balancer (chapter 15): etcd.py
#   benches/compare/run.sh --edge                # cache, static, gzip beside nginx (chapter 16)
#   benches/compare/run.sh --cache-rss           # the cache's real memory against its bound (chapter 16)
#   benches/compare/run.sh --syscalls [--http|--tls]  # system calls per request and connection (issues 19, 31)
#   benches/compare/run.sh --instructions [--workload h1] [--http-lb-b OLD]  # callgrind's count per request (chapter 17)
#
# Everything runs on 127.0.0.1; every process it starts is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Help first: nothing to install or build to print it.
case "${1:-}" in
    -h|--help) exec python3 benches/compare/compare.py --help ;;
esac
if [ "${1:-}" = "--http" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/http.py --help
fi
if [ "${1:-}" = "--h2" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/h2.py --help
fi
if [ "${1:-}" = "--farm" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/farm.py --help
fi
if [ "${1:-}" = "--syscalls" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/syscalls.py --help
fi
if [ "${1:-}" = "--edge" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/edge.py --help
fi
if [ "${1:-}" = "--instructions" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/instructions.py --help
fi
if [ "${1:-}" = "--etcd" ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 benches/compare/etcd.py --help
fi
if [ "${1:-}" = "--cache-rss" ]; then
    # Needs nothing but python3 and the release binaries.
    shift
    [[ " $* " == *" --help "* || " $* " == *" -h "* ]] && exec python3 benches/compare/cache_rss.py --help
    cargo build --release --bin http-lb --bin dummy-server >&2
    exec python3 benches/compare/cache_rss.py "$@"
fi

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v wrk >/dev/null || missing+=(wrk)
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
[ "${1:-}" != "--etcd" ] || command -v etcd >/dev/null || missing+=(etcd-server)
[ "${1:-}" != "--h2" ] || command -v h2load >/dev/null || missing+=(nghttp2-client)
[ "${1:-}" != "--instructions" ] || command -v h2load >/dev/null || missing+=(nghttp2-client)
[ "${1:-}" != "--instructions" ] || command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -q >&2
    # Debian starts the nginx and haproxy services after installing them where it can;
    # RUNLEVEL=1 tells invoke-rc.d not to (the comparison starts its own, on other ports).
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -q "${missing[@]}" >&2
fi

if [ "${1:-}" = "--syscalls" ]; then
    shift
    command -v perf >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"; $sudo apt-get install -y -q linux-perf >&2; }
    cargo build --release --bin tcp-lb --bin http-lb --bin dummy-server --bin certs >&2
    exec python3 benches/compare/syscalls.py "$@"
fi
if [ "${1:-}" = "--edge" ]; then
    shift
    cargo build --release --bin http-lb --bin dummy-server >&2
    exec python3 benches/compare/edge.py "$@"
fi
if [ "${1:-}" = "--etcd" ]; then
    shift
    cargo build --release --bin tcp-lb --bin http-lb >&2
    exec python3 benches/compare/etcd.py "$@"
fi
if [ "${1:-}" = "--farm" ]; then
    shift
    cargo build --release --bin ssl-farm --bin tcp-lb --bin http-lb --bin dummy-server >&2
    exec python3 benches/compare/farm.py "$@"
fi
if [ "${1:-}" = "--h2" ]; then
    shift
    cargo build --release --bin http-lb --bin dummy-server >&2
    exec python3 benches/compare/h2.py "$@"
fi
if [ "${1:-}" = "--instructions" ]; then
    shift
    cargo build --release --bin http-lb --bin dummy-server >&2
    exec python3 benches/compare/instructions.py "$@"
fi
if [ "${1:-}" = "--http" ]; then
    shift
    cargo build --release --bin http-lb --bin dummy-server >&2
    exec python3 benches/compare/http.py "$@"
fi
cargo build --release --bin tcp-lb --bin dummy-server --bin certs >&2
exec python3 benches/compare/compare.py "$@"
