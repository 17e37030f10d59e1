"""Compact yesterday (UTC) in the warehouse: one ad's rows side by side, for fast per-ad reads."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

from click_api.windows import Windows
from spark_jobs.session import parse_utc
from warehouse import client as warehouse_client

LOOKBACK_S = Windows.from_env(os.environ).rollup_lookback
START_DATE = datetime.fromisoformat(os.environ.get("ROLLUP_START_DATE", "2026-01-01T00:00:00+00:00"))


def day_is_settled(complete_through: str | None, day_end: datetime) -> bool:
    """Whether the minute rollup is past the day's end by more than its lookback (no load rewrites it again)."""
    if not complete_through:
        return False
    return parse_utc(complete_through) >= day_end + timedelta(seconds=LOOKBACK_S)


@dag(
    dag_id="compact_warehouse_daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__
    + f"""

Each run covers one UTC day, its data interval. It waits until the minute rollup's watermark is past
the day's end plus the rollup's lookback ({LOOKBACK_S}s), so no load rewrites the day any more, then
asks the warehouse service (`POST /internal/compactions/clicks-minute`) to rewrite the day's
`fct_clicks_minute`, `stg_clicks_minute_users`, `fct_clicks_hour` and `fct_clicks_day` rows sorted
by (advertiser, ad, time) in one transaction. Readers see the old day or the new one, never a mix;
re-running a day rewrites the same rows again. Compact an older day by triggering a run with its
logical date, or with `curl -X POST $WAREHOUSE_URL/internal/compactions/clicks-minute -d '{{"day": "..."}}'`.
""",
    tags=["clickagg", "warehouse"],
)
def compact_warehouse_daily():
    @task.sensor(poke_interval=300, timeout=6 * 3600, mode="reschedule")
    def wait_for_watermark(data_interval_end=None) -> PokeReturnValue:
        """Wait until the minute rollup has settled the whole day."""
        health = warehouse_client.call("GET", "/healthz", None, timeout=30)
        return PokeReturnValue(is_done=day_is_settled(health.get("complete_through"), data_interval_end))

    @task
    def compact_day(data_interval_start=None) -> dict:
        """Rewrite the day sorted by advertiser, ad and time, in one transaction."""
        return warehouse_client.call("POST", "/internal/compactions/clicks-minute",
                                     {"day": data_interval_start.date().isoformat()}, timeout=3600)

    wait_for_watermark() >> compact_day()


compact_warehouse_daily()
