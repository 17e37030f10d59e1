"""Helpers for tests that use the real services started by `make up` (settings from infra/env.sh)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def require_env() -> None:
    missing = [v for v in ("CASSANDRA_PORT", "REDIS_PORT", "CLICK_API_PORT", "WAREHOUSE_URL") if v not in os.environ]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: run these tests with `make test` (it sources infra/env.sh)")


def click_base_url() -> str:
    return f"http://127.0.0.1:{os.environ['CLICK_API_PORT']}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def infra(script: str, action: str) -> None:
    """Run an infra script (start/stop a real service) and fail loudly if it fails."""
    subprocess.run([str(REPO / "infra" / f"{script}.sh"), action], check=True, timeout=300)


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_click_workers_reach_cassandra(timeout: float) -> None:
    """Wait until every gunicorn worker of the click service has its Cassandra session back.

    Each worker reconnects on its own schedule after an outage; until it has, it answers 503 for
    ads it has not cached. A fresh connection per probe lets the workers' accept loop spread them.
    """
    from click_api import gunicorn_conf

    reached: set[int] = set()

    def all_reached() -> bool:
        body = requests.get(f"{click_base_url()}/readyz", headers={"Connection": "close"}, timeout=10).json()
        if body["checks"]["cassandra"] == "ok":
            reached.add(body["worker"])
        return len(reached) >= gunicorn_conf.workers

    wait_for(all_reached, timeout, f"all {gunicorn_conf.workers} click service workers to reach Cassandra", 0.1)


def warehouse_sql(sql: str, params: list | None = None) -> list[list]:
    response = requests.post(f"{os.environ['WAREHOUSE_URL']}/sql", json={"sql": sql, "params": params}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["rows"]
