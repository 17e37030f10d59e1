"""Fixtures of the DAG tests: the repo's dags/ folder parsed into a DagBag, and a fake warehouse service."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Settings the DAGs read at parse time: cleared, so each test starts from the defaults.
DAG_SETTINGS = (
    "ROLLUP_SCHEDULE", "ROLLUP_LATENESS_S", "ROLLUP_LOOKBACK_S", "ROLLUP_MAX_WINDOW_S", "ROLLUP_START_DATE", "CLICK_TOKEN_LIFETIME_S",
    "CLICK_DEDUP_TTL_S", "RECONCILE_DUPLICATE_HORIZON_S", "RAW_CLICK_TTL_S", "DUMP_RETENTION_S",
    "RECONCILE_DRIFT_THRESHOLD", "RECONCILE_MARGIN_S", "RECONCILE_START_DATE", "CLICK_CLOCK_SKEW_S",
)


@pytest.fixture
def parse(monkeypatch, tmp_path_factory, tmp_path):
    """Parse dags/ into a DagBag, with a throwaway AIRFLOW_HOME and staging folder; ``parse(NAME=value)`` sets settings."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    monkeypatch.setenv("ROLLUP_STAGING_DIR", str(tmp_path / "staging"))
    for name in DAG_SETTINGS:
        monkeypatch.delenv(name, raising=False)

    def run(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # Importing Airflow replaces the root logger's handlers with its own; put pytest's back so
        # the rest of the session logs as before.
        handlers, level = logging.root.handlers[:], logging.root.level
        from airflow.models import DagBag

        logging.root.handlers[:], logging.root.level = handlers, level
        return DagBag(dag_folder=str(REPO / "dags"))

    return run


@pytest.fixture
def warehouse(monkeypatch):
    """Record the tasks' calls to the warehouse service and answer each with the next canned response."""
    import requests

    calls, answers = [], []

    def post(url, json, headers, timeout):
        calls.append({"method": "POST", "url": url, "json": json, "headers": headers})
        return answers.pop(0)

    def get(url, headers, timeout):
        calls.append({"method": "GET", "url": url, "json": None, "headers": headers})
        return answers.pop(0)

    monkeypatch.setattr(requests, "post", post)
    monkeypatch.setattr(requests, "get", get)
    monkeypatch.setenv("WAREHOUSE_URL", "http://warehouse.test")
    monkeypatch.setenv("WAREHOUSE_ADMIN_TOKEN", "tok")
    return calls, answers
