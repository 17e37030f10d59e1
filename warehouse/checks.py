"""Data-quality checks on the warehouse: keys unique and not null, counts sane."""

from __future__ import annotations

from datetime import datetime

import duckdb

from warehouse.schema import COUNT_COLUMNS

FACT_TABLES = {"fct_clicks_minute": "minute_at", "fct_clicks_hour": "hour_at", "fct_clicks_day": "day_at"}


def _checks(table: str, grain: str) -> list[tuple[str, str]]:
    negative = " OR ".join(f"{c} < 0" for c in (*COUNT_COLUMNS, "unique_users"))
    return [
        (f"{table}: duplicate ({grain}, ad_id)",
         f"SELECT count(*) FROM (SELECT {grain}, ad_id FROM {table} WHERE {{where}} GROUP BY ALL HAVING count(*) > 1)"),
        (f"{table}: null key", f"SELECT count(*) FROM {table} WHERE ({{where}}) AND ({grain} IS NULL OR ad_id IS NULL)"),
        (f"{table}: negative count", f"SELECT count(*) FROM {table} WHERE ({{where}}) AND ({negative})"),
        (f"{table}: unique_users > billable_clicks",
         f"SELECT count(*) FROM {table} WHERE ({{where}}) AND unique_users > billable_clicks"),
        (f"{table}: invalid reasons exceed invalid_clicks",
         f"SELECT count(*) FROM {table} WHERE ({{where}}) AND "
         "invalid_head_clicks + invalid_prefetch_clicks + invalid_bot_clicks > invalid_clicks"),
    ]


def run_checks(con: duckdb.DuckDBPyConnection, start: datetime | None = None, end: datetime | None = None) -> list[str]:
    """Return one message per violated check (empty when all pass), over [start, end) if given."""
    failures = []
    cur = con.cursor()
    try:
        for table, grain in FACT_TABLES.items():
            if start is not None and end is not None:
                unit = grain.removesuffix("_at")
                where = f"{grain} >= date_trunc('{unit}', ?::TIMESTAMP) AND {grain} < ?::TIMESTAMP"
                params = [start, end]
            else:
                where, params = "true", []
            for name, sql in _checks(table, grain):
                count = cur.execute(sql.format(where=where), params).fetchone()[0]
                if count:
                    failures.append(f"{name}: {count} rows")
        minute_where = "minute_at >= ?::TIMESTAMP AND minute_at < ?::TIMESTAMP" if params else "true"
        orphans = cur.execute(
            f"SELECT count(*) FROM fct_clicks_minute f ANTI JOIN dim_ads d USING (ad_id) WHERE {minute_where}",
            params,
        ).fetchone()[0]
        if orphans:
            failures.append(f"fct_clicks_minute: {orphans} rows whose ad is missing from dim_ads")
    finally:
        cur.close()
    return failures
