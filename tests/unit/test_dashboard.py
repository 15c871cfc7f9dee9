"""The Grafana dashboard asks only for series the router exposes."""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from mcrouter.exposition import registry_for
from mcrouter.hosttable import HostTable
from mcrouter.metrics import MetricsBlock

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"


def exposed_names() -> set[str]:
    table = HostTable(capacity=4)
    table.assign("127.0.0.1:11211")
    text = generate_latest(registry_for(MetricsBlock(workers=1, hosts=4), table)).decode()
    names = set(re.findall(r"^# HELP (\w+)", text, re.M))
    return names | {n[:-len("_total")] for n in names if n.endswith("_total")}


def test_every_dashboard_query_names_an_exposed_series():
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs
            for n in re.findall(r"mcrouter_\w+", e)}
    assert len(used) >= 15
    assert used <= exposed_names(), used - exposed_names()
