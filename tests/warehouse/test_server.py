"""The warehouse service through Flask's test client, on a temp DuckDB file."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta

import duckdb
import pytest

from warehouse import checks, connect, loads, schema
from warehouse.server import config_from_env, create_app

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 1, 1, 10, 0)
MINUTE_LAYOUT = (
    "minute_at TIMESTAMP, ad_id VARCHAR, advertiser_id VARCHAR, billable_clicks BIGINT, duplicate_clicks BIGINT, "
    "expired_clicks BIGINT, invalid_clicks BIGINT, invalid_head_clicks BIGINT, invalid_prefetch_clicks BIGINT, "
    "invalid_bot_clicks BIGINT, unique_users BIGINT"
)
USER_LAYOUT = "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT"
INTERVAL = {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T10:05:00+00:00"}


def write_parquet(path, layout: str, rows) -> None:
    path.parent.mkdir(parents=True)
    mem = duckdb.connect()
    mem.execute(f"CREATE TABLE t ({layout})")
    mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()


def stage(folder, minute_at=T0 + timedelta(minutes=1)) -> str:
    """Write one ad's minute and its users where the rollup job writes them; return the output folder."""
    write_parquet(folder / "minute" / "part-0.parquet", MINUTE_LAYOUT,
                  [(minute_at, "ad-1", "adv-1", 2, 1, 0, 1, 0, 0, 1, 2)])
    write_parquet(folder / "users" / "part-0.parquet", USER_LAYOUT, [(minute_at, "ad-1", 5), (minute_at, "ad-1", 6)])
    return str(folder)


def config(tmp_path, **overrides) -> dict:
    return {"WAREHOUSE_PATH": str(tmp_path / "w.duckdb"), "ADMIN_TOKEN": TOKEN, "THREADS": 1,
            "SQL_ROW_LIMIT": 100, **overrides}


@pytest.fixture
def make_client(tmp_path):
    apps = []

    def make(**overrides):
        app = create_app(config(tmp_path, **overrides))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["batch"].shutdown()
        app.extensions["warehouse"].close()


@pytest.fixture
def client(make_client):
    return make_client()


def sql(client, query: str, params=None):
    return client.post("/sql", json={"sql": query, "params": params})


# Health and auth


def test_healthz_reports_the_watermark(client, tmp_path):
    assert client.get("/healthz").get_json() == {"status": "ok", "complete_through": None}

    client.post("/internal/loads/clicks-minute", json={**INTERVAL, "output": stage(tmp_path / "out")}, headers=AUTH)

    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "complete_through": "2026-01-01T10:05:00"}


@pytest.mark.parametrize("path", ["/internal/loads/clicks-minute", "/internal/checks"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic t"}],
                         ids=["none", "wrong-token", "not-bearer"])
def test_internal_endpoints_need_the_admin_token(client, path, headers):
    response = client.post(path, json={}, headers=headers)

    assert response.status_code == 401
    assert "WAREHOUSE_ADMIN_TOKEN" in response.get_json()["error"]


def test_the_admin_token_opens_internal_endpoints(client):
    response = client.post("/internal/checks", json={}, headers=AUTH)

    assert response.status_code == 200
    assert response.get_json() == {"passed": True, "failures": []}


# Loads


def test_a_valid_load_replaces_the_interval_and_reports_it(client, tmp_path):
    response = client.post(
        "/internal/loads/clicks-minute", json={**INTERVAL, "output": stage(tmp_path / "out")}, headers=AUTH
    )

    assert response.status_code == 200
    body = response.get_json()
    assert {k: body[k] for k in ("start", "end", "rows_deleted", "rows_inserted", "users_inserted", "watermark")} == {
        "start": "2026-01-01T10:00:00", "end": "2026-01-01T10:05:00", "rows_deleted": 0, "rows_inserted": 1,
        "users_inserted": 2, "watermark": "2026-01-01T10:05:00",
    }
    rows = sql(client, "SELECT minute_at, ad_id, billable_clicks, unique_users FROM fct_clicks_minute").get_json()
    assert rows["rows"] == [["2026-01-01T10:01:00", "ad-1", 2, 2]]


def test_loads_and_checks_run_on_the_batch_thread_at_a_lower_priority(make_client, tmp_path, monkeypatch):
    seen = {}

    def recorded(name, work):
        def run(*args, **kwargs):
            seen[name] = (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0))
            return work(*args, **kwargs)
        return run

    monkeypatch.setattr(loads, "load_clicks_minute", recorded("load", loads.load_clicks_minute))
    monkeypatch.setattr(checks, "run_checks", recorded("checks", checks.run_checks))
    client = make_client(BATCH_NICE=4)
    here = os.getpriority(os.PRIO_PROCESS, 0)

    loaded = client.post("/internal/loads/clicks-minute", json={**INTERVAL, "output": stage(tmp_path / "out")},
                         headers=AUTH)
    checked = client.post("/internal/checks", json={}, headers=AUTH)

    assert (loaded.status_code, checked.status_code) == (200, 200)
    assert loaded.get_json()["rows_inserted"] == 1
    for name in ("load", "checks"):
        thread, nice = seen[name]
        assert thread.startswith("warehouse-batch")
        assert nice == min(19, here + 4)
    assert os.getpriority(os.PRIO_PROCESS, 0) == here


def test_a_load_can_leave_the_watermark_alone(client, tmp_path):
    body = {**INTERVAL, "output": stage(tmp_path / "out"), "advance_watermark": False}

    response = client.post("/internal/loads/clicks-minute", json=body, headers=AUTH)

    assert response.status_code == 200
    assert response.get_json()["watermark"] is None
    assert client.get("/healthz").get_json()["complete_through"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"end": INTERVAL["end"], "output": "/x"}, "'start' is required"),
        ({"start": INTERVAL["start"], "output": "/x"}, "'end' is required"),
        ({**INTERVAL}, "'output'"),
        ({**INTERVAL, "output": ""}, "'output'"),
        ({**INTERVAL, "start": 1767261600, "output": "/x"}, "'start' is required"),
        ({**INTERVAL, "start": "yesterday", "output": "/x"}, "yesterday"),
        ({"start": INTERVAL["end"], "end": INTERVAL["start"], "output": "/x"}, "end must be after"),
    ],
    ids=["no-start", "no-end", "no-output", "empty-output", "numeric-start", "bad-start", "reversed"],
)
def test_a_load_with_missing_or_bad_fields_is_a_400(client, body, message):
    response = client.post("/internal/loads/clicks-minute", json=body, headers=AUTH)

    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_a_load_from_a_missing_parquet_folder_is_a_400(client, tmp_path):
    body = {**INTERVAL, "output": str(tmp_path / "never-written")}

    response = client.post("/internal/loads/clicks-minute", json=body, headers=AUTH)

    assert response.status_code == 400
    assert "never-written" in response.get_json()["error"]
    assert sql(client, "SELECT count(*) FROM meta_loads").get_json()["rows"] == [[0]]


def test_a_load_with_rows_outside_its_interval_is_a_400(client, tmp_path):
    body = {**INTERVAL, "output": stage(tmp_path / "out", minute_at=T0 + timedelta(minutes=7))}

    response = client.post("/internal/loads/clicks-minute", json=body, headers=AUTH)

    assert response.status_code == 400
    assert "outside" in response.get_json()["error"]
    assert sql(client, "SELECT count(*) FROM fct_clicks_minute").get_json()["rows"] == [[0]]


# Checks


def defective_warehouse(path, minute_at: datetime) -> None:
    """A warehouse file with one minute row whose unique_users exceed its billable clicks."""
    con = connect(path)
    schema.migrate(con)
    con.execute("INSERT INTO dim_ads VALUES ('ad-1', 'adv-1', ?, ?)", [minute_at, minute_at])
    con.execute(
        "INSERT INTO fct_clicks_minute VALUES (?, 'ad-1', 'adv-1', 1, 0, 0, 0, 0, 0, 0, 3, ?)", [minute_at, minute_at]
    )
    con.close()


def test_checks_report_the_failures_of_the_interval(make_client, tmp_path):
    defective_warehouse(str(tmp_path / "w.duckdb"), T0 + timedelta(minutes=2))
    client = make_client()

    inside = client.post("/internal/checks", json=INTERVAL, headers=AUTH)
    later = client.post("/internal/checks", json={"start": "2026-01-01T11:00Z", "end": "2026-01-01T11:05Z"},
                        headers=AUTH)

    assert inside.status_code == 200
    assert inside.get_json() == {"passed": False, "failures": ["fct_clicks_minute: unique_users > billable_clicks: 1 rows"]}
    assert later.get_json() == {"passed": True, "failures": []}


def test_checks_with_a_bad_time_are_a_400(client):
    response = client.post("/internal/checks", json={"start": 5, "end": INTERVAL["end"]}, headers=AUTH)

    assert response.status_code == 400
    assert "'start'" in response.get_json()["error"]


@pytest.fixture
def tokyo_host(monkeypatch):
    """Run as on a host whose local time zone is not UTC (DuckDB takes its TimeZone from it)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_checks_cover_the_requested_utc_interval_on_a_host_outside_utc(tokyo_host, make_client, tmp_path):
    defective_warehouse(str(tmp_path / "w.duckdb"), T0 + timedelta(minutes=2))
    client = make_client()

    response = client.post("/internal/checks", json=INTERVAL, headers=AUTH)

    assert response.get_json()["passed"] is False


# Read-only SQL


def test_sql_runs_a_select_with_params(client, tmp_path):
    client.post("/internal/loads/clicks-minute", json={**INTERVAL, "output": stage(tmp_path / "out")}, headers=AUTH)

    response = sql(client, "SELECT ad_id, first_seen_at FROM dim_ads WHERE advertiser_id = ?", ["adv-1"])

    assert response.status_code == 200
    assert response.get_json() == {
        "columns": ["ad_id", "first_seen_at"], "rows": [["ad-1", "2026-01-01T10:01:00"]], "truncated": False,
    }


def test_sql_truncates_at_the_configured_row_limit(make_client):
    client = make_client(SQL_ROW_LIMIT=2)

    body = sql(client, "SELECT * FROM range(5)").get_json()

    assert body["rows"] == [[0], [1]]
    assert body["truncated"] is True


@pytest.mark.parametrize("query", ["DELETE FROM dim_ads", "CREATE TABLE x (a INT)", "SELECT 1; SELECT 2"])
def test_sql_refuses_writes_with_a_403(client, query):
    response = sql(client, query)

    assert response.status_code == 403
    assert response.get_json()["status"] == 403
    assert response.get_json()["error"]


@pytest.mark.parametrize(
    ("query", "params", "message"),
    [
        ("SELEC 1", None, "syntax error"),
        ("SELECT * FROM no_such_table", None, "no_such_table"),
        ("SELECT ?", [1, 2], "parameter"),
    ],
    ids=["syntax", "unknown-table", "wrong-param-count"],
)
def test_bad_sql_is_a_400_with_a_readable_message(client, query, params, message):
    response = sql(client, query, params)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert message in error.lower()
    assert error == error.strip()


@pytest.mark.parametrize(
    "body", [{}, {"sql": ""}, {"sql": "   "}, {"sql": 5}, {"sql": "SELECT ?", "params": {"a": 1}}],
    ids=["no-sql", "empty", "blank", "not-a-string", "params-not-a-list"],
)
def test_a_malformed_sql_request_is_a_400(client, body):
    response = client.post("/sql", json=body)

    assert response.status_code == 400
    assert response.get_json()["error"]


def test_the_service_settings_come_from_the_environment_with_the_documented_defaults():
    defaults = config_from_env({})
    assert (defaults["THREADS"], defaults["BATCH_NICE"], defaults["SQL_ROW_LIMIT"], defaults["ADMIN_TOKEN"]) == (1, 10, 10000, "")

    env = {"WAREHOUSE_THREADS": "2", "WAREHOUSE_BATCH_NICE": "0", "WAREHOUSE_PATH": "/data/w.duckdb",
           "WAREHOUSE_ADMIN_TOKEN": "secret", "WAREHOUSE_SQL_ROW_LIMIT": "50"}
    assert config_from_env(env) == {"WAREHOUSE_PATH": "/data/w.duckdb", "ADMIN_TOKEN": "secret", "THREADS": 2,
                                    "SQL_ROW_LIMIT": 50, "BATCH_NICE": 0}
