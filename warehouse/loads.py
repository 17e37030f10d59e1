"""Loads into the warehouse. Each replaces exactly its interval inside one transaction, so a
reader sees the old interval or the new one, never a mix, and a re-run changes nothing."""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone

import duckdb

from warehouse.schema import COUNT_COLUMNS, LOAD_HOURS

log = logging.getLogger(__name__)

ROLLUP_PIPELINE = "rollup_clicks_minute"
# One writer at a time in this process: concurrent write transactions on the same rows (the
# minute load and an hourly repair both refresh a day's rows) would fail on a DuckDB conflict.
WRITE_LOCK = threading.Lock()
_SUMS = ", ".join(f"sum({c})::BIGINT AS {c}" for c in COUNT_COLUMNS)
_COUNTS = ", ".join(COUNT_COLUMNS)
_MINUTE_COLUMNS = f"minute_at, ad_id, advertiser_id, {_COUNTS}, unique_users"
ROLLUP_TABLES = {"hour": ("fct_clicks_hour", "hour_at"), "day": ("fct_clicks_day", "day_at")}
# An interval's distinct hashed users per (hour, ad): days are derived from hours.
_INTERVAL_USERS = (
    "SELECT DISTINCT date_trunc('hour', minute_at) AS hour_at, ad_id, user_hash "
    "FROM stg_clicks_minute_users WHERE minute_at >= ? AND minute_at < ?"
)


@dataclasses.dataclass(frozen=True)
class LoadResult:
    load_id: str
    start: datetime
    end: datetime
    rows_deleted: int
    rows_inserted: int
    users_inserted: int
    hours_refreshed: int
    days_refreshed: int
    watermark: datetime | None

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("start", "end", "watermark"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _floor(moment: datetime, unit: str) -> datetime:
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, unit: str) -> datetime:
    floor = _floor(moment, unit)
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    return floor if floor == moment else floor + step


def load_clicks_minute(
    con: duckdb.DuckDBPyConnection,
    minute_files: str,
    user_files: str,
    start: datetime,
    end: datetime,
    advance_watermark: bool = True,
) -> LoadResult:
    """Replace [start, end) of the minute facts from Parquet, then the hours and days it touches."""
    start, end = _naive_utc(start), _naive_utc(end)
    if end <= start:
        raise ValueError("the interval's end must be after its start")
    with WRITE_LOCK:
        cur = con.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            result = replace_interval(cur, minute_files, user_files, start, end, advance_watermark)
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
    log.info("loaded fct_clicks_minute %s", result.as_dict())
    return result


def replace_interval(
    cur: duckdb.DuckDBPyConnection,
    minute_files: str,
    user_files: str,
    start: datetime,
    end: datetime,
    advance_watermark: bool,
) -> LoadResult:
    """The body of a load, inside the caller's open transaction (the caller commits or rolls back)."""
    start, end = _naive_utc(start), _naive_utc(end)
    load_id = uuid.uuid4().hex
    new = f"(SELECT {_MINUTE_COLUMNS} FROM read_parquet(?))"
    outside = cur.execute(
        f"SELECT count(*) FROM {new} WHERE minute_at < ? OR minute_at >= ?", [minute_files, start, end]
    ).fetchone()[0]
    if outside:
        raise ValueError(f"{outside} rows of {minute_files} fall outside [{start}, {end})")
    # Ads whose rows change: the old rows' ads and the new rows' ads.
    cur.execute(
        f"""CREATE TEMP TABLE touched AS
            SELECT DISTINCT ad_id FROM fct_clicks_minute WHERE minute_at >= ? AND minute_at < ?
            UNION SELECT DISTINCT ad_id FROM {new}""",
        [start, end, minute_files],
    )
    deleted = cur.execute(
        "DELETE FROM fct_clicks_minute WHERE minute_at >= ? AND minute_at < ?", [start, end]
    ).fetchone()[0]
    inserted = cur.execute(
        f"INSERT INTO fct_clicks_minute SELECT {_MINUTE_COLUMNS}, now()::TIMESTAMP FROM {new} "
        "ORDER BY advertiser_id, ad_id, minute_at",
        [minute_files],
    ).fetchone()[0]
    # The interval's users before and after: the hour and day unique users move by the difference.
    cur.execute(f"CREATE TEMP TABLE users_before AS {_INTERVAL_USERS}", [start, end])
    cur.execute("DELETE FROM stg_clicks_minute_users WHERE minute_at >= ? AND minute_at < ?", [start, end])
    users = cur.execute(
        "INSERT INTO stg_clicks_minute_users SELECT minute_at, ad_id, user_hash FROM read_parquet(?) "
        "WHERE minute_at >= ? AND minute_at < ? ORDER BY ad_id, minute_at",
        [user_files, start, end],
    ).fetchone()[0]
    # Only the ads whose row changes go through the upsert: each one costs an index update, and most
    # of a window's ads are already known with these bounds (2 s against 0.5 s for 290k ads at full scale).
    cur.execute(
        f"""INSERT INTO dim_ads BY NAME
            WITH seen AS (
                SELECT ad_id, any_value(advertiser_id) AS advertiser_id,
                       min(minute_at) AS first_seen_at, max(minute_at) AS last_seen_at
                FROM {new} GROUP BY ad_id
            )
            SELECT seen.* FROM seen LEFT JOIN dim_ads known USING (ad_id)
            WHERE known.ad_id IS NULL OR known.advertiser_id <> seen.advertiser_id
               OR seen.first_seen_at < known.first_seen_at OR seen.last_seen_at > known.last_seen_at
            ON CONFLICT (ad_id) DO UPDATE SET
                advertiser_id = excluded.advertiser_id,
                first_seen_at = least(dim_ads.first_seen_at, excluded.first_seen_at),
                last_seen_at = greatest(dim_ads.last_seen_at, excluded.last_seen_at)""",
        [minute_files],
    )
    cur.execute(f"CREATE TEMP TABLE users_after AS {_INTERVAL_USERS}", [start, end])
    hours = refresh_rollup(cur, "hour", start, end)
    days = refresh_rollup(cur, "day", start, end)
    watermark = advance(cur, ROLLUP_PIPELINE, start, end) if advance_watermark else None
    cur.execute(
        "INSERT INTO meta_loads VALUES (?, 'fct_clicks_minute', ?, ?, ?, ?, now()::TIMESTAMP)",
        [load_id, start, end, deleted, inserted],
    )
    record_load_hours(cur, start, end, load_id)
    for table in ("touched", "users_before", "users_after"):
        cur.execute(f"DROP TABLE {table}")
    return LoadResult(load_id, start, end, deleted, inserted, users, hours, days, watermark)


def record_load_hours(cur: duckdb.DuckDBPyConnection, start: datetime, end: datetime, load_id: str) -> None:
    """Count a write to the facts of [start, end) in meta_load_hours: the metrics API's cached chunks
    of those hours (and their days) are versioned by it, so they are read afresh."""
    cur.execute(
        f"""INSERT INTO meta_load_hours
            SELECT unnest({LOAD_HOURS.format(start="?::TIMESTAMP", end="?::TIMESTAMP")}), 1, ?
            ON CONFLICT (hour_at) DO UPDATE SET loads = meta_load_hours.loads + 1, last_load_id = excluded.last_load_id""",
        [start, end, load_id],
    )


def refresh_rollup(cur: duckdb.DuckDBPyConnection, unit: str, start: datetime, end: datetime) -> int:
    """Rewrite the touched ads' hour or day rows around the load [start, end); return rows written.

    Counts are summed from the grain below (minutes for an hour, the just-refreshed hours for a day).
    Unique users are not additive, and recounting a day's distinct users at every load costs a pass
    over the whole day's users. So each row's count moves instead by the users the load added or
    removed (``users_after`` against ``users_before``), leaving out those the period also holds
    outside the interval: a probe of the period's users for those few keys, not a recount.
    """
    table, grain = ROLLUP_TABLES[unit]
    source, source_grain = ("fct_clicks_minute", "minute_at") if unit == "hour" else ROLLUP_TABLES["hour"]
    period = (_floor(start, unit), _ceil(end, unit))
    cur.execute(
        f"""CREATE TEMP TABLE refreshed AS
            WITH before AS (SELECT DISTINCT date_trunc('{unit}', hour_at) AS {grain}, ad_id, user_hash FROM users_before),
            after AS (SELECT DISTINCT date_trunc('{unit}', hour_at) AS {grain}, ad_id, user_hash FROM users_after),
            changed AS (
                SELECT *, 1 AS change FROM (FROM after EXCEPT FROM before)
                UNION ALL
                SELECT *, -1 AS change FROM (FROM before EXCEPT FROM after)
            ), elsewhere AS (
                -- Matched on the hash alone first: a join on (ad_id, user_hash) reads every row's ad_id.
                SELECT DISTINCT date_trunc('{unit}', u.minute_at) AS {grain}, u.ad_id, u.user_hash
                FROM (
                    SELECT minute_at, ad_id, user_hash FROM stg_clicks_minute_users
                    SEMI JOIN (SELECT DISTINCT user_hash FROM changed) USING (user_hash)
                    WHERE minute_at >= $period_start AND minute_at < $period_end
                      AND (minute_at < $start OR minute_at >= $end)
                ) u SEMI JOIN changed USING (ad_id, user_hash)
            ), moved AS (
                SELECT {grain}, ad_id, sum(change) AS moved
                FROM changed ANTI JOIN elsewhere USING ({grain}, ad_id, user_hash)
                GROUP BY ALL
            ), sums AS (
                SELECT date_trunc('{unit}', {source_grain}) AS {grain}, ad_id, any_value(advertiser_id) AS advertiser_id,
                       {_SUMS}
                FROM {source}
                WHERE {source_grain} >= $period_start AND {source_grain} < $period_end
                  AND ad_id IN (SELECT ad_id FROM touched)
                GROUP BY ALL
            ), previous AS (
                SELECT {grain}, ad_id, unique_users FROM {table}
                WHERE {grain} >= $period_start AND {grain} < $period_end AND ad_id IN (SELECT ad_id FROM touched)
            )
            SELECT sums.{grain}, sums.ad_id, sums.advertiser_id, {_COUNTS},
                   (coalesce(previous.unique_users, 0) + coalesce(moved.moved, 0))::BIGINT AS unique_users,
                   now()::TIMESTAMP AS loaded_at
            FROM sums LEFT JOIN previous USING ({grain}, ad_id) LEFT JOIN moved USING ({grain}, ad_id)""",
        {"start": start, "end": end, "period_start": period[0], "period_end": period[1]},
    )
    cur.execute(
        f"DELETE FROM {table} WHERE {grain} >= ? AND {grain} < ? AND ad_id IN (SELECT ad_id FROM touched)", list(period)
    )
    written = cur.execute(
        f"INSERT INTO {table} SELECT * FROM refreshed ORDER BY advertiser_id, ad_id, {grain}"
    ).fetchone()[0]
    cur.execute("DROP TABLE refreshed")
    return written


def advance(cur: duckdb.DuckDBPyConnection, pipeline: str, start: datetime, end: datetime) -> datetime:
    """Move the watermark to ``end`` when the load is contiguous with it; never move it back."""
    row = cur.execute(
        "SELECT complete_through_at FROM meta_watermarks WHERE pipeline = ?", [pipeline]
    ).fetchone()
    current = row[0] if row else None
    if current is None or (start <= current < end):
        current = end
        cur.execute(
            "INSERT OR REPLACE INTO meta_watermarks VALUES (?, ?, now()::TIMESTAMP)", [pipeline, current]
        )
    elif start > current:
        log.warning("load [%s, %s) leaves a gap after the watermark %s: watermark kept", start, end, current)
    return current


def watermark(con: duckdb.DuckDBPyConnection, pipeline: str = ROLLUP_PIPELINE) -> datetime | None:
    row = con.execute("SELECT complete_through_at FROM meta_watermarks WHERE pipeline = ?", [pipeline]).fetchone()
    return row[0] if row else None
