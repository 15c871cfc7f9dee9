"""Runs ``python -m mcrouter`` with name resolution the test controls.

``socket.getaddrinfo`` answers a name listed in the JSON file named by
MCROUTER_TEST_HOSTS with the address given there (or fails the lookup when
the address is null); every other name resolves as usual.  The file is read
at every lookup, so the test changes DNS by rewriting it.  Only resolution
is replaced: every line of the router that runs is the real one.

Run as a script with the checkout on PYTHONPATH (tests/faults/test_health_faults.py
gives it ``PYTHONPATH=<repo>``), so the router is this checkout's.
"""
import json
import os
import socket
import sys

_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, port, *args, **kwargs):
    with open(os.environ["MCROUTER_TEST_HOSTS"]) as f:
        table = json.load(f)
    if host in table:
        if table[host] is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        host = table[host]
    return _real_getaddrinfo(host, port, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo

if __name__ == "__main__":
    from mcrouter.cli import main
    sys.argv[0] = "mcrouter"
    main()
