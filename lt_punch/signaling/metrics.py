"""The signaling server's counters, and their Prometheus view for ``GET /metrics``.

:class:`Counters` is plain data that the server and its dispatcher increment;
:func:`metrics_registry` exposes a ``stats()`` snapshot (the body of ``GET /stats``) as
Prometheus families, computed on each scrape so the two never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Counters", "StatsCollector", "metrics_registry"]

Stats = Callable[[], dict[str, Any]]
"""A server's ``stats()``: the snapshot ``GET /stats`` serves."""


@dataclass
class Counters:
    """Totals since the server started."""

    connections: int = 0
    """Connections accepted (including those refused at once for their address)."""
    received: int = 0
    """Websocket messages received."""
    relayed: int = 0
    """``relay`` messages delivered (to a local peer or handed to another node)."""
    errors: Counter[str] = field(default_factory=Counter)
    """``error`` replies sent, by code."""
    closed: Counter[str] = field(default_factory=Counter)
    """Connections the server closed, by reason (an error code)."""


def metrics_registry(stats: Stats) -> CollectorRegistry:
    """A registry with one :class:`StatsCollector` over ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return registry


def _by_label(family: Any, name: str, documentation: str, label: str,
              counts: dict[str, Any]) -> Any:
    """A metric family (gauge or counter) with one sample per ``counts`` key."""
    metric = family(name, documentation, labels=[label])
    for key, count in counts.items():
        metric.add_metric([key], count)
    return metric


class StatsCollector(Collector):
    """``GET /metrics``: the counters of :meth:`SignalingServer.stats`."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Any:
        stats = self._stats()
        yield GaugeMetricFamily("lt_punch_signaling_peers", "Registered peers.",
                                value=stats["peers"])
        yield GaugeMetricFamily("lt_punch_signaling_rooms", "Rooms with members.",
                                value=stats["rooms"])
        yield GaugeMetricFamily("lt_punch_signaling_connections", "Open connections.",
                                value=stats["connections"])
        yield _by_label(GaugeMetricFamily, "lt_punch_signaling_peer_states", "Peers by state.",
                        "state", stats["peer_states"])
        yield CounterMetricFamily("lt_punch_signaling_connections_accepted",
                                  "Connections accepted since start.",
                                  value=stats["connections_total"])
        yield CounterMetricFamily("lt_punch_signaling_messages_received",
                                  "Messages received since start.",
                                  value=stats["messages_received"])
        yield CounterMetricFamily("lt_punch_signaling_messages_relayed",
                                  "Relay messages delivered since start.",
                                  value=stats["messages_relayed"])
        yield _by_label(CounterMetricFamily, "lt_punch_signaling_errors",
                        "Error replies by code.", "code", stats["errors"])
        yield _by_label(CounterMetricFamily, "lt_punch_signaling_closed",
                        "Connections closed by the server, by reason.", "reason",
                        stats["closed"])
        yield GaugeMetricFamily("lt_punch_signaling_uptime_seconds", "Seconds since start.",
                                value=stats["uptime"])
        webtorrent = stats["webtorrent"]
        yield GaugeMetricFamily("lt_punch_signaling_webtorrent_peers",
                                "WebTorrent tracker peers.", value=webtorrent["peers"])
        yield GaugeMetricFamily("lt_punch_signaling_webtorrent_swarms",
                                "WebTorrent tracker swarms.", value=webtorrent["swarms"])
        kinds = ("announces", "offers_forwarded", "answers_relayed", "answers_dropped",
                 "scrapes", "failures")
        yield _by_label(CounterMetricFamily, "lt_punch_signaling_webtorrent_messages",
                        "WebTorrent tracker messages since start, by kind.", "kind",
                        {kind: webtorrent[kind] for kind in kinds})
