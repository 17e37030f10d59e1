"""Fixtures for tests that drive DAG runs through Airflow's REST API."""

from __future__ import annotations

import os
from datetime import datetime

import pytest

from infra.airflow_api import AirflowAPI
from tests.services import require_env

DAG = "rollup_clicks_minute"


@pytest.fixture(scope="session")
def airflow():
    require_env()
    api = AirflowAPI(f"http://127.0.0.1:{os.environ['AIRFLOW_PORT']}", os.environ["AIRFLOW_USER"],
                     os.environ["AIRFLOW_PASSWORD"])
    api.wait_for_dag(DAG)
    api.set_paused(DAG, False)
    yield api
    api.set_paused(DAG, True)


def run_rollup(airflow: AirflowAPI, start: datetime, end: datetime) -> str:
    run_id = airflow.trigger(DAG, start, end, note="e2e test")
    state = airflow.wait_for_run(DAG, run_id, timeout=900)
    assert state == "success", f"{run_id} ended {state}: {airflow.task_states(DAG, run_id)}"
    return run_id


