"""Comparing an hour with its recomputation and repairing it, on a temp DuckDB warehouse; and the
service's reconciliation endpoints and metrics through Flask's test client."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from warehouse import connect, loads, reconcile, schema
from warehouse.reconcile import Comparison
from warehouse.server import create_app

MINUTE_LAYOUT = (
    "minute_at TIMESTAMP, ad_id VARCHAR, advertiser_id VARCHAR, billable_clicks BIGINT, duplicate_clicks BIGINT, "
    "expired_clicks BIGINT, invalid_clicks BIGINT, invalid_head_clicks BIGINT, invalid_prefetch_clicks BIGINT, "
    "invalid_bot_clicks BIGINT, unique_users BIGINT"
)
USER_LAYOUT = "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT"
H10 = datetime(2026, 1, 1, 10)
HOUR = timedelta(hours=1)


def at(minutes: int) -> datetime:
    return H10 + timedelta(minutes=minutes)


def fact(minute: int, ad_id: str, billable: int, users: int, duplicate: int = 0, invalid: int = 0) -> tuple:
    return (at(minute), ad_id, "adv-" + ad_id, billable, duplicate, 0, invalid, 0, 0, invalid, users)


def users_of(facts: list[tuple]) -> list[tuple]:
    """As many distinct user hashes per cell as its unique_users."""
    return [(row[0], row[1], hash((row[1], row[0], n)) % 10**9) for row in facts for n in range(row[10])]


# The hour as the dump says it is: ad-a twice, ad-b, ad-c, and ad-d with only invalid clicks.
TRUTH = [
    fact(0, "ad-a", 3, 2, duplicate=1), fact(1, "ad-a", 1, 1), fact(5, "ad-b", 4, 4), fact(7, "ad-c", 2, 1),
    fact(9, "ad-d", 0, 0, invalid=2),
]


def write_parquet(path: Path, layout: str, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = duckdb.connect()
    mem.execute(f"CREATE TABLE t ({layout})")
    if rows:
        mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()


@pytest.fixture
def stage(tmp_path):
    """Write minute rows and their users where the Spark jobs write them; return the output folder."""
    runs = itertools.count()

    def write(facts: list[tuple], users: list[tuple] | None = None) -> str:
        folder = tmp_path / f"out-{next(runs)}"
        write_parquet(folder / "minute" / "part-0.parquet", MINUTE_LAYOUT, facts)
        write_parquet(folder / "users" / "part-0.parquet", USER_LAYOUT, users_of(facts) if users is None else users)
        return str(folder)

    return write


@pytest.fixture
def con(tmp_path):
    con = connect(str(tmp_path / "w.duckdb"))
    schema.migrate(con)
    yield con
    con.close()


def seed(con, stage, facts: list[tuple], users: list[tuple] | None = None, start=H10, end=H10 + HOUR) -> None:
    """What the minute rollups loaded (watermark advanced, as the rollup DAG does)."""
    folder = stage(facts, users)
    loads.load_clicks_minute(con, f"{folder}/minute/*.parquet", f"{folder}/users/*.parquet", start, end)


def run(con, stage, facts: list[tuple], threshold: float = 1.0, users: list[tuple] | None = None, **kwargs):
    folder = stage(facts, users)
    return reconcile.reconcile_hour(con, H10, f"{folder}/minute/*.parquet", f"{folder}/users/*.parquet", threshold, **kwargs)


def minute_facts(con) -> list[tuple]:
    return con.execute("SELECT * EXCLUDE (loaded_at) FROM fct_clicks_minute ORDER BY ALL").fetchall()


def hour_rows(con) -> list[tuple]:
    return con.execute("SELECT hour_at, ad_id, billable_clicks, unique_users FROM fct_clicks_hour ORDER BY ALL").fetchall()


def reports(con) -> list[tuple]:
    return con.execute(
        "SELECT hour_at, cells_compared, cells_differed, total_abs_diff, repaired, status FROM meta_reconciliations"
    ).fetchall()


def snapshot(con) -> dict:
    return {table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
            for table in ("fct_clicks_minute", "fct_clicks_hour", "fct_clicks_day", "stg_clicks_minute_users",
                          "meta_loads", "meta_watermarks", "meta_reconciliations")}


# Report maths


def comparison(**overrides) -> Comparison:
    values = dict(cells_compared=10, cells_differed=2, billable_abs_diff=3, users_abs_diff=1, other_abs_diff=0,
                  cells_missing=1, cells_extra=0, user_rows_differ=False, billable_total=30, users_total=10)
    return Comparison(**(values | overrides))


def test_the_drift_is_billable_plus_users_over_the_hours_total():
    drift = comparison()

    assert (drift.total_abs_diff, drift.drift_ratio, drift.needs_repair) == (4, 0.1, True)


def test_an_empty_hour_with_a_phantom_row_has_a_finite_drift():
    assert comparison(billable_total=0, users_total=0, billable_abs_diff=2, users_abs_diff=1).drift_ratio == 3.0


@pytest.mark.parametrize(
    ("overrides", "threshold", "status"),
    [
        ({"cells_differed": 0, "billable_abs_diff": 0, "users_abs_diff": 0}, 0.0, "ok"),
        ({}, 0.1, "repaired"),
        ({}, 0.0999, "failed"),
        ({"cells_differed": 0, "billable_abs_diff": 0, "users_abs_diff": 0, "user_rows_differ": True}, 0.0, "repaired"),
        ({"billable_abs_diff": 0, "users_abs_diff": 0, "other_abs_diff": 5}, 0.0, "repaired"),
    ],
    ids=["nothing-differs", "at-the-threshold", "above-the-threshold", "only-user-rows", "only-other-counts"],
)
def test_status_of_a_comparison(overrides, threshold, status):
    assert reconcile.status_of(comparison(**overrides), threshold) == status


def test_describe_says_what_differed_and_what_was_done():
    line = reconcile.describe(comparison(), "failed", 0.01)

    assert line == (
        "2 of 10 cells differed (1 missing from the warehouse, 0 extra): billable clicks off by 3, unique users by 1, "
        "other counts by 0; drift 0.100000 of 40 is over the threshold 0.01: repaired, and the run fails"
    )


# Reconciling an hour


def test_an_hour_that_matches_is_ok_and_left_untouched(con, stage):
    seed(con, stage, TRUTH)
    before = snapshot(con)

    report = run(con, stage, TRUTH, threshold=0.0)

    assert (report.cells_compared, report.cells_differed, report.total_abs_diff, report.repaired, report.status) == (
        5, 0, 0, False, "ok")
    after = snapshot(con)
    assert after.pop("meta_reconciliations") == [
        (H10, 5, 0, 0, False, report.run_seconds, "ok", json.dumps(report.detail), after_reconciled_at(con))
    ]
    before.pop("meta_reconciliations")
    assert after == before


def after_reconciled_at(con) -> datetime:
    return con.execute("SELECT reconciled_at FROM meta_reconciliations").fetchone()[0]


def test_a_changed_count_a_deleted_row_and_an_extra_row_are_reported_and_repaired(con, stage):
    drifted = [
        fact(0, "ad-a", 3, 2, duplicate=1),
        fact(1, "ad-a", 2, 2),  # changed: billable +1, users +1
        # ad-b's minute 5 deleted: billable 4, users 4
        fact(7, "ad-c", 2, 1), fact(9, "ad-d", 0, 0, invalid=2),
        fact(30, "ad-x", 5, 3),  # extra: billable 5, users 3
    ]
    seed(con, stage, drifted)
    watermark = loads.watermark(con)

    report = run(con, stage, TRUTH, threshold=1.0)

    assert (report.cells_compared, report.cells_differed, report.total_abs_diff) == (6, 3, 1 + 1 + 4 + 4 + 5 + 3)
    assert (report.repaired, report.status) == (True, "repaired")
    assert report.detail["cells_missing"] == 1 and report.detail["cells_extra"] == 1
    assert (report.detail["billable_abs_diff"], report.detail["users_abs_diff"]) == (10, 8)
    assert minute_facts(con) == sorted(TRUTH)
    assert hour_rows(con) == [(H10, "ad-a", 4, 3), (H10, "ad-b", 4, 4), (H10, "ad-c", 2, 1), (H10, "ad-d", 0, 0)]
    assert con.execute("SELECT billable_clicks FROM fct_clicks_day WHERE ad_id = 'ad-x'").fetchall() == []
    assert loads.watermark(con) == watermark
    assert reports(con) == [(H10, 6, 3, 18, True, "repaired")]


def test_only_the_hour_is_replaced_and_its_neighbours_are_kept(con, stage):
    neighbours = [(H10 - timedelta(minutes=1), "ad-a", "adv-ad-a", 7, 0, 0, 0, 0, 0, 0, 7),
                  (H10 + HOUR, "ad-a", "adv-ad-a", 9, 0, 0, 0, 0, 0, 0, 9)]
    seed(con, stage, neighbours, start=H10 - HOUR, end=H10 + 2 * HOUR)

    run(con, stage, TRUTH)

    assert minute_facts(con) == sorted([*TRUTH, *neighbours])
    assert con.execute("SELECT billable_clicks FROM fct_clicks_day WHERE ad_id = 'ad-a'").fetchall() == [(7 + 4 + 9,)]


def test_drift_over_the_threshold_is_repaired_and_recorded_failed(con, stage):
    seed(con, stage, TRUTH[1:])  # ad-a's minute 0 missing: billable 3 and users 2 of 10 + 8

    report = run(con, stage, TRUTH, threshold=0.1)

    assert (report.cells_differed, report.total_abs_diff, report.repaired, report.status) == (1, 5, True, "failed")
    assert report.detail["drift_ratio"] == 5 / 18
    assert "over the threshold 0.1: repaired, and the run fails" in report.detail["message"]
    assert minute_facts(con) == sorted(TRUTH)
    assert reports(con) == [(H10, 5, 1, 5, True, "failed")]


def test_hashed_users_that_differ_alone_are_repaired(con, stage):
    seed(con, stage, TRUTH, users=[(row[0], row[1], -n) for n, row in enumerate(users_of(TRUTH))])

    report = run(con, stage, TRUTH, threshold=0.0)

    assert (report.cells_differed, report.total_abs_diff, report.repaired, report.status) == (0, 0, True, "repaired")
    assert report.detail["user_rows_differ"] is True
    assert con.execute("SELECT count(*) FROM stg_clicks_minute_users WHERE user_hash <= 0").fetchone()[0] == 0


def test_an_empty_warehouse_hour_is_filled(con, stage):
    report = run(con, stage, TRUTH)

    assert (report.cells_compared, report.cells_differed, report.total_abs_diff, report.repaired) == (5, 5, 18, True)
    assert minute_facts(con) == sorted(TRUTH)


def test_a_rerun_replaces_the_hours_report_and_finds_nothing_left(con, stage):
    seed(con, stage, TRUTH[1:])
    run(con, stage, TRUTH)
    repaired = minute_facts(con)

    report = run(con, stage, TRUTH, threshold=0.0)

    assert (report.cells_differed, report.repaired, report.status) == (0, False, "ok")
    assert minute_facts(con) == repaired
    assert reports(con) == [(H10, 5, 0, 0, False, "ok")]


def test_a_retried_call_with_the_same_recomputation_keeps_the_report_of_its_repair(con, stage):
    seed(con, stage, TRUTH[1:])
    recomputation = {"dump_run_id": "20260101T111220Z-0a1b2c3d", "recompute_seconds": 41.25}
    first = run(con, stage, TRUTH, threshold=0.1, context=recomputation)  # committed; its answer was lost

    retried = run(con, stage, TRUTH, threshold=0.1, context=dict(recomputation))

    assert first.status == retried.status == "failed"
    assert (retried.cells_differed, retried.total_abs_diff, retried.repaired) == (1, 5, True)
    assert reports(con) == [(H10, 5, 1, 5, True, "failed")]


def test_a_new_recomputation_of_a_repaired_hour_reports_it_ok(con, stage):
    seed(con, stage, TRUTH[1:])
    run(con, stage, TRUTH, threshold=0.1, context={"dump_run_id": "first", "recompute_seconds": 41.25})

    report = run(con, stage, TRUTH, threshold=0.1, context={"dump_run_id": "second", "recompute_seconds": 39.5})

    assert report.status == "ok"
    assert reports(con) == [(H10, 5, 0, 0, False, "ok")]


def test_recomputed_rows_outside_the_hour_are_refused_and_change_nothing(con, stage):
    seed(con, stage, TRUTH[1:])
    before = snapshot(con)

    with pytest.raises(ValueError, match="1 recomputed rows .* fall outside"):
        run(con, stage, [*TRUTH, fact(60, "ad-a", 1, 1)])

    assert snapshot(con) == before


def test_a_failure_after_the_repair_rolls_the_whole_hour_back(con, stage, monkeypatch):
    seed(con, stage, TRUTH[1:])
    before = snapshot(con)

    def broken_save(cur, report):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reconcile, "_save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        run(con, stage, TRUTH)

    assert snapshot(con) == before


def test_an_hour_must_start_on_the_hour(con, stage):
    folder = stage(TRUTH)
    with pytest.raises(ValueError, match="not the start of an hour"):
        reconcile.reconcile_hour(con, at(30), f"{folder}/minute/*.parquet", f"{folder}/users/*.parquet")


def test_an_aware_hour_is_converted_to_utc(con, stage):
    folder = stage(TRUTH)
    plus_two = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))

    report = reconcile.reconcile_hour(con, plus_two, f"{folder}/minute/*.parquet", f"{folder}/users/*.parquet", 1.0)

    assert report.hour_at == H10


def test_the_run_time_is_the_recompute_plus_the_compare_and_repair(con, stage):
    ticks = iter([100.0, 102.5])

    report = run(con, stage, TRUTH, context={"recompute_seconds": 41.25}, clock=lambda: next(ticks))

    assert report.run_seconds == 43.75
    assert report.detail["compare_repair_seconds"] == 2.5
    assert con.execute("SELECT run_seconds FROM meta_reconciliations").fetchone()[0] == 43.75


def test_the_report_carries_the_recompute_context_and_the_load(con, stage):
    report = run(con, stage, TRUTH, context={"late_clicks": 2})

    stored = json.loads(con.execute("SELECT detail FROM meta_reconciliations").fetchone()[0])
    assert stored["context"] == {"late_clicks": 2}
    assert stored["load"]["rows_inserted"] == 5 and stored["load"]["watermark"] is None
    assert stored == json.loads(json.dumps(report.detail))


def test_a_failed_run_is_recorded_and_latest_reports_it(con, stage):
    run(con, stage, TRUTH)

    reconcile.record_failure(con, H10 + HOUR, "verify_dumps failed: no dump")

    assert reports(con) == [(H10, 5, 5, 18, True, "repaired"), (H10 + HOUR, 0, 0, 0, False, "failed")]
    state = reconcile.latest(con)
    assert state["latest"]["hour_at"] == H10 + HOUR
    assert state["latest"]["detail"]["message"] == "verify_dumps failed: no dump"
    assert state["hours_by_status"] == {"ok": 0, "repaired": 1, "failed": 1}
    assert state["last_failed_hour_at"] == H10 + HOUR


# The service's endpoints

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path):
    app = create_app({"WAREHOUSE_PATH": str(tmp_path / "svc.duckdb"), "ADMIN_TOKEN": TOKEN, "THREADS": 1, "SQL_ROW_LIMIT": 100})
    yield app.test_client()
    app.extensions["warehouse"].close()


def test_the_endpoint_reconciles_and_answers_the_report(client, stage):
    body = {"hour": "2026-01-01T10:00:00Z", "output": stage(TRUTH), "drift_threshold": 0.5, "context": {"late_clicks": 1}}

    response = client.post("/internal/reconciliations/clicks-hour", json=body, headers=AUTH)

    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    assert {k: report[k] for k in ("hour_at", "cells_compared", "cells_differed", "total_abs_diff", "repaired", "status")} == {
        "hour_at": "2026-01-01T10:00:00", "cells_compared": 5, "cells_differed": 5, "total_abs_diff": 18,
        "repaired": True, "status": "failed",
    }
    rows = client.post("/sql", json={"sql": "SELECT sum(billable_clicks) FROM fct_clicks_hour"}).get_json()["rows"]
    assert rows == [[10]]


@pytest.mark.parametrize("path", ["/internal/reconciliations/clicks-hour", "/internal/reconciliations/clicks-hour/failed"])
def test_the_endpoints_need_the_admin_token(client, stage, path):
    body = {"hour": "2026-01-01T10:00:00Z", "output": stage(TRUTH), "detail": "x"}

    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/sql", json={"sql": "SELECT count(*) FROM meta_reconciliations"}).get_json()["rows"] == [[0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"output": "/x"}, "'hour' is required"),
        ({"hour": "2026-01-01T10:00:00Z"}, "'output'"),
        ({"hour": "2026-01-01T10:30:00Z", "output": "/x"}, "not the start of an hour"),
        ({"hour": "2026-01-01T10:00:00Z", "output": "/x", "drift_threshold": "high"}, "must be a number"),
        ({"hour": "2026-01-01T10:00:00Z", "output": "/nowhere"}, "nowhere"),
    ],
    ids=["no-hour", "no-output", "unaligned", "threshold-not-a-number", "no-such-output"],
)
def test_a_bad_request_is_a_400_that_says_why(client, body, message):
    response = client.post("/internal/reconciliations/clicks-hour", json=body, headers=AUTH)

    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_a_failure_is_recorded_through_the_endpoint(client):
    response = client.post("/internal/reconciliations/clicks-hour/failed",
                           json={"hour": "2026-01-01T11:00:00Z", "detail": "verify_dumps failed: no dump"}, headers=AUTH)

    assert response.status_code == 200
    assert (response.get_json()["status"], response.get_json()["repaired"]) == ("failed", False)
    assert client.post("/internal/reconciliations/clicks-hour/failed", json={"hour": "2026-01-01T11:00:00Z"},
                       headers=AUTH).status_code == 400


def metric_values(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_show_the_latest_report(client, stage):
    client.post("/internal/reconciliations/clicks-hour",
                json={"hour": "2026-01-01T10:00:00Z", "output": stage(TRUTH), "drift_threshold": 2.0,
                      "context": {"late_clicks": 3}}, headers=AUTH)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    values = metric_values(response.get_data(as_text=True))
    assert values["clickagg_reconciliation_last_hour_timestamp_seconds"] == datetime(2026, 1, 1, 10, tzinfo=timezone.utc).timestamp()
    assert (values["clickagg_reconciliation_cells_compared"], values["clickagg_reconciliation_cells_differed"],
            values["clickagg_reconciliation_total_abs_diff"], values["clickagg_reconciliation_repaired"]) == (5, 5, 18, 1)
    assert values["clickagg_reconciliation_late_clicks"] == 3
    assert values['clickagg_reconciliation_status{status="repaired"}'] == 1
    assert values['clickagg_reconciliation_status{status="failed"}'] == 0
    assert values['clickagg_reconciliation_hours{status="repaired"}'] == 1
    assert values["clickagg_reconciliation_last_failed_hour_timestamp_seconds"] == 0


def test_metrics_before_any_reconciliation_are_zero(client):
    values = metric_values(client.get("/metrics").get_data(as_text=True))

    assert values["clickagg_reconciliation_cells_compared"] == 0
    assert values['clickagg_reconciliation_status{status="ok"}'] == 0
