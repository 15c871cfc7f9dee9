#!/usr/bin/env bash
# Quick start: install what is missing (Debian's memcached, this package with
# its compiled extensions), start local memcached servers for the local hosts
# of router.yaml that nobody listens on, and run the router in the foreground.
# Extra arguments go to `mcrouter run` (e.g. -l 127.0.0.1:8080 -n 2).
set -euo pipefail
cd "$(dirname "$0")"
config=router.yaml
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

if ! command -v memcached >/dev/null 2>&1; then
    echo "quickstart: installing memcached" >&2
    $sudo apt-get update -qq && $sudo apt-get install -y -qq memcached >/dev/null
fi
if ! python3 -c 'import mcrouter._parser, mcrouter._ring' >/dev/null 2>&1; then
    echo "quickstart: installing mcrouter (builds the Cython extensions)" >&2
    python3 -m pip install -q -e '.[test]'
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# local host:port entries of the pool that nobody listens on yet
for port in $(python3 -c 'import sys; from mcrouter.config import load_config
c = load_config(sys.argv[1])
print(" ".join(str(h.port) for h in c.ordered_pool if h.host in ("127.0.0.1", "localhost", "::1")))' "$config"); do
    if ! python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5)' "$port" 2>/dev/null; then
        echo "quickstart: starting memcached on 127.0.0.1:$port" >&2
        memcached -l 127.0.0.1 -p "$port" -U 0 -u "$(id -un)" &
        pids+=($!)
    fi
done
mcrouter run -f "$config" "$@" &
router=$!
trap 'kill -TERM "$router" 2>/dev/null' INT TERM
wait "$router" || true      # returns early when a signal arrives: wait again for the drain
wait "$router" 2>/dev/null || true
