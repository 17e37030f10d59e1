"""The reconciliation DAG parses with the expected graph; its tasks plan the hour, pick the hours to
dump, verify the dumps, call the warehouse and fail loudly (S3 and the warehouse are fakes here)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from spark_jobs import raw_dumps
from tests.fakes import FakeResponse
from tests.spark_jobs.fake_s3 import FakeS3

DAG_ID = "reconcile_clicks_hourly"
H10 = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture
def bag(parse):
    return parse()


@pytest.fixture
def dag(bag):
    return bag.dags[DAG_ID]


def module(dag):
    """The DAG file's module-level functions (plan, dump_range, record_failure)."""
    return SimpleNamespace(**dag.get_task("plan_hour").python_callable.__globals__)


def plan_hour(dag, conf: dict | None = None, interval_start: datetime | None = H10) -> dict:
    return dag.get_task("plan_hour").python_callable(dag_run=SimpleNamespace(conf=conf), data_interval_start=interval_start)


# The graph


def test_the_dag_parses_without_errors(bag):
    assert bag.import_errors == {}
    assert DAG_ID in bag.dags


def test_the_tasks_wait_dump_verify_recompute_repair_then_check(dag):
    edges = {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids}

    assert set(dag.task_ids) == {
        "plan_hour", "wait_for_hour_to_settle", "plan_dump", "dump_raw_clicks", "verify_dumps",
        "recompute_from_dumps", "compare_and_repair", "check_drift", "check_quality", "reconcile_late_hours",
        "delete_expired_dumps",
    }
    assert edges == {
        ("plan_hour", "wait_for_hour_to_settle"), ("wait_for_hour_to_settle", "plan_dump"), ("plan_hour", "plan_dump"),
        ("plan_dump", "dump_raw_clicks"), ("plan_dump", "verify_dumps"), ("dump_raw_clicks", "verify_dumps"),
        ("plan_hour", "verify_dumps"), ("verify_dumps", "recompute_from_dumps"),
        ("recompute_from_dumps", "compare_and_repair"), ("plan_hour", "compare_and_repair"),
        ("compare_and_repair", "check_drift"), ("compare_and_repair", "check_quality"), ("plan_hour", "check_quality"),
        ("compare_and_repair", "reconcile_late_hours"),
    }
    assert dag.get_task("verify_dumps").trigger_rule == "none_failed_min_one_success"


def test_runs_are_hourly_serial_retried_not_caught_up_and_start_paused(dag):
    assert (dag.max_active_runs, dag.catchup, dag.is_paused_upon_creation) == (1, False, True)
    assert dag.start_date == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert dag.timetable.expression == "0 * * * *"
    assert "repaired and recorded" in dag.doc_md
    assert all(task.retries >= 1 for task in dag.tasks)


def test_the_data_tasks_record_their_failure_in_the_warehouse(dag):
    record = module(dag).record_failure
    for task_id in ("plan_dump", "dump_raw_clicks", "verify_dumps", "recompute_from_dumps", "compare_and_repair"):
        assert dag.get_task(task_id).on_failure_callback == [record], task_id
    assert not dag.get_task("check_drift").on_failure_callback


# Planning the hour


def test_a_scheduled_run_reconciles_its_data_interval(dag, tmp_path):
    assert plan_hour(dag, conf={}) == {
        "start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T11:00:00+00:00", "dump": True,
        "drift_threshold": 0.0001, "horizon_s": 10800, "late_after_s": 680, "raw_click_ttl_s": 2592000,
        "output": f"{tmp_path}/staging/reconcile_clicks/20260101T10",
    }


def test_a_scheduled_runs_pendulum_interval_gives_aware_bounds(dag):
    import pendulum

    window = plan_hour(dag, conf={}, interval_start=pendulum.datetime(2026, 1, 1, 10, tz="UTC"))

    assert (window["start"], window["end"]) == ("2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00")


@pytest.mark.parametrize(
    "conf",
    [{"hour": "2026-01-01T12:00:00+02:00"}, {"start": "2026-01-01T10:00", "end": "2026-01-01T11:00Z"}],
    ids=["hour", "start-end"],
)
def test_a_manual_run_reconciles_the_hour_of_its_conf(dag, conf):
    window = plan_hour(dag, conf=conf, interval_start=None)

    assert (window["start"], window["end"]) == ("2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00")


def test_a_manual_run_can_skip_the_dump_and_set_its_threshold(dag):
    window = plan_hour(dag, conf={"hour": "2026-01-01T10:00Z", "dump": "false", "drift_threshold": 0.5})

    assert (window["dump"], window["drift_threshold"]) == (False, 0.5)


def test_the_threshold_and_windows_come_from_the_environment(parse):
    dag = parse(RECONCILE_DRIFT_THRESHOLD="0.02", ROLLUP_LOOKBACK_S="120", RECONCILE_DUPLICATE_HORIZON_S="7200").dags[DAG_ID]

    window = plan_hour(dag, conf={})

    assert (window["drift_threshold"], window["late_after_s"], window["horizon_s"]) == (0.02, 200, 7200)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"hour": "2026-01-01T10:30:00Z"}, "not the start of an hour"),
        ({"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T12:00:00Z"}, "one hour"),
        ({"start": "2026-01-01T10:00:00Z"}, "both"),
        ({"hour": "2026-01-01T10:00:00Z", "drift_threshold": -1}, "negative"),
    ],
    ids=["unaligned", "two-hours", "start-only", "negative-threshold"],
)
def test_a_bad_conf_fails_the_plan(dag, conf, message):
    with pytest.raises(ValueError, match=message):
        plan_hour(dag, conf=conf)


def test_a_manual_run_without_an_hour_has_nothing_to_reconcile(dag):
    with pytest.raises(ValueError, match='needs "hour"'):
        plan_hour(dag, conf={}, interval_start=None)


@pytest.mark.parametrize(
    ("past_settling", "done"),
    [(timedelta(seconds=5), True), (timedelta(seconds=-5), False), (timedelta(hours=-2), False)],
    ids=["settled", "within-the-margin", "not-closed"],
)
def test_the_sensor_waits_for_the_lookback_lateness_and_margin(dag, past_settling, done):
    settling = timedelta(seconds=module(dag).LOOKBACK_S + module(dag).LATENESS_S + module(dag).MARGIN_S)
    assert settling == timedelta(seconds=600 + 20 + 120)  # the defaults the README gives
    end = datetime.now(timezone.utc) - settling - past_settling

    result = dag.get_task("wait_for_hour_to_settle").python_callable({"end": end.isoformat()})

    assert result.is_done is done


# Choosing the hours to dump


NOW = H10 + 2 * HOUR
EARLIER = [H10 - 3 * HOUR, H10 - 2 * HOUR, H10 - HOUR]


def window(dump=True, ttl_s=30 * 86400, hour=H10) -> dict:
    return {"start": hour.isoformat(), "dump": dump, "raw_click_ttl_s": ttl_s}


def test_dump_the_hour_alone_when_the_earlier_hours_are_dumped(dag):
    assert module(dag).dump_range(window(), EARLIER, set(EARLIER), NOW) == {
        "start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T11:00:00+00:00", "also": ""}


def test_dump_from_the_first_earlier_hour_without_a_dump(dag):
    assert module(dag).dump_range(window(), EARLIER, {EARLIER[0]}, NOW) == {
        "start": "2026-01-01T08:00:00+00:00", "end": "2026-01-01T11:00:00+00:00", "also": ""}


def test_no_dump_asked_dumps_nothing_even_with_earlier_hours_missing(dag):
    assert module(dag).dump_range(window(dump=False), EARLIER, set(EARLIER), NOW) is None
    assert module(dag).dump_range(window(dump=False), EARLIER, set(), NOW) is None


def test_hours_cassandra_no_longer_holds_are_never_dumped(dag):
    ttl_s = 3 * 3600  # oldest hour held in full: NOW - 3 h + 1 h margin = 10:00

    assert module(dag).dump_range(window(ttl_s=ttl_s), EARLIER, set(), NOW) == {
        "start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T11:00:00+00:00", "also": ""}
    assert module(dag).dump_range(window(ttl_s=ttl_s), EARLIER, set(), NOW + HOUR) is None


def test_dumping_the_missing_hours_only_leaves_the_dumped_ones_and_the_runs_own_alone(dag):
    missing = {**window(), "dump": "missing"}
    dump_range = module(dag).dump_range

    assert dump_range(missing, EARLIER, {*EARLIER, H10}, NOW) is None
    assert dump_range(missing, EARLIER, {EARLIER[0], EARLIER[2], H10}, NOW) == {
        "start": "2026-01-01T08:00:00+00:00", "end": "2026-01-01T09:00:00+00:00", "also": ""}
    assert dump_range(missing, EARLIER, set(EARLIER), NOW) == {
        "start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T11:00:00+00:00", "also": ""}


def test_a_run_can_ask_for_the_missing_dumps_only(dag):
    assert plan_hour(dag, conf={"dump": "missing"})["dump"] == "missing"


def test_late_hours_before_the_range_are_dumped_again_alone(dag):
    late = [H10 - 9 * HOUR, H10 - 5 * HOUR, H10 - 2 * HOUR]

    assert module(dag).dump_range(window(), EARLIER, {EARLIER[0]}, NOW, late) == {
        "start": "2026-01-01T08:00:00+00:00", "end": "2026-01-01T11:00:00+00:00",
        "also": "2026-01-01T01:00:00+00:00,2026-01-01T05:00:00+00:00"}


def test_late_hours_cassandra_no_longer_holds_are_not_dumped_again(dag):
    ttl_s = 4 * 3600  # oldest hour held in full: NOW - 4 h + 1 h margin = 09:00

    assert module(dag).dump_range(window(ttl_s=ttl_s), EARLIER, set(EARLIER), NOW, [H10 - 5 * HOUR])["also"] == ""


# Hours that late replayed clicks reach


@pytest.mark.parametrize(
    ("late", "horizon_s", "hours"),
    [
        ([5], 3 * 3600, [5, 6, 7, 8]),  # the late hour and the three its horizon reaches
        ([1, 5], 3600, [1, 2, 5, 6]),  # two late hours apart: each with the hour after it
        ([5], 5400, [5, 6, 7]),  # a horizon of 1.5 hours reaches two hours on
        ([5], 1, [5, 6]),  # a one-second horizon reaches the next hour's first second
        ([], 3 * 3600, []),
    ],
    ids=["one", "two-apart", "part-hour-horizon", "one-second-horizon", "none"],
)
def test_the_late_hours_reach_the_hours_whose_horizon_holds_them(dag, late, horizon_s, hours):
    at = [H10.replace(hour=h) for h in late]

    assert module(dag).hours_to_recompute(at, horizon_s) == [H10.replace(hour=h) for h in hours]


# The tasks, on an in-memory S3


@pytest.fixture
def s3(monkeypatch) -> FakeS3:
    fake = FakeS3()
    monkeypatch.setattr(raw_dumps, "s3_client", lambda environ: fake)
    monkeypatch.setenv("S3_BUCKET", "bucket")
    return fake


def publish(s3: FakeS3, hour: datetime, rows: int = 3) -> raw_dumps.Manifest:
    prefix = raw_dumps.run_prefix("raw_clicks", hour, "r1")
    s3.put("bucket", prefix + "part-0.parquet", b"1234")
    manifest = raw_dumps.build_manifest(
        "raw_clicks", hour, "r1", {prefix + "part-0.parquet": 4},
        {"rows": rows, "min_clicked_at": None, "max_clicked_at": None, "checksum": "xxhash64-sum:1"}, ["minute"], hour,
    )
    raw_dumps.DumpStore(s3, "bucket").publish(manifest)
    return manifest


class FakeTaskInstance:
    def __init__(self, returned: dict | None = None, task_id: str = ""):
        self.returned, self.task_id, self.pushed = returned or {}, task_id, {}

    def xcom_push(self, key, value):
        self.pushed[key] = value

    def xcom_pull(self, task_ids, key="return_value"):
        """What this task pushed (``task_ids`` None), another task's return value, or what it pushed
        under ``key`` (this fake holds one task's pushes: the test's own)."""
        if task_ids is None or key != "return_value":
            return self.pushed.get(key)
        return self.returned.get(task_ids)


def recent_window(dag, hour: datetime, **conf) -> dict:
    return plan_hour(dag, conf={"hour": hour.isoformat(), **conf})


@pytest.fixture
def marks(dag, monkeypatch) -> dict:
    """late_click_hours, as plan_dump reads them from Cassandra: fill in the test."""
    rows: dict[datetime, datetime] = {}
    monkeypatch.setitem(dag.get_task("plan_dump").python_callable.__globals__, "_late_marks", lambda: dict(rows))
    return rows


SCHEDULED, MANUAL, BACKFILL = (SimpleNamespace(run_type=kind) for kind in ("scheduled", "manual", "backfill"))


def test_plan_dump_dumps_from_the_first_earlier_hour_without_a_dump(dag, s3, marks):
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    publish(s3, hour - 3 * HOUR)
    ti = FakeTaskInstance()

    chosen = dag.get_task("plan_dump").python_callable(recent_window(dag, hour), ti=ti, dag_run=SCHEDULED)

    assert chosen == "dump_raw_clicks"
    assert ti.pushed == {"dump": {"start": (hour - 2 * HOUR).isoformat(), "end": (hour + HOUR).isoformat(), "also": ""}}


def test_plan_dump_goes_straight_to_verify_when_the_conf_says_not_to_dump(dag, s3, marks):
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    ti = FakeTaskInstance()

    assert dag.get_task("plan_dump").python_callable(recent_window(dag, hour, dump=False), ti=ti) == "verify_dumps"
    assert ti.pushed == {}


def test_plan_dump_dumps_late_hours_again_and_plans_to_reconcile_the_settled_hours_they_reach(dag, s3, marks, caplog):
    # The hour before the current one: the current hour never settles while this test runs.
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - HOUR
    for h in raw_dumps.horizon_hours(hour, 10800):
        publish(s3, h)
    old, recent, own = hour - 9 * HOUR, hour - 2 * HOUR, hour
    marks.update({old: ["p1"], recent: ["p1", "p2"], own: ["p2"]})  # own: left to the next run
    ti = FakeTaskInstance()

    chosen = dag.get_task("plan_dump").python_callable(recent_window(dag, hour), ti=ti, dag_run=SCHEDULED)

    assert chosen == "dump_raw_clicks"
    # Reached: old..old+3 and recent..recent+3 (= hour + 1); not the run's own hour, and not hour + 1,
    # the current hour, which has not settled.
    reached = [old + n * HOUR for n in range(4)] + [recent, recent + HOUR]
    assert ti.pushed == {
        "dump": {"start": hour.isoformat(), "end": (hour + HOUR).isoformat(), "also": f"{old.isoformat()},{recent.isoformat()}"},
        "late": {"hours": [h.isoformat() for h in reached], "drift_threshold": 0.0001,
                 "replays": {old.isoformat(): ["p1"], recent.isoformat(): ["p1", "p2"]}},
    }
    assert "dumping those hours again, then reconciling them" in caplog.text


def test_a_run_takes_up_the_oldest_late_hours_and_leaves_the_rest_pending(dag, s3, marks, caplog):
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - HOUR
    for h in raw_dumps.horizon_hours(hour, 10800):
        publish(s3, h)
    late = [hour - n * 10 * HOUR for n in range(6, 0, -1)]
    marks.update({h: ["p"] for h in late})
    ti = FakeTaskInstance()

    dag.get_task("plan_dump").python_callable(recent_window(dag, hour), ti=ti, dag_run=SCHEDULED)

    assert list(ti.pushed["late"]["replays"]) == [h.isoformat() for h in late[:4]]
    assert f"also replayed late into {late[4]:%Y-%m-%dT%H:%MZ}, {late[5]:%Y-%m-%dT%H:%MZ}: left pending" in caplog.text


def test_a_run_that_dumps_only_missing_hours_leaves_late_hours_alone(dag, s3, marks):
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    for h in [*raw_dumps.horizon_hours(hour, 10800), hour]:
        publish(s3, h)
    marks[hour - 5 * HOUR] = ["p"]
    ti = FakeTaskInstance()

    chosen = dag.get_task("plan_dump").python_callable(recent_window(dag, hour, dump="missing"), ti=ti, dag_run=MANUAL)

    assert chosen == "verify_dumps" and ti.pushed == {}


def test_late_hours_cassandra_no_longer_holds_are_reported_and_not_taken_up(dag, s3, marks, caplog, monkeypatch):
    monkeypatch.setenv("RAW_CLICK_TTL_S", str(4 * 86400))
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    for h in raw_dumps.horizon_hours(hour, 10800):
        publish(s3, h)
    marks[hour - 5 * 24 * HOUR] = ["p"]
    ti = FakeTaskInstance()

    dag.get_task("plan_dump").python_callable(recent_window(dag, hour), ti=ti, dag_run=SCHEDULED)

    assert "late" not in ti.pushed and ti.pushed["dump"]["also"] == ""
    assert "which Cassandra no longer holds whole" in caplog.text


def test_a_backfill_run_leaves_late_hours_to_the_next_run_outside_it(dag, s3, marks):
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    for h in raw_dumps.horizon_hours(hour, 10800):
        publish(s3, h)
    marks[hour - 5 * HOUR] = ["p"]
    ti = FakeTaskInstance()

    dag.get_task("plan_dump").python_callable(recent_window(dag, hour), ti=ti, dag_run=BACKFILL)

    assert ti.pushed == {"dump": {"start": hour.isoformat(), "end": (hour + HOUR).isoformat(), "also": ""}}


class FakeAirflow:
    def __init__(self):
        self.triggered = []

    def trigger_run(self, dag_id, run_id, conf, note=""):
        self.triggered.append((dag_id, run_id, conf))
        return run_id


@pytest.fixture
def airflow_api(monkeypatch) -> FakeAirflow:
    from infra import airflow_api

    fake = FakeAirflow()
    monkeypatch.setattr(airflow_api.AirflowAPI, "from_env", classmethod(lambda cls, env=None: fake))
    return fake


@pytest.fixture
def taken(dag, monkeypatch) -> list:
    """The late replays reconcile_late_hours marks as taken up (in Cassandra, really)."""
    calls = []
    monkeypatch.setitem(dag.get_task("reconcile_late_hours").python_callable.__globals__, "_take_late_marks", calls.append)
    return calls


PLANNED = {"hours": ["2026-01-01T05:00:00+00:00", "2026-01-01T06:00:00+00:00"], "drift_threshold": 0.5,
           "replays": {"2026-01-01T05:00:00+00:00": ["p1"]}}


def test_reconcile_late_hours_triggers_a_run_per_hour_then_takes_the_replays_up(dag, airflow_api, taken):
    ti = FakeTaskInstance()
    ti.run_id = "scheduled__2026-01-01T10:00:00+00:00"
    ti.pushed["late"] = PLANNED

    result = dag.get_task("reconcile_late_hours").python_callable(ti=ti)

    conf = {"dump": "missing", "drift_threshold": 0.5}
    assert [(dag_id, run_conf) for dag_id, _, run_conf in airflow_api.triggered] == [
        (DAG_ID, {"hour": "2026-01-01T05:00:00+00:00", **conf}), (DAG_ID, {"hour": "2026-01-01T06:00:00+00:00", **conf})]
    [first, second] = [run_id.split("__") for _, run_id, _ in airflow_api.triggered]
    assert (first[:2], second[:2]) == (["late", "20260101T05"], ["late", "20260101T06"])
    assert first[2] == second[2] and "__".join(first[3:]) == ti.run_id
    assert taken == [{H10 - 5 * HOUR: ["p1"]}]
    assert result["runs"] == [run_id for _, run_id, _ in airflow_api.triggered]


def test_a_retry_triggers_the_same_runs_and_new_replays_new_ones(dag, airflow_api, taken):
    ti = FakeTaskInstance()
    ti.run_id = "scheduled__2026-01-01T10:00:00+00:00"
    task = dag.get_task("reconcile_late_hours").python_callable
    ti.pushed["late"] = PLANNED
    first, again = task(ti=ti)["runs"], task(ti=ti)["runs"]
    ti.pushed["late"] = {**PLANNED, "replays": {"2026-01-01T05:00:00+00:00": ["p1", "p2"]}}

    assert first == again and set(task(ti=ti)["runs"]).isdisjoint(first)


def test_reconcile_late_hours_leaves_the_replays_pending_when_a_trigger_fails(dag, airflow_api, taken):
    def refuse(dag_id, run_id, conf, note=""):
        raise ConnectionError("Airflow's API is down")

    airflow_api.trigger_run = refuse
    ti = FakeTaskInstance()
    ti.run_id = "scheduled__2026-01-01T10:00:00+00:00"
    ti.pushed["late"] = PLANNED

    with pytest.raises(ConnectionError):
        dag.get_task("reconcile_late_hours").python_callable(ti=ti)
    assert taken == []


def test_reconcile_late_hours_does_nothing_without_late_hours(dag, airflow_api, taken):
    assert dag.get_task("reconcile_late_hours").python_callable(ti=FakeTaskInstance()) is None
    assert airflow_api.triggered == [] and taken == []


def test_verify_dumps_returns_the_row_counts_of_the_hour_and_its_horizon(dag, s3):
    for n, h in enumerate([H10 - 3 * HOUR, H10 - 2 * HOUR, H10 - HOUR, H10]):
        publish(s3, h, rows=n)

    rows = dag.get_task("verify_dumps").python_callable(plan_hour(dag, conf={}))

    assert rows == {"2026-01-01T07:00:00+00:00": 0, "2026-01-01T08:00:00+00:00": 1, "2026-01-01T09:00:00+00:00": 2,
                    "2026-01-01T10:00:00+00:00": 3}


def test_a_missing_dump_fails_verify_without_retrying_and_says_which(dag, s3):
    from airflow.sdk.exceptions import AirflowFailException

    for h in [H10 - 3 * HOUR, H10 - 2 * HOUR, H10]:
        publish(s3, h)

    with pytest.raises(AirflowFailException, match=r"no dump of raw clicks for the hour 2026-01-01T09:00:00\+00:00"):
        dag.get_task("verify_dumps").python_callable(plan_hour(dag, conf={}))


def test_a_dump_whose_files_differ_from_its_manifest_fails_verify_without_retrying(dag, s3):
    from airflow.sdk.exceptions import AirflowFailException

    for h in [H10 - 3 * HOUR, H10 - 2 * HOUR, H10 - HOUR]:
        publish(s3, h)
    manifest = publish(s3, H10)
    s3.put("bucket", manifest.files[0][0], b"12")

    with pytest.raises(AirflowFailException, match="has 2 bytes, the manifest says 4"):
        dag.get_task("verify_dumps").python_callable(plan_hour(dag, conf={}))


def test_retention_deletes_the_expired_hours(dag, s3, monkeypatch):
    monkeypatch.setenv("DUMP_RETENTION_S", str(30 * 86400))
    old, recent = datetime(2020, 1, 1, 10, tzinfo=timezone.utc), datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    publish(s3, old)
    publish(s3, recent)

    result = dag.get_task("delete_expired_dumps").python_callable()

    assert result["hours_deleted"] == [old.isoformat()]
    assert all(k.startswith(raw_dumps.hour_prefix("raw_clicks", recent)) for k in s3.keys("bucket"))


# The calls to the warehouse


REPORT = {"hour_at": "2026-01-01T10:00:00", "status": "repaired", "detail": {"message": "2 of 9 cells differed"}}


def test_compare_and_repair_sends_the_output_and_the_recompute_summary_then_removes_the_output(dag, warehouse):
    posts, answers = warehouse
    answers.append(FakeResponse(REPORT))
    window = plan_hour(dag, conf={"hour": "2026-01-01T10:00Z", "drift_threshold": 0.25})
    output = Path(window["output"])
    (output / "minute").mkdir(parents=True)
    (output / "summary.json").write_text(json.dumps({"late_clicks": 4}))

    assert dag.get_task("compare_and_repair").python_callable(window) == REPORT
    assert posts == [{
        "method": "POST",
        "url": "http://warehouse.test/internal/reconciliations/clicks-hour",
        "json": {"hour": "2026-01-01T10:00:00+00:00", "output": str(output), "drift_threshold": 0.25,
                 "context": {"late_clicks": 4}},
        "headers": {"Authorization": "Bearer tok"},
    }]
    assert not output.exists()


def test_check_quality_checks_the_repaired_hour_and_fails_on_a_failure(dag, warehouse):
    posts, answers = warehouse
    answers.append(FakeResponse({"passed": False, "failures": ["fct_clicks_minute: duplicate key: 2 rows"]}))

    with pytest.raises(ValueError, match="duplicate key: 2 rows"):
        dag.get_task("check_quality").python_callable(plan_hour(dag, conf={}))

    assert posts[0]["url"] == "http://warehouse.test/internal/checks"
    assert posts[0]["json"] == {"start": "2026-01-01T10:00:00+00:00", "end": "2026-01-01T11:00:00+00:00"}


def test_check_drift_fails_the_run_when_the_report_says_failed(dag):
    from airflow.sdk.exceptions import AirflowFailException

    failed = {**REPORT, "status": "failed", "detail": {"message": "drift 0.3 is over the threshold 0.1"}}

    with pytest.raises(AirflowFailException, match="drift over threshold in 2026-01-01T10:00:00: drift 0.3"):
        dag.get_task("check_drift").python_callable(failed)
    assert dag.get_task("check_drift").python_callable(REPORT) is None


def test_a_failed_task_is_recorded_with_the_jobs_own_message(dag, warehouse):
    posts, answers = warehouse
    answers.append(FakeResponse({"status": "failed"}))
    window = plan_hour(dag, conf={})
    Path(window["output"]).mkdir(parents=True)
    (Path(window["output"]) / "_FAILED").write_text("DumpMismatch: row count 2 != manifest 3\n")
    context = {"ti": FakeTaskInstance({"plan_hour": window}, task_id="recompute_from_dumps"),
               "exception": RuntimeError("spark-submit exited 2"), "run_id": "manual__x"}

    module(dag).record_failure(context)

    assert posts[0]["url"] == "http://warehouse.test/internal/reconciliations/clicks-hour/failed"
    assert posts[0]["json"] == {
        "hour": "2026-01-01T10:00:00+00:00",
        "detail": "recompute_from_dumps failed: spark-submit exited 2 (DumpMismatch: row count 2 != manifest 3)",
        "context": {"run_id": "manual__x"},
    }


def test_spark_args_are_the_planned_hour_and_the_dump_range(dag):
    from airflow.sdk.execution_time import macros

    window = plan_hour(dag, conf={})
    ti = FakeTaskInstance({"plan_hour": window})
    ti.pushed["dump"] = {"start": "2026-01-01T08:00:00+00:00", "end": "2026-01-01T11:00:00+00:00", "also": "2026-01-01T05:00:00+00:00"}
    ti.xcom_pull = lambda task_ids, key="return_value": ti.pushed[key] if task_ids == "plan_dump" else ti.returned[task_ids]
    context = {"ti": ti, "macros": macros}

    def render(task_id):
        task = dag.get_task(task_id)
        return task.render_template(task.application_args, context, jinja_env=dag.get_template_env())

    assert render("dump_raw_clicks") == ["--start", "2026-01-01T08:00:00+00:00", "--end", "2026-01-01T11:00:00+00:00",
                                         "--also-hours=2026-01-01T05:00:00+00:00"]
    assert render("recompute_from_dumps") == [
        "--start", window["start"], "--end", window["end"], "--output", window["output"],
        "--horizon-s", "10800", "--late-after-s", "680",
    ]
