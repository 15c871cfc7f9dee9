"""Helpers shared by the tests, imported normally (pyproject puts tests/ on
pytest's path): ``from support import Client, pool_config, wait_until``.

The package re-exports the everyday names of ``client`` (the blocking
loopback client, byte renderings) and ``processes`` (memcached and router
processes, ports, waits).  The rest is imported from its module:

* ``fixtures``: the ``memcached``, ``router`` and watchdog fixtures (tests/conftest.py
  registers them); ``fake_upstream``: a misbehaving fake memcached and its ``fake`` fixture
* ``loadgen``: bounded background load; ``scrape``: parsed /metrics
* ``dnszone``: a loopback DNS server; ``dns_shim``: the router with controlled resolution
  (run as a script); ``srv``: SRV publication and load for the discovery tests
* ``twemproxy_probe``: where a real nutcracker puts keys
* ``hostile``: RSS and never-reading clients; ``cli``: running the ``mcrouter`` command;
  ``polling``: retrying a request until it settles
* ``numeric_cases``/``numeric_expected``: the numeric-limits table and memcached's replies;
  ``corpus_format``/``parser_events``: the parser corpus and its rendering
"""
from .client import HOST, READ_TIMEOUT, Client, connect, first_difference, show
from .processes import (MEMCACHED, REPO, START_TIMEOUT, STOP_TIMEOUT, Memcached, Router,
                        children_of, free_ipv6_port, free_port, owner, pool_config,
                        port_closed, python_apart, wait_port, wait_until)

__all__ = ["HOST", "READ_TIMEOUT", "Client", "connect", "first_difference", "show",
           "MEMCACHED", "REPO", "START_TIMEOUT", "STOP_TIMEOUT", "Memcached", "Router",
           "children_of", "free_ipv6_port", "free_port", "owner", "pool_config", "port_closed",
           "python_apart", "wait_port", "wait_until"]
