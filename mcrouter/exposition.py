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
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mcrouter import __version__
from mcrouter._metrics import (ERROR_REASONS, G_BYTES_IN, G_BYTES_OUT, G_CLIENTS,
                               G_CLIENTS_REJECTED, G_CLIENTS_TOTAL, G_GENERATION,
                               G_RELOAD_LAST_OK, G_WORKERS_CURRENT,
                               G_RELOADS_FAILED, G_RELOADS_OK, G_REPLIES, G_ROUTES,
                               G_SIDECAR_RESTARTS, G_START_TIME, G_WORKER_RESTARTS, G_WORKERS,
                               H_CONNS, H_ERRORS, H_HITS, H_MISSES, REPLY_REASONS,
                               ROUTE_DECISIONS)
from mcrouter.hosttable import DOWN, HostTable
from mcrouter.metrics import Histogram, MetricsBlock, Snapshot, readiness

MAX_SCRAPES = 16
IO_TIMEOUT = 2.0
MAX_CONNECTION_TIME = 5.0


def _buckets(h: Histogram) -> list[tuple[str, int]]:
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.buckets]


class RouterCollector:
    """Every ``mcrouter_*`` series, computed from one snapshot of the block."""

    def __init__(self, block: MetricsBlock, table: HostTable) -> None:
        self.block = block
        self.table = table

    def collect(self) -> Iterator[Metric]:
        snap = self.block.snapshot(self.table.used)
        hosts = [h for h in self.table.statuses() if h.slot < snap.used]     # free slots: none

        info = GaugeMetricFamily("mcrouter_build_info", "The router's version.",
                                 labels=["version", "python"])
        info.add_metric([__version__, sys.version.split()[0]], 1)
        yield info
        yield GaugeMetricFamily("mcrouter_start_time_seconds", "When the router started (unix time).",
                                value=snap.value(G_START_TIME))
        yield GaugeMetricFamily("mcrouter_workers", "Worker processes the master keeps running.",
                                value=snap.value(G_WORKERS))
        yield GaugeMetricFamily("mcrouter_config_generation", "The config generation the master "
                                "made current (a reload or a DNS change adds one).",
                                value=snap.value(G_GENERATION))
        yield GaugeMetricFamily("mcrouter_workers_current", "Workers that confirmed the current "
                                "config generation.", value=snap.value(G_WORKERS_CURRENT))

        requests = CounterMetricFamily("mcrouter_requests", "Client requests answered, by "
                                       "command (a multi-key get counts once).", labels=["cmd"])
        duration = HistogramMetricFamily("mcrouter_request_duration_seconds", "From reading a "
                                         "client request to queueing its reply.", labels=["cmd"])
        for cmd, hist in snap.requests().items():
            requests.add_metric([cmd], hist.count)
            duration.add_metric([cmd], _buckets(hist), hist.sum_seconds)
        yield requests
        yield duration

        yield GaugeMetricFamily("mcrouter_client_connections", "Client connections open now.",
                                value=snap.gauge(G_CLIENTS))
        yield CounterMetricFamily("mcrouter_client_connections_accepted", "Client connections "
                                  "accepted.", value=snap.value(G_CLIENTS_TOTAL))
        yield CounterMetricFamily("mcrouter_client_connections_rejected", "Client connections "
                                  "refused: past -c, or out of file descriptors.",
                                  value=snap.value(G_CLIENTS_REJECTED))
        yield CounterMetricFamily("mcrouter_client_received_bytes", "Bytes read from clients.",
                                  value=snap.value(G_BYTES_IN))
        yield CounterMetricFamily("mcrouter_client_sent_bytes", "Bytes written to clients.",
                                  value=snap.value(G_BYTES_OUT))
        yield _by_label("mcrouter_router_replies", "Replies the router made itself, by reason.",
                        "reason", _run(REPLY_REASONS, G_REPLIES), snap)
        yield _by_label("mcrouter_route_decisions", "Route decisions: failover to a later host, "
                        "another host asked after a miss, fan-out to several hosts.",
                        "decision", _run(ROUTE_DECISIONS, G_ROUTES), snap)

        sent = CounterMetricFamily("mcrouter_upstream_requests", "Requests queued to an "
                                   "upstream host.", labels=["cmd", "host"])
        updur = HistogramMetricFamily("mcrouter_upstream_request_duration_seconds", "Upstream "
                                      "round trips that got their reply in time.",
                                      labels=["cmd", "host"])
        errors = CounterMetricFamily("mcrouter_upstream_errors", "Upstream failures: requests "
                                     "timed out, connects failed, connections broken, replies "
                                     "that cannot answer their request (parse).",
                                     labels=["host", "reason"])
        conns = GaugeMetricFamily("mcrouter_upstream_connections", "Upstream connections up "
                                  "now.", labels=["host"])
        hits = CounterMetricFamily("mcrouter_get_hits", "Get-family replies with a value.",
                                   labels=["host"])
        misses = CounterMetricFamily("mcrouter_get_misses", "Get-family replies without a value.",
                                     labels=["host"])
        up = GaugeMetricFamily("mcrouter_host_up", "1 while the shared verdict says the host is "
                               "up.", labels=["host"])
        for host in hosts:
            for cmd, (n, hist) in snap.upstream(host.slot).items():
                sent.add_metric([cmd, host.key], n)
                if hist.count:
                    updur.add_metric([cmd, host.key], _buckets(hist), hist.sum_seconds)
            for i, reason in enumerate(ERROR_REASONS):
                errors.add_metric([host.key, reason], snap.host_value(host.slot, H_ERRORS + i))
            conns.add_metric([host.key], snap.host_gauge(host.slot, H_CONNS))
            hits.add_metric([host.key], snap.host_value(host.slot, H_HITS))
            misses.add_metric([host.key], snap.host_value(host.slot, H_MISSES))
            up.add_metric([host.key], 0 if self.table.state(host.slot) == DOWN else 1)
        yield from (sent, updur, errors, conns, hits, misses, up)
        yield GaugeMetricFamily("mcrouter_healthy_hosts", "Upstream hosts up.",
                                value=sum(1 for host in hosts if self.table.state(host.slot) != DOWN))

        yield _by_label("mcrouter_restarts", "Child processes the master restarted after they "
                        "died.", "process",
                        [("worker", G_WORKER_RESTARTS), ("sidecar", G_SIDECAR_RESTARTS)], snap)
        yield _by_label("mcrouter_config_reloads", "Config reloads (a DNS pool's change counts as "
                        "one), by result.", "result",
                        [("success", G_RELOADS_OK), ("failure", G_RELOADS_FAILED)], snap)
        yield GaugeMetricFamily("mcrouter_config_last_reload_success_timestamp_seconds",
                                "When the config in force was loaded (unix time).",
                                value=snap.value(G_RELOAD_LAST_OK))


def _run(values: tuple[str, ...], at: int) -> list[tuple[str, int]]:
    """Label values of consecutive words from ``at``."""
    return [(value, at + i) for i, value in enumerate(values)]


def _by_label(name: str, doc: str, label: str, words: list[tuple[str, int]],
              snap: Snapshot) -> CounterMetricFamily:
    """A counter with one series per (label value, word of the global part)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, word in words:
        family.add_metric([value], snap.value(word))
    return family


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
