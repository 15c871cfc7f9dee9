"""Reading a router's /metrics in tests: parsed with prometheus-client's own
text parser, so every test also checks that the exposition parses."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One scrape: ``s["mcrouter_requests_total", {"cmd": "get"}]`` → value
    (0 for a series not exposed, as Prometheus treats an absent counter)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset], float] = {}
        self.names: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.names.add(family.name)
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def __getitem__(self, key: str | tuple[str, dict]) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **match: str) -> float:
        """Sum of every series of ``name`` whose labels include ``match``."""
        return sum(v for (n, labels), v in self.values.items()
                   if n == name and set(match.items()) <= labels)

    def delta(self, before: "Scrape", key: str | tuple[str, dict]) -> float:
        return self[key] - before[key]
