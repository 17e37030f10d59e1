"""Roll raw clicks up by ad and minute into the warehouse, every minute."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = os.environ.get("ROLLUP_SCHEDULE", "* * * * *")
LATENESS_S = int(os.environ.get("ROLLUP_LATENESS_S", "20"))
LOOKBACK_S = int(os.environ.get("ROLLUP_LOOKBACK_S", "600"))
STAGING_DIR = os.environ.get("ROLLUP_STAGING_DIR", str(REPO / ".local" / "staging"))
START_DATE = datetime.fromisoformat(os.environ.get("ROLLUP_START_DATE", "2026-01-01T00:00:00+00:00"))
JARS_DIR = Path(os.environ.get("SPARK_JARS_DIR", str(REPO / ".local" / "spark" / "jars")))

# The job re-reads the last LOOKBACK_S before each interval, so clicks that reach Cassandra late
# (a spool replayed after an outage, writes in flight at the run's start) land in their own minute.
WINDOW_START = f"{{{{ (data_interval_start - macros.timedelta(seconds={LOOKBACK_S})).isoformat() }}}}"
WINDOW_END = "{{ data_interval_end.isoformat() }}"
OUTPUT = STAGING_DIR + "/fct_clicks_minute/{{ data_interval_start.strftime('%Y%m%dT%H%M') }}"


def _warehouse_post(path: str, body: dict, timeout: float) -> dict:
    import requests

    headers = {}
    if os.environ.get("WAREHOUSE_ADMIN_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['WAREHOUSE_ADMIN_TOKEN']}"
    url = os.environ.get("WAREHOUSE_URL", "http://127.0.0.1:18100") + path
    response = requests.post(url, json=body, headers=headers, timeout=timeout)
    if response.status_code >= 400:
        raise RuntimeError(f"warehouse answered {response.status_code} to {path}: {response.text.strip()}")
    return response.json()


@dag(
    dag_id="rollup_clicks_minute",
    schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    doc_md=__doc__
    + f"""

Each run covers its data interval plus a lookback of {LOOKBACK_S}s, waits {LATENESS_S}s after the
interval closes, runs the Spark job `spark_jobs/fct_clicks_minute.py`, replaces that window in the
warehouse (minute facts, then the hour and day rollups it touches), advances the watermark and runs
the data-quality checks. Clearing and re-running any run rebuilds the same rows.
Backfill: `make backfill FROM=2026-11-27T10:00 TO=2026-11-27T12:00`.
""",
    tags=["clickagg", "rollup"],
)
def rollup_clicks_minute():
    @task.sensor(poke_interval=5, timeout=900, mode="reschedule")
    def wait_for_late_clicks(data_interval_end=None) -> PokeReturnValue:
        """Give clicks written just before the interval closed time to reach Cassandra."""
        ready_at = data_interval_end + timedelta(seconds=LATENESS_S)
        return PokeReturnValue(is_done=datetime.now(timezone.utc) >= ready_at)

    rollup = SparkSubmitOperator(
        task_id="spark_rollup",
        application=str(REPO / "spark_jobs" / "fct_clicks_minute.py"),
        application_args=["--start", WINDOW_START, "--end", WINDOW_END, "--output", OUTPUT],
        jars=",".join(str(p) for p in sorted(JARS_DIR.glob("*.jar"))) or None,
        driver_memory=os.environ.get("SPARK_DRIVER_MEMORY", "2g"),
        conf={"spark.sql.shuffle.partitions": os.environ.get("SPARK_SHUFFLE_PARTITIONS", "4")},
        env_vars={"PYTHONPATH": str(REPO)},
        name="fct_clicks_minute",
        conn_id="spark_default",
    )

    @task
    def load_warehouse(data_interval_start=None, data_interval_end=None) -> dict:
        """Replace the window in the warehouse from the job's Parquet output, atomically."""
        import shutil

        start = data_interval_start - timedelta(seconds=LOOKBACK_S)
        output = f"{STAGING_DIR}/fct_clicks_minute/{data_interval_start.strftime('%Y%m%dT%H%M')}"
        result = _warehouse_post(
            "/internal/loads/clicks-minute",
            {"start": start.isoformat(), "end": data_interval_end.isoformat(), "output": output},
            timeout=600,
        )
        shutil.rmtree(output, ignore_errors=True)
        return result

    @task
    def check_quality(load: dict, data_interval_start=None, data_interval_end=None) -> None:
        """Fail the run when a key is duplicated or null, or a count is impossible."""
        start = data_interval_start - timedelta(seconds=LOOKBACK_S)
        report = _warehouse_post(
            "/internal/checks", {"start": start.isoformat(), "end": data_interval_end.isoformat()}, timeout=300
        )
        if not report["passed"]:
            raise ValueError("data-quality checks failed: " + "; ".join(report["failures"]))

    loaded = load_warehouse()
    wait_for_late_clicks() >> rollup >> loaded
    check_quality(loaded)


rollup_clicks_minute()
