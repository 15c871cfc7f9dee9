"""mcrouter.client: a memcached client on the router's own engine.

``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio) speak the
text and meta protocols through the router's compiled request queue and
reply scanner (``_ring.pyx``, ``_parser.pyx``), and place keys with the
router's own pool checking and continuum: a key set through a client is
where a router with the same pool looks for it.  See the README's
"Client" section.
"""
from __future__ import annotations

from mcrouter.client.aio import AsyncClient
from mcrouter.client.blocking import Client
from mcrouter.client.codec import PickleSerde, RawSerde, Serde
from mcrouter.client.errors import (MemcacheClientError, MemcacheConnectionError, MemcacheError,
                                    MemcacheIllegalInputError, MemcachePartialError,
                                    MemcacheProtocolError, MemcacheServerDownError,
                                    MemcacheServerError, MemcacheTimeoutError,
                                    MemcacheUnknownCommandError)
from mcrouter.client.meta import Ma, Md, Me, MetaDebug, MetaRequest, MetaResult, Mg, Mn, Ms
from mcrouter.client.placement import Placement

__all__ = [
    "AsyncClient", "Client", "Placement", "PickleSerde", "RawSerde", "Serde",
    "MemcacheError", "MemcacheConnectionError", "MemcacheServerDownError", "MemcacheTimeoutError",
    "MemcacheServerError", "MemcacheClientError", "MemcacheIllegalInputError",
    "MemcacheUnknownCommandError", "MemcacheProtocolError", "MemcachePartialError",
    "MetaRequest", "MetaResult", "MetaDebug", "Mg", "Ms", "Md", "Ma", "Mn", "Me",
]
