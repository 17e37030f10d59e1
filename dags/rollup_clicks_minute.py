"""Roll raw clicks up by ad and minute into the warehouse, every minute."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

from click_api.windows import Windows, oldest_held
from spark_jobs.session import parse_utc, submit_options
from warehouse import client as warehouse_client

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = os.environ.get("ROLLUP_SCHEDULE", "* * * * *")
WINDOWS = Windows.from_env(os.environ)
LATENESS_S = WINDOWS.rollup_lateness
LOOKBACK_S = WINDOWS.rollup_lookback
MAX_WINDOW_S = int(os.environ.get("ROLLUP_MAX_WINDOW_S", "3600"))
STAGING_DIR = os.environ.get("ROLLUP_STAGING_DIR", str(REPO / ".local" / "staging"))
START_DATE = datetime.fromisoformat(os.environ.get("ROLLUP_START_DATE", "2026-01-01T00:00:00+00:00"))
# How much later than its interval's end a run's job may check the raw-click TTL bound.
PLAN_SLACK = timedelta(minutes=15)

PLAN = "{{{{ ti.xcom_pull(task_ids='plan_window')['{}'] }}}}"
log = logging.getLogger(__name__)


def plan(conf: dict, data_interval_start: datetime, data_interval_end: datetime, lookback: bool = True,
         watermark: datetime | None = None, not_before: datetime | None = None) -> dict:
    """The window a run rolls up: ``conf`` start/end when given (manual runs), else its data
    interval widened by the lookback, so clicks that reach Cassandra late (a spool replayed after
    an outage, writes in flight when the run starts) are counted in their own minute.

    When that window would start after the ``watermark`` (the scheduler was stopped, the DAG
    paused or runs failed for longer than the lookback), it reaches back to the watermark instead,
    less the lookback (clicks of the minutes before it may have arrived during the stall), but not
    before ``not_before`` (what Cassandra still holds), and goes at most ROLLUP_MAX_WINDOW_S past
    the watermark: the minutes in between are rolled up, the watermark moves on, and the runs that
    follow catch up with the schedule a window at a time.
    """
    if conf.get("start") or conf.get("end"):
        if not (conf.get("start") and conf.get("end")):
            raise ValueError('a manual run\'s conf needs both "start" and "end" (ISO-8601, UTC)')
        start, end = parse_utc(conf["start"]), parse_utc(conf["end"])
    else:
        start = data_interval_start - timedelta(seconds=LOOKBACK_S if lookback else 0)
        end = data_interval_end
        if lookback and watermark is not None and watermark < start:
            start = watermark - timedelta(seconds=LOOKBACK_S)
            if not_before is not None:
                start = max(start, _ceil_minute(not_before))
            end = min(end, watermark + timedelta(seconds=MAX_WINDOW_S))
            log.warning("catching up from the watermark %s: rolling up [%s, %s)", watermark, start, end)
    if end <= start or start.second or end.second or start.microsecond or end.microsecond:
        raise ValueError(f"the window [{start}, {end}) must be whole minutes, end after start")
    output = f"{STAGING_DIR}/fct_clicks_minute/{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"
    return {"start": start.isoformat(), "end": end.isoformat(), "output": output}


def _ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


@dag(
    dag_id="rollup_clicks_minute",
    schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    doc_md=__doc__
    + f"""

Each run covers its data interval plus a lookback of {LOOKBACK_S}s (from the watermark less the
lookback, up to {MAX_WINDOW_S}s past it, when the runs fell further behind), waits {LATENESS_S}s after the
interval closes, runs the Spark job `spark_jobs/fct_clicks_minute.py`, replaces that window in the
warehouse (minute facts, then the hour and day rollups it touches), advances the watermark and runs
the data-quality checks. Clearing and re-running any run rebuilds the same rows.
A manual run may name its own window in its conf: `{{"start": "...", "end": "..."}}` (UTC, whole minutes).
Backfill: `make backfill FROM=2026-11-27T10:00 TO=2026-11-27T12:00`.
""",
    tags=["clickagg", "rollup"],
)
def rollup_clicks_minute():
    @task
    def plan_window(dag_run=None, data_interval_start=None, data_interval_end=None) -> dict:
        """Decide the window: the data interval plus the lookback (from the watermark when the runs
        fell further behind), or conf start/end of a manual run.

        A backfill's runs cover every interval of its range one by one, so they skip the lookback.
        """
        conf = dag_run.conf or {}
        is_backfill = str(dag_run.run_type).lower().endswith("backfill")
        watermark = oldest = None
        if not (is_backfill or conf):
            watermark = warehouse_client.watermark()
            # A scheduled run's interval is recent. The job checks the bound again when it starts,
            # minutes later: planning against a later bound keeps the window inside it then.
            oldest = oldest_held(data_interval_end + PLAN_SLACK, WINDOWS.raw_click_ttl)
            if watermark is not None and watermark < oldest:
                log.warning("the watermark %s is older than the raw clicks Cassandra still holds (from %s): "
                            "those minutes cannot be rolled up again, so this run does not reach back to it",
                            watermark, oldest)
                watermark = None
        return plan(conf, data_interval_start, data_interval_end, lookback=not is_backfill, watermark=watermark,
                    not_before=oldest)

    # Poke mode: the wait is the lateness (20 s by default), and rescheduling through the scheduler
    # between pokes took that long again on two cores, enough to push a run past its minute.
    @task.sensor(poke_interval=2, timeout=900, mode="poke")
    def wait_for_late_clicks(window: dict) -> PokeReturnValue:
        """Give clicks written just before the window closed time to reach Cassandra."""
        ready_at = datetime.fromisoformat(window["end"]) + timedelta(seconds=LATENESS_S)
        return PokeReturnValue(is_done=datetime.now(timezone.utc) >= ready_at)

    rollup = SparkSubmitOperator(
        task_id="spark_rollup",
        application=str(REPO / "spark_jobs" / "fct_clicks_minute.py"),
        application_args=["--start", PLAN.format("start"), "--end", PLAN.format("end"), "--output", PLAN.format("output")],
        name="fct_clicks_minute",
        **submit_options(os.environ, s3=False),
    )

    @task
    def load_warehouse(window: dict) -> dict:
        """Replace the window in the warehouse from the job's Parquet output, atomically."""
        import shutil

        result = warehouse_client.call("POST", "/internal/loads/clicks-minute", window, timeout=600)
        shutil.rmtree(window["output"], ignore_errors=True)
        return result

    @task
    def check_quality(window: dict) -> None:
        """Fail the run when a key is duplicated or null, or a count is impossible."""
        warehouse_client.require_quality(window["start"], window["end"])

    window = plan_window()
    loaded = load_warehouse(window)
    wait_for_late_clicks(window) >> rollup >> loaded >> check_quality(window)


rollup_clicks_minute()
