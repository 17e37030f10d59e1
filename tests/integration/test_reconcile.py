"""Hourly reconciliation on the real services: clicks in Cassandra, the minute rollup's facts in the
warehouse, drift injected through the load endpoint, then the reconcile_clicks_hourly DAG run by
Airflow (dump to the S3 store, recompute with Spark, compare and repair in the warehouse).

Each test module picks an hour of the past weeks that nothing else has touched (no warehouse rows,
no dumps, no raw clicks), uses its own ads, and deletes its dumps at the end. While the DAG is
unpaused for these runs, the scheduler may start a run of its own for the latest hour; the tests
mark such runs failed, so theirs are not queued behind it (max_active_runs is 1).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
import requests
from cassandra.concurrent import execute_concurrent_with_args

from click_api.events import Click
from click_api.storage import Ad
from click_api.tokens import new_impression_id
from infra.airflow_api import AirflowAPI
from spark_jobs import raw_dumps
from tests.services import REPO, unique, warehouse_sql

pytestmark = pytest.mark.e2e
DAG = "reconcile_clicks_hourly"
HOUR = timedelta(hours=1)


# Services


@pytest.fixture(scope="module")
def airflow():
    api = AirflowAPI.from_env()
    api.wait_for_dag(DAG)
    api.set_paused(DAG, False)
    yield api
    api.set_paused(DAG, True)
    stop_scheduled_runs(api)


@pytest.fixture(scope="module")
def dumps() -> raw_dumps.DumpStore:
    return raw_dumps.DumpStore(raw_dumps.s3_client(os.environ), os.environ["S3_BUCKET"])


def admin() -> dict:
    token = os.environ.get("WAREHOUSE_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def stop_scheduled_runs(api: AirflowAPI) -> None:
    """Mark failed the unfinished runs the scheduler started by itself: they would hold the one run
    slot, mostly waiting in their sensor for the latest hour to settle. (Deleted, the scheduler
    would create them again.) Clearing such a run later reconciles its hour."""
    runs = api._call("GET", f"/dags/{DAG}/dagRuns", params={"state": ["queued", "running"]})["dag_runs"]
    for run in runs:
        if run["run_type"] == "scheduled":
            api._call("PATCH", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}",
                      json={"state": "failed", "note": "stopped by tests/integration/test_reconcile.py"})


def reconcile(api: AirflowAPI, hour: datetime, **conf) -> tuple[str, str, dict]:
    """Trigger the DAG for ``hour`` with ``conf``; wait; return (run id, final state, task states)."""
    stop_scheduled_runs(api)
    run_id = f"manual__test_reconcile_{hour:%Y%m%dT%H}__{uuid.uuid4().hex[:8]}"
    api._call("POST", f"/dags/{DAG}/dagRuns",
              json={"dag_run_id": run_id, "logical_date": None, "conf": {"hour": hour.isoformat(), **conf}})
    state = api.wait_for_run(DAG, run_id, timeout=900)
    return run_id, state, api.task_states(DAG, run_id)


def rerun(api: AirflowAPI, run_id: str) -> tuple[str, dict]:
    stop_scheduled_runs(api)
    api.clear(DAG, run_id)
    state = api.wait_for_run(DAG, run_id, timeout=900)
    return state, api.task_states(DAG, run_id)


def naive(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat()


# A fresh hour


def hour_is_untouched(cassandra, keyspace: str, shards: int, dumps: raw_dumps.DumpStore, hour: datetime) -> bool:
    if warehouse_sql("SELECT count(*) FROM fct_clicks_minute WHERE minute_at >= ? AND minute_at < ?",
                     [naive(hour - 3 * HOUR), naive(hour + HOUR)]) != [[0]]:
        return False
    if any(dumps.list_objects(raw_dumps.hour_prefix(dumps.root, h)) for h in [*raw_dumps.horizon_hours(hour, 10800), hour]):
        return False
    statement = cassandra.prepare(f"SELECT impression_id FROM {keyspace}.raw_clicks WHERE minute = ? AND shard = ? LIMIT 1")
    keys = [(hour + timedelta(minutes=m), s) for m in range(60) for s in range(shards)]
    results = execute_concurrent_with_args(cassandra, statement, keys, concurrency=64)
    return all(ok and not list(rows) for ok, rows in results)


def fresh_hour(cassandra, cfg, dumps, hours: int = 1) -> datetime:
    """A random hour 2 to 20 days ago (Cassandra still holds it) that no one has used, nor the
    ``hours - 1`` after it."""
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    for _ in range(20):
        hour = now - timedelta(hours=random.randint(48, 20 * 24))
        if all(hour_is_untouched(cassandra, cfg["CASSANDRA_KEYSPACE"], cfg["RAW_CLICK_SHARDS"], dumps, hour + n * HOUR)
               for n in range(hours)):
            return hour
    raise AssertionError("found no untouched hour in the past 20 days")


class Clicks:
    """Writes clicks straight to Cassandra, stored when they happened unless said otherwise; an
    impression is issued a minute before its first click."""

    def __init__(self, store):
        self.store = store
        self.issued: dict[str, datetime] = {}

    def click(self, ad: Ad, clicked_at: datetime, impression_id: str | None = None, status: str = "valid",
              reason: str | None = None, user_id: str | None = None, stored_at: datetime | None = None) -> str:
        impression_id = impression_id or new_impression_id()
        issued_at = self.issued.setdefault(impression_id, clicked_at - timedelta(minutes=1))
        self.store.save_click(
            Click(uuid.uuid4().hex, impression_id, ad.ad_id, ad.advertiser_id, clicked_at, issued_at,
                  user_id or unique("user"), "fp-" + impression_id[:8], None, status, reason),
            stored_at=stored_at or clicked_at + timedelta(seconds=1),
        )
        return impression_id


def write_parquet(path: Path, layout: str, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = duckdb.connect()
    mem.execute(f"CREATE TABLE t ({layout})")
    if rows:
        mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()


MINUTE_LAYOUT = (
    "minute_at TIMESTAMP, ad_id VARCHAR, advertiser_id VARCHAR, billable_clicks BIGINT, duplicate_clicks BIGINT, "
    "expired_clicks BIGINT, invalid_clicks BIGINT, invalid_head_clicks BIGINT, invalid_prefetch_clicks BIGINT, "
    "invalid_bot_clicks BIGINT, unique_users BIGINT"
)


def load_wrong(folder: Path, start: datetime, end: datetime, minute_rows: list[tuple]) -> None:
    """Replace [start, end) of the warehouse with deliberately wrong rows, through the load endpoint."""
    write_parquet(folder / "minute" / "part-0.parquet", MINUTE_LAYOUT, minute_rows)
    users = [(row[0], row[1], n) for row in minute_rows for n in range(row[10])]
    write_parquet(folder / "users" / "part-0.parquet", "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT", users)
    response = requests.post(f"{os.environ['WAREHOUSE_URL']}/internal/loads/clicks-minute", headers=admin(), timeout=120,
                             json={"start": start.isoformat(), "end": end.isoformat(), "output": str(folder),
                                   "advance_watermark": False})
    assert response.status_code == 200, response.text


def roll_up(hour: datetime, output: Path) -> None:
    """What the minute rollups did for the hour: the Spark job, then a load (watermark untouched)."""
    job = subprocess.run(
        [sys.executable, "-m", "spark_jobs.fct_clicks_minute", "--start", hour.isoformat(), "--end", (hour + HOUR).isoformat(),
         "--output", str(output), "--master", "local[2]"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    response = requests.post(f"{os.environ['WAREHOUSE_URL']}/internal/loads/clicks-minute", headers=admin(), timeout=120,
                             json={"start": hour.isoformat(), "end": (hour + HOUR).isoformat(), "output": str(output),
                                   "advance_watermark": False})
    assert response.status_code == 200, response.text


def facts(ad_ids: list[str]) -> list[list]:
    marks = ", ".join("?" * len(ad_ids))
    return warehouse_sql(
        "SELECT minute_at, ad_id, billable_clicks, duplicate_clicks, invalid_clicks, unique_users FROM fct_clicks_minute "
        f"WHERE ad_id IN ({marks}) ORDER BY minute_at, ad_id", ad_ids)


def hour_facts(ad_ids: list[str]) -> list[list]:
    marks = ", ".join("?" * len(ad_ids))
    return warehouse_sql(
        f"SELECT hour_at, ad_id, billable_clicks, unique_users FROM fct_clicks_hour WHERE ad_id IN ({marks}) ORDER BY ad_id",
        ad_ids)


def report_of(hour: datetime) -> list:
    rows = warehouse_sql(
        "SELECT cells_compared, cells_differed, total_abs_diff, repaired, status, detail FROM meta_reconciliations "
        "WHERE hour_at = ?", [naive(hour)])
    assert len(rows) == 1, rows
    return rows[0]


# The scenario: one hour with every kind of drift, reconciled by Airflow


@pytest.fixture(scope="module")
def scenario(airflow, cassandra, cfg, store, dumps, tmp_path_factory):
    hour = fresh_hour(cassandra, cfg, dumps)
    ads = {name: Ad(unique(f"rc-{name}"), unique("rc-adv"), "https://landing.example.com/rc") for name in "abcx"}
    for ad in ads.values():
        store.put_ad(ad)
    a, b, c, x = ads["a"], ads["b"], ads["c"], ads["x"]
    clicks = Clicks(store)
    at = {m: hour + timedelta(minutes=m) for m in (5, 10, 20, 30, 40, 45, 50)}

    # An impression first clicked in the previous hour, clicked again in this one and labelled valid
    # (as with Redis flushed): only the earlier click is billable.
    repeated = clicks.click(a, hour - timedelta(minutes=10), user_id="u1")
    clicks.click(a, at[5], impression_id=repeated, user_id="u1")
    clicks.click(a, at[5] + timedelta(seconds=10), user_id="u2")
    first = clicks.click(a, at[20], user_id="u3")
    clicks.click(a, at[20] + timedelta(seconds=30), impression_id=first, status="duplicate", user_id="u3")
    clicks.click(b, at[10], user_id="u4")
    clicks.click(b, at[10] + timedelta(seconds=1), user_id="u5")
    clicks.click(c, at[30], user_id="u6")
    clicks.click(c, at[40], user_id="u7")
    clicks.click(c, at[40] + timedelta(seconds=2), status="invalid", reason="bot_user_agent")

    work = tmp_path_factory.mktemp("reconcile")
    roll_up(hour, work / "rollup")
    rolled_up = facts([a.ad_id, b.ad_id, c.ad_id])

    # After the rollup, and after every later run's lookback: a click spooled during an outage.
    now = datetime.now(timezone.utc)
    clicks.click(a, at[45], user_id="u8", stored_at=now)
    # Drift in the warehouse: a changed count, a deleted row, an extra row.
    load_wrong(work / "changed", at[10], at[10] + timedelta(minutes=1),
               [(at[10], b.ad_id, b.advertiser_id, 5, 0, 0, 0, 0, 0, 0, 2)])
    load_wrong(work / "deleted", at[30], at[30] + timedelta(minutes=1), [])
    load_wrong(work / "extra", at[50], at[50] + timedelta(minutes=1),
               [(at[50], x.ad_id, x.advertiser_id, 2, 0, 0, 0, 0, 0, 0, 2)])

    run_id, state, tasks = reconcile(airflow, hour)
    yield {"hour": hour, "ads": ads, "at": at, "rolled_up": rolled_up, "run_id": run_id, "state": state, "tasks": tasks,
           "report": report_of(hour), "facts": facts([ad.ad_id for ad in ads.values()]),
           "hours": hour_facts([ad.ad_id for ad in ads.values()])}
    for h in [*raw_dumps.horizon_hours(hour, 10800), hour]:
        dumps.delete_hour(h)


def test_the_rollup_saw_the_hour_before_the_drift(scenario):
    a, b, c = (scenario["ads"][n].ad_id for n in "abc")
    at = {m: naive(t) for m, t in scenario["at"].items()}

    assert scenario["rolled_up"] == [
        [at[5], a, 1, 1, 0, 1], [at[10], b, 2, 0, 0, 2], [at[20], a, 1, 1, 0, 1], [at[30], c, 1, 0, 0, 1],
        [at[40], c, 1, 0, 1, 1],
    ]


def test_drift_over_the_threshold_is_reported_repaired_and_fails_the_run(scenario):
    cells, differed, total, repaired, status, detail = scenario["report"]

    # 7 cells: the 5 rolled up, the late click's and the extra one. 4 differ: the changed count
    # (billable 5 vs 2), the deleted row (1 + 1), the extra row (2 + 2) and the late click (1 + 1).
    assert (cells, differed, total, repaired, status) == (7, 4, 3 + 2 + 4 + 2, True, "failed")
    assert "over the threshold 0.0001: repaired, and the run fails" in detail
    assert scenario["state"] == "failed"
    tasks = scenario["tasks"]
    assert tasks["check_drift"] == "failed"
    repaired_then_checked = ("dump_raw_clicks", "verify_dumps", "recompute_from_dumps", "compare_and_repair", "check_quality")
    assert {t: tasks[t] for t in repaired_then_checked} == dict.fromkeys(repaired_then_checked, "success")


def test_the_repaired_hour_holds_the_truth_and_its_hour_rows_follow(scenario):
    a, b, c = (scenario["ads"][n].ad_id for n in "abc")
    at = {m: naive(t) for m, t in scenario["at"].items()}

    assert scenario["facts"] == [
        [at[5], a, 1, 1, 0, 1], [at[10], b, 2, 0, 0, 2], [at[20], a, 1, 1, 0, 1], [at[30], c, 1, 0, 0, 1],
        [at[40], c, 1, 0, 1, 1], [at[45], a, 1, 0, 0, 1],
    ]
    hour = naive(scenario["hour"])
    assert sorted(scenario["hours"], key=lambda r: r[1]) == sorted(
        [[hour, a, 3, 3], [hour, b, 2, 2], [hour, c, 2, 2]], key=lambda r: r[1])


def test_a_click_stored_after_every_rollup_is_counted_and_reported_late(scenario):
    a = scenario["ads"]["a"].ad_id
    late_cell = [row for row in scenario["facts"] if row[1] == a and row[0] == naive(scenario["at"][45])]

    assert late_cell == [[naive(scenario["at"][45]), a, 1, 0, 0, 1]]
    assert scenario["rolled_up"] and all(row[0] != naive(scenario["at"][45]) for row in scenario["rolled_up"])
    assert '"late_clicks": 1' in scenario["report"][5] and '"late_billable_clicks": 1' in scenario["report"][5]


def test_a_repeat_of_an_earlier_hours_impression_is_not_billed_again(scenario):
    a = scenario["ads"]["a"].ad_id

    assert [row for row in scenario["facts"] if row[0] == naive(scenario["at"][5])] == [
        [naive(scenario["at"][5]), a, 1, 1, 0, 1]]


def test_the_dump_is_published_with_a_manifest_matching_its_data(scenario, dumps):
    hour = scenario["hour"]
    manifest = dumps.require_manifest(hour)
    dumps.check_files(manifest)

    assert manifest.row_count == 10  # every click of the hour, the invalid one and the late one included
    assert manifest.min_clicked_at == scenario["at"][5] and manifest.max_clicked_at == scenario["at"][45]
    assert manifest.min_issued_at < hour  # the repeated impression was issued in the hour before
    assert dumps.require_manifest(hour - HOUR).row_count == 1  # the earlier hour was dumped too
    runs = {key.split("/run=")[1].split("/")[0] for key in dumps.list_objects(raw_dumps.hour_prefix(dumps.root, hour))
            if "/run=" in key}
    assert runs == {manifest.run_id}


def test_a_rerun_of_dump_and_reconciliation_changes_nothing(scenario, airflow, dumps):
    before = dumps.require_manifest(scenario["hour"])

    state, tasks = rerun(airflow, scenario["run_id"])

    assert state == "success", tasks
    assert report_of(scenario["hour"])[:5] == [6, 0, 0, False, "ok"]
    ads = [ad.ad_id for ad in scenario["ads"].values()]
    assert facts(ads) == scenario["facts"]
    assert hour_facts(ads) == scenario["hours"]
    after = dumps.require_manifest(scenario["hour"])
    assert after.run_id != before.run_id
    assert (after.row_count, after.checksum) == (before.row_count, before.checksum)
    assert not dumps.list_objects(before.data_prefix)


def test_a_dump_that_does_not_match_its_manifest_fails_the_run(scenario, airflow, dumps):
    # Runs after the re-run test: it breaks the scenario's dump for good.
    manifest = dumps.require_manifest(scenario["hour"])
    gone = manifest.files[-1][0]
    dumps.delete_keys([gone])

    _, state, tasks = reconcile(airflow, scenario["hour"], dump=False)

    assert (state, tasks["verify_dumps"], tasks["compare_and_repair"]) == ("failed", "failed", "upstream_failed")
    cells, differed, total, repaired, status, detail = report_of(scenario["hour"])
    assert (repaired, status) == (False, "failed")
    assert f"does not match its manifest: {gone} is missing" in detail
    assert facts([ad.ad_id for ad in scenario["ads"].values()]) == scenario["facts"]


def test_a_missing_dump_fails_the_run_and_is_recorded(airflow, cassandra, cfg, dumps):
    hour = fresh_hour(cassandra, cfg, dumps)

    try:
        _, state, tasks = reconcile(airflow, hour, dump=False)
    finally:
        for h in [*raw_dumps.horizon_hours(hour, 10800), hour]:
            dumps.delete_hour(h)

    assert state == "failed"
    assert (tasks["verify_dumps"], tasks["recompute_from_dumps"], tasks["compare_and_repair"]) == (
        "failed", "upstream_failed", "upstream_failed")
    cells, differed, total, repaired, status, detail = report_of(hour)
    assert (cells, differed, total, repaired, status) == (0, 0, 0, False, "failed")
    assert f"verify_dumps failed: no dump of raw clicks for the hour {raw_dumps.floor_hour(hour - 3 * HOUR).isoformat()}" in detail


# Late replayed clicks: a spooled click stored after its hour was dumped and reconciled


@pytest.fixture(scope="module")
def late_scenario(airflow, cassandra, cfg, store, dumps, tmp_path_factory):
    from click_api.spool import Spool
    from click_api.windows import Windows
    from click_api.wiring import Services, replay_once

    hour = fresh_hour(cassandra, cfg, dumps, hours=4)  # the hour and the three its horizon reaches
    after = hour + HOUR
    ad = Ad(unique("late-ad"), unique("late-adv"), "https://landing.example.com/late")
    store.put_ad(ad)
    clicks = Clicks(store)
    clicks.click(ad, hour + timedelta(minutes=20), user_id="u1")
    # An impression first clicked at :50 in a click that waits in a spool, and clicked again in the next
    # hour, stored at once and labelled valid (as with Redis flushed): only the spooled click is billable.
    spooled = new_impression_id()
    clicks.issued[spooled] = hour + timedelta(minutes=49)
    clicks.click(ad, after + timedelta(minutes=10), impression_id=spooled, user_id="u2")
    clicks.click(ad, after + timedelta(minutes=30), user_id="u3")

    # Both hours are reconciled before the spooled click is stored, so the next hour bills the repeat.
    # The warehouse holds no minute of these hours (no rollup ran): every cell is drift, so the
    # threshold is lifted; the backfill runs take it from the run that starts them.
    states = [reconcile(airflow, h, drift_threshold=1)[1] for h in (hour, after)]
    before = facts([ad.ad_id])
    spool = Spool(str(tmp_path_factory.mktemp("late-spool")))
    spool.append(Click(uuid.uuid4().hex, spooled, ad.ad_id, ad.advertiser_id, hour + timedelta(minutes=50),
                       clicks.issued[spooled], "u2", "fp-late", None, "valid", None))
    replayed = replay_once(Services(store=store, deduper=None, spool=spool, clicks=None), Windows.from_env(os.environ))
    marked = store.pending_late_hours().get(hour)

    # The run of the hour after those takes the late hour up, and triggers the runs of the others.
    run_id, state, tasks = reconcile(airflow, hour + 2 * HOUR, drift_threshold=1)
    triggered = [run for run in airflow._call("GET", f"/dags/{DAG}/dagRuns", params={"limit": 100})["dag_runs"]
                 if run["dag_run_id"].startswith("late__") and run["dag_run_id"].endswith(f"__{run_id}")]
    late_runs = {datetime.fromisoformat(run["conf"]["hour"]): run["dag_run_id"] for run in triggered}
    late_states = {h: airflow.wait_for_run(DAG, late_run, timeout=900) for h, late_run in late_runs.items()}
    late_confs = {h: airflow._call("GET", f"/dags/{DAG}/dagRuns/{late_run}")["conf"] for h, late_run in late_runs.items()}
    yield {"hour": hour, "ad": ad, "states": states, "before": before, "replayed": replayed, "marked": marked,
           "state": state, "tasks": tasks, "late_states": late_states, "late_confs": late_confs,
           "facts": facts([ad.ad_id]), "report": report_of(hour), "pending": store.pending_late_hours()}
    for h in [*raw_dumps.horizon_hours(hour, 10800), *(hour + n * HOUR for n in range(4))]:
        dumps.delete_hour(h)


def test_a_late_replayed_click_marks_its_hour_after_the_hour_was_reconciled(late_scenario):
    hour, ad_id = late_scenario["hour"], late_scenario["ad"].ad_id
    at = {m: naive(hour + timedelta(minutes=m)) for m in (20, 70, 90)}

    assert late_scenario["states"] == ["success", "success"]
    assert late_scenario["before"] == [[at[20], ad_id, 1, 0, 0, 1], [at[70], ad_id, 1, 0, 0, 1], [at[90], ad_id, 1, 0, 0, 1]]
    assert late_scenario["replayed"] == 1
    assert late_scenario["marked"] is not None


def test_the_next_run_dumps_the_late_hour_again_and_reconciles_the_hours_it_reaches(late_scenario):
    hour = late_scenario["hour"]

    assert late_scenario["state"] == "success", late_scenario["tasks"]
    assert late_scenario["tasks"]["reconcile_late_hours"] == "success"
    assert late_scenario["late_states"] == {h: "success" for h in (hour, hour + HOUR, hour + 3 * HOUR)}
    assert {h: conf["dump"] for h, conf in late_scenario["late_confs"].items()} == {
        h: "missing" for h in (hour, hour + HOUR, hour + 3 * HOUR)}
    assert hour not in late_scenario["pending"]


def test_afterwards_the_late_click_is_billed_once_and_its_repeat_not_at_all(late_scenario):
    hour, ad_id = late_scenario["hour"], late_scenario["ad"].ad_id
    at = {m: naive(hour + timedelta(minutes=m)) for m in (20, 50, 70, 90)}

    assert late_scenario["facts"] == [
        [at[20], ad_id, 1, 0, 0, 1], [at[50], ad_id, 1, 0, 0, 1], [at[70], ad_id, 0, 1, 0, 0], [at[90], ad_id, 1, 0, 0, 1]]
    assert '"late_clicks": 1' in late_scenario["report"][5]
