"""Data-quality checks on a temp warehouse: clean loads pass, each injected defect is reported."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from warehouse import connect, loads, schema
from warehouse.checks import run_checks

T0 = datetime(2026, 1, 1, 10, 0)
MINUTE_LAYOUT = (
    "minute_at TIMESTAMP, ad_id VARCHAR, advertiser_id VARCHAR, billable_clicks BIGINT, duplicate_clicks BIGINT, "
    "expired_clicks BIGINT, invalid_clicks BIGINT, invalid_head_clicks BIGINT, invalid_prefetch_clicks BIGINT, "
    "invalid_bot_clicks BIGINT, unique_users BIGINT"
)
USER_LAYOUT = "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT"
CLEAN_MINUTES = [
    (T0, "ad-1", "adv-1", 3, 1, 0, 2, 1, 0, 1, 2),
    (T0 + timedelta(minutes=1), "ad-1", "adv-1", 1, 0, 1, 0, 0, 0, 0, 1),
    (T0 + timedelta(minutes=2), "ad-2", "adv-2", 2, 2, 0, 3, 0, 3, 0, 2),
]
CLEAN_USERS = [
    (T0, "ad-1", 1), (T0, "ad-1", 2), (T0 + timedelta(minutes=1), "ad-1", 1),
    (T0 + timedelta(minutes=2), "ad-2", 3), (T0 + timedelta(minutes=2), "ad-2", 4),
]
FACT_TABLES = ["fct_clicks_minute", "fct_clicks_hour", "fct_clicks_day"]
GRAINS = {"fct_clicks_minute": "minute_at", "fct_clicks_hour": "hour_at", "fct_clicks_day": "day_at"}


def write_parquet(path, layout: str, rows) -> None:
    path.parent.mkdir(parents=True)
    mem = duckdb.connect()
    mem.execute(f"CREATE TABLE t ({layout})")
    mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()


@pytest.fixture
def con(tmp_path):
    """A warehouse holding one clean load of [10:00, 10:05)."""
    con = connect(str(tmp_path / "w.duckdb"))
    schema.migrate(con)
    write_parquet(tmp_path / "out" / "minute" / "p.parquet", MINUTE_LAYOUT, CLEAN_MINUTES)
    write_parquet(tmp_path / "out" / "users" / "p.parquet", USER_LAYOUT, CLEAN_USERS)
    loads.load_clicks_minute(
        con, f"{tmp_path}/out/minute/*.parquet", f"{tmp_path}/out/users/*.parquet", T0, T0 + timedelta(minutes=5)
    )
    yield con
    con.close()


def change_one_row(con, table: str, assignment: str) -> None:
    con.execute(f"UPDATE {table} SET {assignment} WHERE rowid = (SELECT min(rowid) FROM {table})")


def test_clean_data_passes_every_check(con):
    assert con.execute("SELECT count(*) FROM fct_clicks_day").fetchone()[0] == 2
    assert run_checks(con) == []
    assert run_checks(con, T0, T0 + timedelta(minutes=5)) == []


@pytest.mark.parametrize("table", FACT_TABLES)
def test_a_duplicated_key_is_reported(con, table):
    con.execute(f"INSERT INTO {table} SELECT * FROM {table} LIMIT 1")

    assert run_checks(con) == [f"{table}: duplicate ({GRAINS[table]}, ad_id): 1 rows"]


@pytest.mark.parametrize("table", FACT_TABLES)
@pytest.mark.parametrize("column", ["duplicate_clicks", "expired_clicks", "invalid_head_clicks", "unique_users"])
def test_a_negative_count_is_reported(con, table, column):
    change_one_row(con, table, f"{column} = -1")

    assert run_checks(con) == [f"{table}: negative count: 1 rows"]


@pytest.mark.parametrize("table", FACT_TABLES)
def test_more_unique_users_than_billable_clicks_is_reported(con, table):
    change_one_row(con, table, "unique_users = billable_clicks + 1")

    assert run_checks(con) == [f"{table}: unique_users > billable_clicks: 1 rows"]


@pytest.mark.parametrize("table", FACT_TABLES)
def test_reasons_adding_up_to_more_than_invalid_clicks_are_reported(con, table):
    change_one_row(con, table, "invalid_bot_clicks = invalid_clicks + 1")

    assert run_checks(con) == [f"{table}: invalid reasons exceed invalid_clicks: 1 rows"]


def test_a_minute_row_whose_ad_is_not_in_dim_ads_is_reported(con):
    con.execute("DELETE FROM dim_ads WHERE ad_id = 'ad-2'")

    assert run_checks(con) == ["fct_clicks_minute: 1 rows whose ad is missing from dim_ads"]


def test_several_defects_are_each_reported(con):
    change_one_row(con, "fct_clicks_minute", "expired_clicks = -5, unique_users = billable_clicks + 1")

    assert run_checks(con) == [
        "fct_clicks_minute: negative count: 1 rows",
        "fct_clicks_minute: unique_users > billable_clicks: 1 rows",
    ]


def test_an_interval_checks_only_its_own_rows(con):
    late = T0 + timedelta(minutes=30)
    con.execute(
        "INSERT INTO fct_clicks_minute VALUES (?, 'ad-1', 'adv-1', 0, 0, -1, 0, 0, 0, 0, 0, ?)", [late, T0]
    )

    assert run_checks(con, T0, T0 + timedelta(minutes=5)) == []
    assert run_checks(con, late, late + timedelta(minutes=5)) == ["fct_clicks_minute: negative count: 1 rows"]
    assert run_checks(con) == ["fct_clicks_minute: negative count: 1 rows"]
