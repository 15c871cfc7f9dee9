"""``/metrics``: the shared counters as Prometheus text, served by the sidecar.

The same server answers the probes: ``/healthz`` is 200 only while every
worker runs the config generation the master made current (503 during a
reload or DNS change that has not reached every worker, and before the
first workers are up): a readiness probe.  ``/livez`` is 200 while the
master lives: a liveness probe.

A custom collector sums every slot of the MetricsBlock at scrape time, so a
scrape costs one pass over the block and nothing on the data path.  (Not
prometheus-client's multiprocess mode: its files pile up and slow scrapes.)

The HTTP server runs on its own thread of the sidecar, so health probes never
wait on a scrape.  It is bounded: at most ``MAX_SCRAPES`` connections are
served at once (more are closed at once), each socket operation times out
after ``IO_TIMEOUT`` and a connection older than ``MAX_CONNECTION_TIME`` is
shut down, so a slow or stuck client cannot hold the endpoint.  The
listening socket belongs to the master, which binds it before forking: a
restarted sidecar serves again at once, and scrapes that arrive meanwhile
wait in the listen backlog rather than being refused.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mcrouter.hosttable import HostTable
from mcrouter.metrics import Histogram, MetricsBlock, readiness
from mcrouter.stats import COUNTER, FAMILIES, HISTOGRAM, Counter, Reading

MAX_SCRAPES = 16
IO_TIMEOUT = 2.0
MAX_CONNECTION_TIME = 5.0


def _buckets(h: Histogram) -> list[tuple[str, int]]:
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.buckets]


class RouterCollector:
    """Every ``mcrouter_*`` family of ``stats.COUNTERS``, computed from one
    snapshot of the block."""

    def __init__(self, block: MetricsBlock, table: HostTable) -> None:
        self.block = block
        self.table = table

    def collect(self) -> Iterator[Metric]:
        reading = Reading(self.table, self.block)
        for counter in FAMILIES:
            yield family(counter, reading)


def family(counter: Counter, reading: Reading) -> Metric:
    """One row of the table as a Prometheus family, with every series it has now."""
    name, doc, labels = counter.metric, counter.help, counter.labels
    if counter.kind == HISTOGRAM:
        histograms = HistogramMetricFamily(name, doc, labels=labels)
        for values, hist in counter.series(reading):
            assert isinstance(hist, Histogram)
            histograms.add_metric(values, _buckets(hist), hist.sum_seconds)
        return histograms
    metric = (CounterMetricFamily(name, doc, labels=labels) if counter.kind == COUNTER
              else GaugeMetricFamily(name, doc, labels=labels))
    for values, value in counter.series(reading):
        assert not isinstance(value, Histogram)
        metric.add_metric(values, value)
    return metric


def registry_for(block: MetricsBlock, table: HostTable) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(block, table))
    return registry


class _Handler(BaseHTTPRequestHandler):
    server: "MetricsServer"
    timeout = IO_TIMEOUT                 # every read and write of the connection
    protocol_version = "HTTP/1.0"        # one request per connection

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = readiness(self.server.block)
            self._send(200 if ok else 503, f"{'ok' if ok else 'not ready'}: {why}\n".encode(),
                       "text/plain")
        elif path == "/livez":
            alive = os.getppid() == self.server.master_pid
            self._send(200 if alive else 503, b"ok\n" if alive else b"master gone\n",
                       "text/plain")
        else:
            self._send(404, b"not found; try /metrics, /healthz or /livez\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass                             # no per-request logging


class MetricsServer(ThreadingHTTPServer):
    """A bounded threading HTTP server on a socket the master bound."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, registry: CollectorRegistry,
                 block: MetricsBlock) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.registry = registry
        self.block = block
        self.master_pid = os.getppid()
        self.slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self.active: dict[socket.socket, float] = {}
        self.lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)      # too many at once: refuse, do not queue
            return
        with self.lock:
            self.active[request] = time.monotonic()
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.active.pop(request, None)
            self.slots.release()

    def service_actions(self) -> None:
        """Between polls: cut connections that have lasted too long."""
        now = time.monotonic()
        with self.lock:
            stale = [s for s, t in self.active.items() if now - t > MAX_CONNECTION_TIME]
        for s in stale:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve_metrics(sock: socket.socket, block: MetricsBlock, table: HostTable) -> MetricsServer:
    """Serve ``/metrics`` on ``sock`` from a daemon thread; returns the server."""
    sock.setblocking(True)
    server = MetricsServer(sock, registry_for(block, table), block)
    threading.Thread(target=server.serve_forever, args=(0.5,), name="metrics",
                     daemon=True).start()
    return server
