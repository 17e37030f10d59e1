"""Fixtures for tests that drive DAG runs through Airflow's REST API."""

from __future__ import annotations

from datetime import datetime

import pytest

from infra.airflow_api import AirflowAPI
from tests.services import require_env

DAG = "rollup_clicks_minute"


@pytest.fixture(scope="session")
def airflow():
    require_env()
    api = AirflowAPI.from_env()
    api.wait_for_dag(DAG)
    api.set_paused(DAG, False)
    yield api
    api.set_paused(DAG, True)


def run_rollup(airflow: AirflowAPI, start: datetime, end: datetime) -> str:
    run_id = airflow.trigger(DAG, start, end, note="e2e test")
    state = airflow.wait_for_run(DAG, run_id, timeout=900)
    assert state == "success", f"{run_id} ended {state}: {airflow.task_states(DAG, run_id)}"
    return run_id


