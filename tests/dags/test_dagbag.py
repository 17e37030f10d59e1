"""The rollup DAG parses, has the expected task graph, and hands the job and the warehouse one window."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from spark_jobs.fct_clicks_minute import minutes_between
from spark_jobs.session import window_parser
from tests.fakes import FakeResponse

DAG_ID = "rollup_clicks_minute"
INTERVAL_START = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
INTERVAL_END = INTERVAL_START + timedelta(minutes=1)


@pytest.fixture
def dag(parse):
    return parse().dags[DAG_ID]


@pytest.fixture(autouse=True)
def watermark(monkeypatch) -> list:
    """The watermark the warehouse reports to plan_window: ``watermark[0]``, None (no load yet) unless a test sets it."""
    from warehouse import client

    current: list = [None]
    monkeypatch.setattr(client, "watermark", lambda environ=None: current[0])
    return current


def plan_window(dag, conf: dict | None = None, run_type: str = "scheduled") -> dict:
    return dag.get_task("plan_window").python_callable(
        dag_run=SimpleNamespace(conf=conf, run_type=run_type),
        data_interval_start=INTERVAL_START,
        data_interval_end=INTERVAL_END,
    )


class FakeTaskInstance:
    """Answers the templates' ``ti.xcom_pull(task_ids=...)`` with what the named task returned."""

    def __init__(self, returned: dict):
        self.returned = returned

    def xcom_pull(self, task_ids):
        return self.returned[task_ids]


def render_spark_args(dag, window: dict) -> list[str]:
    from airflow.sdk.execution_time import macros

    task = dag.get_task("spark_rollup")
    context = {
        "data_interval_start": INTERVAL_START, "data_interval_end": INTERVAL_END, "macros": macros,
        "ti": FakeTaskInstance({"plan_window": window}),
    }
    return task.render_template(task.application_args, context, jinja_env=dag.get_template_env())


# The graph


def test_the_dag_folder_imports_without_errors(parse):
    bag = parse()

    assert bag.import_errors == {}
    assert DAG_ID in bag.dags


def test_the_tasks_run_in_order_wait_rollup_load_check_after_planning_the_window(dag):
    edges = {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids}

    assert set(dag.task_ids) == {"plan_window", "wait_for_late_clicks", "spark_rollup", "load_warehouse", "check_quality"}
    assert edges == {
        ("wait_for_late_clicks", "spark_rollup"),
        ("spark_rollup", "load_warehouse"),
        ("load_warehouse", "check_quality"),
        ("plan_window", "wait_for_late_clicks"),
        ("plan_window", "load_warehouse"),
        ("plan_window", "check_quality"),
    }


def test_runs_are_serial_retried_and_not_caught_up(dag):
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.start_date == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert "a lookback of 600s" in dag.doc_md and "make backfill" in dag.doc_md
    assert all(task.retries >= 1 for task in dag.tasks)


# The window


def test_a_scheduled_run_plans_its_interval_widened_by_the_lookback(dag, tmp_path):
    assert plan_window(dag, conf={}) == {
        "start": "2026-01-01T09:50:00+00:00",
        "end": "2026-01-01T10:01:00+00:00",
        "output": f"{tmp_path}/staging/fct_clicks_minute/20260101T0950-20260101T1001",
    }


def test_a_scheduled_run_within_the_lookback_of_the_watermark_keeps_its_window(dag, watermark):
    watermark[0] = INTERVAL_START - timedelta(minutes=3)

    window = plan_window(dag, conf={})

    assert (window["start"], window["end"]) == ("2026-01-01T09:50:00+00:00", "2026-01-01T10:01:00+00:00")


@pytest.mark.parametrize("behind_min, planned", [
    (25, ("2026-01-01T09:25:00+00:00", "2026-01-01T10:01:00+00:00")),
    (180, ("2026-01-01T06:50:00+00:00", "2026-01-01T08:00:00+00:00")),  # an hour past it at a time
], ids=["25 minutes", "3 hours"])
def test_a_scheduled_run_behind_its_watermark_reaches_back_to_it_and_its_lookback(dag, watermark, behind_min, planned):
    watermark[0] = INTERVAL_START - timedelta(minutes=behind_min)

    window = plan_window(dag, conf={})

    assert (window["start"], window["end"]) == planned


def test_the_catch_up_window_comes_from_the_environment(parse, watermark):
    watermark[0] = INTERVAL_START - timedelta(hours=3)

    window = plan_window(parse(ROLLUP_MAX_WINDOW_S="600").dags[DAG_ID], conf={})

    assert (window["start"], window["end"]) == ("2026-01-01T06:50:00+00:00", "2026-01-01T07:10:00+00:00")


def test_a_catch_up_never_reaches_back_before_what_cassandra_holds(dag, watermark):
    # The interval ends at 10:01; 30 days of TTL less the hour of margin: Cassandra holds from 11:01 on
    # 2025-12-02, and from 11:16 when the job checks, up to 15 minutes later.
    watermark[0] = datetime(2025, 12, 2, 11, 20, tzinfo=timezone.utc)

    window = plan_window(dag, conf={})

    assert (window["start"], window["end"]) == ("2025-12-02T11:16:00+00:00", "2025-12-02T12:20:00+00:00")


def test_a_watermark_older_than_cassandra_holds_is_not_reached_back_to(dag, watermark, caplog):
    watermark[0] = INTERVAL_START - timedelta(days=30)

    window = plan_window(dag, conf={})

    assert (window["start"], window["end"]) == ("2026-01-01T09:50:00+00:00", "2026-01-01T10:01:00+00:00")
    assert "cannot be rolled up again" in caplog.text


def test_manual_and_backfill_runs_keep_their_own_window_whatever_the_watermark(dag, watermark):
    watermark[0] = INTERVAL_START - timedelta(hours=3)

    backfill = plan_window(dag, conf={}, run_type="backfill")
    manual = plan_window(dag, conf={"start": "2026-01-01T10:00Z", "end": "2026-01-01T10:05Z"})

    assert (backfill["start"], backfill["end"]) == ("2026-01-01T10:00:00+00:00", "2026-01-01T10:01:00+00:00")
    assert (manual["start"], manual["end"]) == ("2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00")


def test_a_backfill_run_plans_its_interval_alone(dag):
    window = plan_window(dag, conf={}, run_type="backfill")

    assert (window["start"], window["end"]) == ("2026-01-01T10:00:00+00:00", "2026-01-01T10:01:00+00:00")


def test_the_lookback_comes_from_the_environment(parse):
    window = plan_window(parse(ROLLUP_LOOKBACK_S="120").dags[DAG_ID], conf=None)

    assert (window["start"], window["end"]) == ("2026-01-01T09:58:00+00:00", "2026-01-01T10:01:00+00:00")


def test_a_manual_run_plans_the_window_of_its_conf(dag, tmp_path):
    window = plan_window(dag, conf={"start": "2026-01-01T12:00:00+02:00", "end": "2026-01-01T10:30:00Z"})

    assert window == {
        "start": "2026-01-01T10:00:00+00:00",
        "end": "2026-01-01T10:30:00+00:00",
        "output": f"{tmp_path}/staging/fct_clicks_minute/20260101T1000-20260101T1030",
    }


@pytest.mark.parametrize(
    "conf",
    [
        {"start": "2026-01-01T10:00:30+00:00", "end": "2026-01-01T10:05:00+00:00"},
        {"start": "2026-01-01T10:05:00+00:00", "end": "2026-01-01T10:00:00+00:00"},
    ],
    ids=["unaligned", "reversed"],
)
def test_a_manual_window_must_be_whole_minutes_end_after_start(dag, conf):
    with pytest.raises(ValueError, match="whole minutes"):
        plan_window(dag, conf=conf)


@pytest.fixture
def tokyo_host(monkeypatch):
    """Run as on a host whose local time zone is not UTC."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_manual_window_without_an_offset_is_utc_on_a_host_outside_utc(dag, tokyo_host):
    window = plan_window(dag, conf={"start": "2026-01-01T10:00", "end": "2026-01-01T10:05"})

    assert (window["start"], window["end"]) == ("2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00")


def test_spark_rollup_args_are_the_planned_window(dag):
    window = plan_window(dag, conf={})

    args = render_spark_args(dag, window)

    assert args == ["--start", window["start"], "--end", window["end"], "--output", window["output"]]


def test_the_job_accepts_the_rendered_window(dag):
    parser = window_parser("rollup")
    parser.add_argument("--output")

    args = parser.parse_args(render_spark_args(dag, plan_window(dag, conf={})))

    minutes = minutes_between(args.start, args.end)
    assert (minutes[0], len(minutes)) == (INTERVAL_START - timedelta(minutes=10), 11)


def test_the_jobs_take_the_clock_skew_from_the_environment_and_refuse_a_negative_one(monkeypatch, capsys):
    monkeypatch.setenv("CLICK_CLOCK_SKEW_S", "7")
    window = ["--start", "2026-01-01T10:00", "--end", "2026-01-01T10:05"]

    assert window_parser("rollup").parse_args(window).clock_skew_s == 7
    assert window_parser("rollup").parse_args([*window, "--clock-skew-s", "0"]).clock_skew_s == 0
    with pytest.raises(SystemExit):
        window_parser("rollup").parse_args([*window, "--clock-skew-s", "-5"])
    assert "must be 0 or more seconds, got -5" in capsys.readouterr().err


@pytest.mark.parametrize("ttl_s, hours_ago", [(None, 31 * 24), ("14400", 4)], ids=["default 30 days", "4 hours"])
def test_the_rollup_job_refuses_a_window_cassandra_no_longer_holds_whole(monkeypatch, capsys, tmp_path, ttl_s, hours_ago):
    from spark_jobs import fct_clicks_minute

    if ttl_s:
        monkeypatch.setenv("RAW_CLICK_TTL_S", ttl_s)
    start = (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).replace(second=0, microsecond=0)
    window = ["--start", start.isoformat(), "--end", (start + timedelta(minutes=5)).isoformat(), "--output", str(tmp_path)]

    with pytest.raises(SystemExit) as exited:
        fct_clicks_minute.main(window)  # refused before a Spark session starts

    assert exited.value.code == 2
    assert "raw clicks older than RAW_CLICK_TTL_S have expired from Cassandra" in capsys.readouterr().err


def test_cassandra_holds_a_minute_whole_until_the_ttl_less_an_hour_after_it():
    from click_api.windows import oldest_held

    now = datetime(2026, 2, 10, 12, 0, tzinfo=timezone.utc)
    assert oldest_held(now, 30 * 24 * 3600) == datetime(2026, 1, 11, 13, 0, tzinfo=timezone.utc)


# The tasks' calls to the warehouse


def test_load_warehouse_loads_the_folder_the_job_wrote_then_removes_it(dag, warehouse):
    posts, answers = warehouse
    answers.append(FakeResponse({"rows_inserted": 3}))
    window = plan_window(dag, conf={})
    output = Path(render_spark_args(dag, window)[5])
    (output / "minute").mkdir(parents=True)

    result = dag.get_task("load_warehouse").python_callable(window)

    assert result == {"rows_inserted": 3}
    assert posts == [{
        "method": "POST",
        "url": "http://warehouse.test/internal/loads/clicks-minute",
        "json": {"start": "2026-01-01T09:50:00+00:00", "end": "2026-01-01T10:01:00+00:00", "output": str(output)},
        "headers": {"Authorization": "Bearer tok"},
    }]
    assert not output.exists()


def test_check_quality_checks_the_window_and_fails_on_a_failure(dag, warehouse):
    posts, answers = warehouse
    answers.append(FakeResponse({"passed": False, "failures": ["fct_clicks_minute: negative count: 1 rows"]}))

    with pytest.raises(ValueError, match="negative count"):
        dag.get_task("check_quality").python_callable(plan_window(dag, conf={}))

    assert posts[0]["url"] == "http://warehouse.test/internal/checks"
    assert posts[0]["json"] == {"start": "2026-01-01T09:50:00+00:00", "end": "2026-01-01T10:01:00+00:00"}


def test_check_quality_passes_on_a_clean_report(dag, warehouse):
    _, answers = warehouse
    answers.append(FakeResponse({"passed": True, "failures": []}))

    assert dag.get_task("check_quality").python_callable(plan_window(dag, conf={})) is None
    assert answers == []


def test_a_warehouse_error_fails_the_task(dag, warehouse):
    _, answers = warehouse
    answers.append(FakeResponse({"error": "rows fall outside"}, status_code=400))

    with pytest.raises(RuntimeError, match="400 to /internal/loads/clicks-minute"):
        dag.get_task("load_warehouse").python_callable(plan_window(dag, conf={}))


@pytest.mark.parametrize(
    ("ended_ago", "done"),
    [(timedelta(hours=1), True), (timedelta(seconds=5), False), (timedelta(hours=-1), False)],
    ids=["long-closed", "closed-within-the-lateness", "not-closed"],
)
def test_the_sensor_waits_for_the_lateness_after_the_window(dag, ended_ago, done):
    window = {"start": "2026-01-01T00:00:00+00:00", "end": (datetime.now(timezone.utc) - ended_ago).isoformat()}

    result = dag.get_task("wait_for_late_clicks").python_callable(window)

    assert result.is_done is done
