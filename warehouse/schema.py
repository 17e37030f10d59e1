"""The warehouse's tables, created by versioned migrations. docs/warehouse.md describes each one.

Times are UTC, stored as naive TIMESTAMPs whose names end in ``_at``.
"""

from __future__ import annotations

import duckdb

COUNT_COLUMNS = (
    "billable_clicks",
    "duplicate_clicks",
    "expired_clicks",
    "invalid_clicks",
    "invalid_head_clicks",
    "invalid_prefetch_clicks",
    "invalid_bot_clicks",
)

_COUNTS_DDL = ",\n".join(f"    {name} BIGINT NOT NULL" for name in COUNT_COLUMNS)


def _fact_table(name: str, grain_column: str) -> str:
    return f"""
CREATE TABLE {name} (
    {grain_column} TIMESTAMP NOT NULL,
    ad_id VARCHAR NOT NULL,
    advertiser_id VARCHAR NOT NULL,
{_COUNTS_DDL},
    unique_users BIGINT NOT NULL,
    loaded_at TIMESTAMP NOT NULL
)"""


# The UTC hours an interval [start, end) touches, as a DuckDB list expression over two timestamp expressions.
LOAD_HOURS = "generate_series(date_trunc('hour', {start}), {end} - INTERVAL 1 MICROSECOND, INTERVAL 1 HOUR)"
# Every hour's version recomputed from the loads recorded in meta_loads.
LOAD_HOURS_FROM_LOADS = f"""
INSERT OR REPLACE INTO meta_load_hours
SELECT hour_at, count(*), arg_max(load_id, loaded_at)
FROM (SELECT load_id, loaded_at, unnest({LOAD_HOURS.format(start="interval_start_at", end="interval_end_at")}) AS hour_at
      FROM meta_loads)
GROUP BY hour_at"""

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "initial",
        [
            _fact_table("fct_clicks_minute", "minute_at"),
            _fact_table("fct_clicks_hour", "hour_at"),
            _fact_table("fct_clicks_day", "day_at"),
            # Hashed users behind each (ad, minute)'s billable clicks: hour and day unique users
            # are exact distinct counts over these rows (kept as long as the minute facts).
            """
CREATE TABLE stg_clicks_minute_users (
    minute_at TIMESTAMP NOT NULL,
    ad_id VARCHAR NOT NULL,
    user_hash BIGINT NOT NULL
)""",
            """
CREATE TABLE dim_ads (
    ad_id VARCHAR PRIMARY KEY,
    advertiser_id VARCHAR NOT NULL,
    first_seen_at TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP NOT NULL
)""",
            # Up to which minute each pipeline's data is complete (exclusive).
            """
CREATE TABLE meta_watermarks (
    pipeline VARCHAR PRIMARY KEY,
    complete_through_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
)""",
            # One row per load: what interval was replaced, by what, and how many rows.
            """
CREATE TABLE meta_loads (
    load_id VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,
    interval_start_at TIMESTAMP NOT NULL,
    interval_end_at TIMESTAMP NOT NULL,
    rows_deleted BIGINT NOT NULL,
    rows_inserted BIGINT NOT NULL,
    loaded_at TIMESTAMP NOT NULL
)""",
        ],
    ),
    (
        2,
        "api_keys",
        [
            # Advertisers' API keys: only a hash of the secret is stored.
            """
CREATE TABLE dim_api_keys (
    key_id VARCHAR PRIMARY KEY,
    advertiser_id VARCHAR NOT NULL,
    key_hash VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
)""",
        ],
    ),
    (
        3,
        "reconciliations",
        [
            # One row per reconciled hour (the latest run): what differed from the S3 dump and whether it was repaired.
            """
CREATE TABLE meta_reconciliations (
    hour_at TIMESTAMP PRIMARY KEY,
    cells_compared BIGINT NOT NULL,
    cells_differed BIGINT NOT NULL,
    total_abs_diff BIGINT NOT NULL,
    repaired BOOLEAN NOT NULL,
    run_seconds DOUBLE NOT NULL,
    status VARCHAR NOT NULL,
    detail VARCHAR,
    reconciled_at TIMESTAMP NOT NULL
)""",
        ],
    ),
    (
        4,
        "load_hours",
        [
            # Per UTC hour, how many loads wrote over it and the latest one: the hour's version, read by
            # the API's cache of closed hours and days in a few rows however long meta_loads grows.
            """
CREATE TABLE meta_load_hours (
    hour_at TIMESTAMP PRIMARY KEY,
    loads BIGINT NOT NULL,
    last_load_id VARCHAR NOT NULL
)""",
            LOAD_HOURS_FROM_LOADS,
        ],
    ),
]


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply the migrations the file has not seen yet, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)", [version, name]
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied
