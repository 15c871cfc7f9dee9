"""Registers the shared fixtures (defined in tests/support/) and the markers.

The helpers themselves live in the ``support`` package (tests/support/),
importable because pyproject's ``[tool.pytest.ini_options] pythonpath``
puts tests/ on the path: ``from support import Client, pool_config``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.fake_upstream import fake  # noqa: F401 - registered here for every test
from support.fixtures import _watchdog, loop_factory, memcached, pki, router, run, tls_memcached  # noqa: F401 - registered here
from support.processes import MEMCACHED


def pytest_configure(config: pytest.Config) -> None:
    # Every router a test starts serves no /metrics unless the test asks
    # (``metrics=True``): the default :9090 would collide between routers.
    os.environ["MCROUTER_METRICS_LISTEN_ADDR"] = "off"
    config.addinivalue_line(
        "markers", "integration: runs real router processes (tests that need a memcached "
                   "binary are skipped when it is absent)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason="memcached is not installed (apt-get install memcached); "
                                   "integration tests need a real memcached binary")
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if here / "integration" in path.parents or here / "faults" in path.parents:
            item.add_marker(pytest.mark.integration)
        if MEMCACHED is None and "memcached" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
