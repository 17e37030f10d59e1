"""Prometheus metrics of the click service (multi-process aware under gunicorn)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CLICKS = Counter("clickagg_clicks_total", "Click requests by outcome (status or error reason)", ["outcome"])
LATENCY = Histogram(
    "clickagg_click_seconds",
    "Time to answer /click",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0),
)
SPOOLED = Counter("clickagg_clicks_spooled_total", "Clicks written to the local spool instead of Cassandra")
REPLAYED = Counter("clickagg_clicks_replayed_total", "Spooled clicks replayed into Cassandra")
REPLAYED_LATE = Counter("clickagg_clicks_replayed_late_total",
                        "Spooled clicks replayed after every minute rollup had passed their minute")
SPOOL_DEPTH = Gauge("clickagg_spool_depth", "Clicks waiting in the local spool", multiprocess_mode="max")


def render() -> tuple[bytes, str]:
    """The exposition text, merged across gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
