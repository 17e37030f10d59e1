"""Compaction: rewrite one closed UTC day of the minute facts sorted by (advertiser, ad, minute).

The every-minute loads append each window's rows in time order, so one ad's day ends up in a
thousand small runs across the file and a month of it touches tens of thousands of row groups.
Rewritten sorted, one ad's day is a few adjacent rows that the zone maps find directly. The same
day's hashed users and its hour and day rows (rewritten by every load that touched their ads) are
sorted the same way. Everything happens in one transaction: readers see the old day or the new one.

Loads move hour and day unique users by each interval's difference (warehouse/loads.py). Once the
day is closed, compaction recounts them from the day's hashed users, corrects any row that differs
and says how many it corrected, so a count can never drift for longer than a day unnoticed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import date, datetime, timedelta

import duckdb

from warehouse.loads import ROLLUP_TABLES, WRITE_LOCK, record_load_hours, watermark

log = logging.getLogger(__name__)


class DayNotClosed(ValueError):
    """The day is not wholly behind the watermark yet: loads may still rewrite it."""


@dataclasses.dataclass(frozen=True)
class CompactionResult:
    day: date
    minute_rows: int
    user_rows: int
    hour_rows: int
    day_rows: int
    unique_users_corrected: int
    seconds: float

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["day"] = self.day.isoformat()
        return out


# (table, time column, sort key): each rewritten in the order a per-ad or per-advertiser read wants.
_TABLES = [
    ("fct_clicks_minute", "minute_at", "advertiser_id, ad_id, minute_at"),
    ("fct_clicks_hour", "hour_at", "advertiser_id, ad_id, hour_at"),
    ("fct_clicks_day", "day_at", "advertiser_id, ad_id, day_at"),
]


def _rewrite(cur: duckdb.DuckDBPyConnection, table: str, select: str, order: str, where: str, bounds: list) -> int:
    cur.execute(f"CREATE TEMP TABLE compacting AS {select} WHERE {where}", bounds)
    copied = cur.execute("SELECT count(*) FROM compacting").fetchone()[0]
    deleted = cur.execute(f"DELETE FROM {table} WHERE {where}", bounds).fetchone()[0]
    columns = [row[0] for row in cur.execute(f"DESCRIBE {table}").fetchall()]
    inserted = cur.execute(
        f"INSERT INTO {table} SELECT {', '.join(columns)} FROM compacting ORDER BY {order}"
    ).fetchone()[0]
    cur.execute("DROP TABLE compacting")
    if not copied == deleted == inserted:
        raise RuntimeError(f"{table}: copied {copied}, deleted {deleted}, inserted {inserted} rows: rolled back")
    return inserted


def _recount_unique_users(cur: duckdb.DuckDBPyConnection, unit: str, start: datetime, end: datetime) -> int:
    """Set the day's hour or day rows' unique users to an exact recount; return the rows that differed."""
    table, grain = ROLLUP_TABLES[unit]
    cur.execute(
        f"""CREATE TEMP TABLE recounted AS
            SELECT r.{grain}, r.ad_id, coalesce(u.users, 0) AS users
            FROM {table} r LEFT JOIN (
                SELECT date_trunc('{unit}', minute_at) AS {grain}, ad_id, count(DISTINCT user_hash) AS users
                FROM stg_clicks_minute_users WHERE minute_at >= $start AND minute_at < $end GROUP BY ALL
            ) u USING ({grain}, ad_id)
            WHERE r.{grain} >= $start AND r.{grain} < $end AND r.unique_users <> coalesce(u.users, 0)""",
        {"start": start, "end": end},
    )
    corrected = cur.execute(
        f"""UPDATE {table} SET unique_users = recounted.users FROM recounted
            WHERE {table}.{grain} = recounted.{grain} AND {table}.ad_id = recounted.ad_id"""
    ).fetchone()[0]
    cur.execute("DROP TABLE recounted")
    if corrected:
        log.warning("%s: %d rows of %s had unique users that differed from a recount: corrected",
                    table, corrected, start.date())
    return corrected


def compact_day(con: duckdb.DuckDBPyConnection, day: date) -> CompactionResult:
    """Rewrite ``day`` (UTC) of fct_clicks_minute, its users, hours and day sorted by advertiser and ad."""
    start = datetime(day.year, day.month, day.day)
    end = start + timedelta(days=1)
    began = time.monotonic()
    # Loads and repairs take the same lock: a repair of an hour of this day would otherwise conflict.
    with WRITE_LOCK:
        cur = con.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            complete_through = watermark(cur)
            if complete_through is None or complete_through < end:
                raise DayNotClosed(f"{day} is not closed: the minute rollup is complete through {complete_through} "
                                   f"and must reach {end} first")
            corrected = sum(_recount_unique_users(cur, unit, start, end) for unit in ROLLUP_TABLES)
            if corrected:  # values changed: cached reads of the day must not serve the old ones
                record_load_hours(cur, start, end, f"compaction-{day.isoformat()}")
            counts = {}
            for table, grain, order in _TABLES:
                counts[table] = _rewrite(cur, table, f"SELECT * FROM {table}", order,
                                         f"{grain} >= ? AND {grain} < ?", [start, end])
            # The users have no advertiser column: take it from dim_ads, so one advertiser's users sit together.
            counts["users"] = _rewrite(
                cur, "stg_clicks_minute_users",
                "SELECT u.*, d.advertiser_id FROM stg_clicks_minute_users u LEFT JOIN dim_ads d USING (ad_id)",
                "advertiser_id NULLS LAST, ad_id, minute_at, user_hash",
                "minute_at >= ? AND minute_at < ?", [start, end],
            )
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
    result = CompactionResult(day, counts["fct_clicks_minute"], counts["users"], counts["fct_clicks_hour"],
                              counts["fct_clicks_day"], corrected, round(time.monotonic() - began, 3))
    log.info("compacted %s", result.as_dict())
    return result
