"""Calls to the warehouse service's routes, for the DAGs' tasks: loads, checks, compactions, reconciliations.

The service owns the DuckDB file (docs/warehouse.md), so every write goes through it over HTTP,
authenticated by the machine's admin token when one is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone

DEFAULT_URL = "http://127.0.0.1:18100"


def call(method: str, path: str, body: dict | None = None, timeout: float = 60,
         environ: Mapping[str, str] = os.environ) -> dict:
    """GET or POST ``path`` on the warehouse service; return its JSON, or raise with what it answered."""
    import requests

    headers = {}
    if environ.get("WAREHOUSE_ADMIN_TOKEN"):
        headers["Authorization"] = f"Bearer {environ['WAREHOUSE_ADMIN_TOKEN']}"
    url = environ.get("WAREHOUSE_URL", DEFAULT_URL) + path
    if method == "GET":
        response = requests.get(url, headers=headers, timeout=timeout)
    else:
        response = requests.post(url, json=body, headers=headers, timeout=timeout)
    if response.status_code >= 400:
        raise RuntimeError(f"warehouse answered {response.status_code} to {path}: {response.text.strip()}")
    return response.json()


def require_quality(start: str, end: str, environ: Mapping[str, str] = os.environ) -> None:
    """Run the warehouse's data-quality checks over [start, end); raise ValueError naming each failure."""
    report = call("POST", "/internal/checks", {"start": start, "end": end}, timeout=300, environ=environ)
    if not report["passed"]:
        raise ValueError("data-quality checks failed: " + "; ".join(report["failures"]))


def watermark(environ: Mapping[str, str] = os.environ) -> datetime | None:
    """The rollup's watermark (UTC): the minute fct_clicks_minute is complete up to; None before any load."""
    value = call("GET", "/healthz", timeout=30, environ=environ)["complete_through"]
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
