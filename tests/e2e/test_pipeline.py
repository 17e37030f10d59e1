"""One click over HTTP, rolled up by a DAG run that Airflow executes, counted once in the warehouse."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from click_api import config
from click_api.storage import Ad, CassandraStore, connect
from click_api.tokens import Impression, mint, new_impression_id
from infra import airflow_ui
from infra.airflow_api import login_from_env
from tests.e2e.conftest import DAG, run_rollup
from tests.services import click_base_url, unique, warehouse_sql

pytestmark = pytest.mark.e2e


# Each table's rows of a UTC day (load times aside), as a count and an order-independent hash.
FACTS = "* EXCLUDE (loaded_at)"
DAY_TABLES = {  # table: (its time column, the columns compared)
    "fct_clicks_minute": ("minute_at", FACTS), "stg_clicks_minute_users": ("minute_at", "*"),
    "fct_clicks_hour": ("hour_at", FACTS), "fct_clicks_day": ("day_at", FACTS),
}


def day_digest(moment: datetime) -> dict[str, list]:
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    bounds = [day.isoformat(), (day + timedelta(days=1)).isoformat()]
    digest = {}
    for table, (column, columns) in DAY_TABLES.items():
        rows = f"SELECT {columns} FROM {table} WHERE {column} >= ? AND {column} < ?"
        digest[table] = warehouse_sql(f"SELECT count(*), sum(hash(t))::VARCHAR FROM ({rows}) t", bounds)
    digest["dim_ads"] = warehouse_sql("SELECT count(*), sum(hash(t))::VARCHAR FROM dim_ads t")
    return digest


def test_one_click_is_counted_once_by_an_airflow_run(airflow, tmp_path):
    cfg = config.from_env(os.environ)
    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    store = CassandraStore(cluster.connect(), cfg["CASSANDRA_KEYSPACE"], 3600, cfg["RAW_CLICK_SHARDS"])
    ad = Ad(unique("e2e-ad"), unique("e2e-adv"), "https://landing.example.com/e2e")
    store.put_ad(ad)
    cluster.shutdown()

    impression = Impression(new_impression_id(), ad.ad_id, int(time.time()), cfg["SIGNING_KEY_ID"], "e2e-user")
    clicked = datetime.now(timezone.utc)
    response = requests.get(f"{click_base_url()}/click", params={"t": mint(impression, cfg["SIGNING_KEYS"])},
                            headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0"},
                            allow_redirects=False, timeout=10)
    assert response.status_code == 302

    start = clicked.replace(second=0, microsecond=0)
    end = start + timedelta(minutes=1)
    query = ("SELECT minute_at, billable_clicks, duplicate_clicks, unique_users FROM fct_clicks_minute "
             "WHERE ad_id = ? ORDER BY minute_at")
    run_id = run_rollup(airflow, start, end)
    first = warehouse_sql(query, [ad.ad_id])
    assert first == [[start.replace(tzinfo=None).isoformat(), 1, 0, 1]]

    # A person opening Airflow's UI sees the DAG with that run, successful.
    screenshot = tmp_path / "airflow-runs.png"
    assert airflow_ui.look(*login_from_env(), DAG, run_id, screenshot) == "Success"
    assert screenshot.read_bytes().startswith(b"\x89PNG")

    # Clearing the run and letting Airflow run it again changes nothing, in any table of that day.
    before = day_digest(start)
    airflow.clear(DAG, run_id)
    assert airflow.wait_for_run(DAG, run_id, timeout=900) == "success"
    assert warehouse_sql(query, [ad.ad_id]) == first
    assert day_digest(start) == before
    assert warehouse_sql("SELECT billable_clicks FROM fct_clicks_hour WHERE ad_id = ?", [ad.ad_id]) == [[1]]
