"""The daily compaction DAG parses, waits for the watermark, then asks the warehouse to compact its day."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fakes import FakeResponse

DAG_ID = "compact_warehouse_daily"
DAY_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY_END = DAY_START + timedelta(days=1)


@pytest.fixture
def dag(parse):
    return parse().dags[DAG_ID]


def test_the_dag_parses_and_is_named_after_its_file(parse):
    bag = parse()

    assert bag.import_errors == {}
    assert DAG_ID in bag.dags
    assert Path(bag.dags[DAG_ID].fileloc).stem == DAG_ID


def test_it_waits_for_the_watermark_then_compacts(dag):
    edges = {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids}

    assert set(dag.task_ids) == {"wait_for_watermark", "compact_day"}
    assert edges == {("wait_for_watermark", "compact_day")}


def test_runs_are_daily_serial_retried_and_not_caught_up(dag):
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.doc_md and "compactions/clicks-minute" in dag.doc_md
    assert all(task.retries >= 1 for task in dag.tasks)
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.start_date == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_compact_day_asks_the_warehouse_for_the_intervals_utc_day(dag, warehouse):
    calls, answers = warehouse
    answers.append(FakeResponse({"day": "2026-01-01", "minute_rows": 5}))

    result = dag.get_task("compact_day").python_callable(data_interval_start=DAY_START)

    assert result == {"day": "2026-01-01", "minute_rows": 5}
    assert calls == [{"method": "POST", "url": "http://warehouse.test/internal/compactions/clicks-minute",
                      "json": {"day": "2026-01-01"}, "headers": {"Authorization": "Bearer tok"}}]


def test_a_refusal_fails_the_task_so_it_is_retried(dag, warehouse):
    _, answers = warehouse
    answers.append(FakeResponse({"error": "2026-01-01 is not closed"}, status_code=409))

    with pytest.raises(RuntimeError, match="409 to /internal/compactions/clicks-minute"):
        dag.get_task("compact_day").python_callable(data_interval_start=DAY_START)


@pytest.mark.parametrize(
    ("complete_through", "done"),
    [
        (None, False),
        ("2026-01-02T00:05:00", False),  # past the day, but a load's 10-minute lookback may still rewrite it
        ("2026-01-02T00:10:00", True),
        ("2026-01-03T12:00:00Z", True),
    ],
    ids=["no-watermark", "within-the-lookback", "just-settled", "long-settled"],
)
def test_the_sensor_waits_until_the_watermark_is_past_the_day_and_the_lookback(dag, warehouse, complete_through, done):
    calls, answers = warehouse
    answers.append(FakeResponse({"status": "ok", "complete_through": complete_through}))

    result = dag.get_task("wait_for_watermark").python_callable(data_interval_end=DAY_END)

    assert result.is_done is done
    assert (calls[0]["method"], calls[0]["url"]) == ("GET", "http://warehouse.test/healthz")


def test_the_lookback_comes_from_the_rollups_setting(parse, warehouse):
    _, answers = warehouse
    answers.append(FakeResponse({"complete_through": "2026-01-02T00:05:00"}))

    result = parse(ROLLUP_LOOKBACK_S="120").dags[DAG_ID].get_task("wait_for_watermark").python_callable(
        data_interval_end=DAY_END)

    assert result.is_done is True
