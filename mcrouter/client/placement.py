"""Which server a key lives on: exactly where a router's PoolRoute puts it.

No placement code of its own: the pool is checked by ``config``'s pool
checker (``pool_from_values`` for Python values, ``load_config`` for a
router.yaml) and the continuum is ``routes.pool_hasher``'s ``Hasher``,
the same objects a router builds for that pool.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mcrouter._hash import Hasher
from mcrouter.config import ConfigError, HostAddr, PoolConfig, load_config, pool_from_values
from mcrouter.routes import pool_hasher

Server = str | tuple[str, int]


def server_text(server: Server) -> str:
    """``host:port`` (``[v6]:port``) for a string or a (host, port) pair."""
    if isinstance(server, str):
        return server
    host, port = server
    return str(HostAddr(host, int(port)))


class Placement:
    """A pool's servers and its continuum; ``index(key)`` is the slot of the
    server a router with this pool would send ``key`` to."""

    def __init__(self, pool: PoolConfig) -> None:
        if not pool.servers:
            raise ConfigError(f"pool {pool.name!r} has no servers yet (it follows DNS); "
                              "give the client its servers, or a pool that lists them")
        self.pool = pool
        self.servers: tuple[HostAddr, ...] = pool.servers
        self.hasher: Hasher = pool_hasher(pool)
        self.rehash = pool.on_down.action == "rehash"
        self.single = len(pool.servers) == 1

    @classmethod
    def from_values(cls, servers: Sequence[Server], hash: Mapping[str, Any] | None = None,
                    weights: Sequence[int] | None = None, on_down: str = "fail") -> "Placement":
        """The placement of a pool written as ``Client(servers, hash=...)`` takes it."""
        if isinstance(servers, (str, bytes)):
            raise ConfigError("Client(servers): servers must be a list of host:port; "
                              f"write [{servers!r}]")
        options: dict[str, Any] = {"servers": [server_text(s) for s in servers]}
        if hash:
            options["hash"] = dict(hash)
        if weights is not None:
            options["weights"] = list(weights)
        if on_down != "fail":
            options["on_down"] = on_down
        return cls(pool_from_values("client", options, "Client(servers, hash=...)"))

    @classmethod
    def from_config(cls, path: str, pool: str) -> "Placement":
        """The placement of pool ``pool`` of the router.yaml at ``path``."""
        config = load_config(path)
        if pool not in config.pools:
            raise ConfigError(f"{path}: unknown pool {pool!r}; defined pools: "
                              + (", ".join(config.pools) or "none"))
        return cls(config.pools[pool])

    def index(self, key: bytes) -> int:
        """The slot of ``key``'s server (a key as sent: its prefix included)."""
        return 0 if self.single else self.hasher.index(key)

    def index_up(self, key: bytes, up: bytes) -> int:
        """``index`` with the down servers (``up[i] == 0``) skipped, as a
        router pool with ``on_down: rehash`` does; -1 if none is up."""
        return self.hasher.index_up(key, up)
