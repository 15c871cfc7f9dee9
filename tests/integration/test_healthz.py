"""``/healthz`` and ``/livez`` on the metrics port: the probes a Kubernetes
pod uses.  Ready means every worker runs the generation the master made
current, so a reload that has not reached a worker reads as not ready."""
from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request

import yaml

from support import HOST, pool_config, wait_until
from support.polling import stop_process


def probe(r, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{r.metrics_port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""        # the sidecar serving it restarts on a reload that changes hosts


def test_ready_only_once_every_worker_runs_the_current_generation(memcached, router):
    m1, m2 = memcached(), memcached()
    r = router(pool_config([m1]), workers=2, metrics=True, extra=["--confirm-timeout", "30"])
    assert wait_until(lambda: probe(r, "/healthz")[0] == 200, 10)
    assert probe(r, "/healthz") == (200, "ok: 2 of 2 worker(s) on config generation 1\n")
    assert probe(r, "/livez") == (200, "ok\n")
    stopped = r.worker_pids()[0]            # a child of the router this test started
    stop_process(stopped)
    try:
        r.config_path.write_text(yaml.safe_dump(pool_config([m1, m2])))
        r.signal(signal.SIGHUP)
        assert r.wait_log("generation 2")
        not_ready = (503, "not ready: 1 of 2 worker(s) on config generation 2\n")
        assert wait_until(lambda: probe(r, "/healthz") == not_ready, 10)
        assert wait_until(lambda: probe(r, "/livez")[0] == 200, 10)
        assert probe(r, "/healthz") == not_ready        # and it stays so while the worker lags
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert wait_until(lambda: probe(r, "/healthz")[0] == 200, 10)
    assert probe(r, "/healthz") == (200, "ok: 2 of 2 worker(s) on config generation 2\n")
    assert "mcrouter_config_generation 2.0" in r.scrape()
    assert probe(r, "/nothing")[0] == 404
