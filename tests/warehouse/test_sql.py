"""Read-only SQL for analysts: one SELECT with bound values, anything that writes is refused."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from warehouse import connect, schema
from warehouse.sql import ReadOnlyError, run_read_only

ADS = [
    ("ad-1", "adv-1", datetime(2026, 1, 1, 10, 0), datetime(2026, 1, 1, 10, 4)),
    ("ad-2", "adv-1", datetime(2026, 1, 1, 9, 0), datetime(2026, 1, 1, 11, 30, 15)),
    ("ad-3", "adv-2", datetime(2026, 1, 2, 0, 0), datetime(2026, 1, 2, 0, 1)),
]


@pytest.fixture
def con(tmp_path):
    con = connect(str(tmp_path / "w.duckdb"))
    schema.migrate(con)
    con.executemany("INSERT INTO dim_ads VALUES (?, ?, ?, ?)", ADS)
    yield con
    con.close()


def ad_ids(con) -> list[str]:
    return [row[0] for row in con.execute("SELECT ad_id FROM dim_ads ORDER BY ad_id").fetchall()]


def test_a_select_binds_question_mark_params(con):
    columns, rows, truncated = run_read_only(
        con, "SELECT ad_id, advertiser_id FROM dim_ads WHERE advertiser_id = ? AND ad_id <> ? ORDER BY ad_id",
        100, ["adv-1", "ad-1"],
    )

    assert columns == ["ad_id", "advertiser_id"]
    assert rows == [["ad-2", "adv-1"]]
    assert truncated is False


def test_datetimes_dates_and_decimals_become_json_values(con):
    columns, rows, _ = run_read_only(
        con,
        "SELECT last_seen_at, CAST(last_seen_at AS DATE) AS day, 1.25::DECIMAL(5, 2) AS price, "
        "'\\xAB'::BLOB AS raw, NULL AS nothing FROM dim_ads WHERE ad_id = 'ad-2'",
        100,
    )

    assert columns == ["last_seen_at", "day", "price", "raw", "nothing"]
    assert rows == [["2026-01-01T11:30:15", "2026-01-01", 1.25, "ab", None]]


@pytest.mark.parametrize(("limit", "expected_rows", "expected_truncated"), [(2, 2, True), (3, 3, False), (4, 3, False)])
def test_rows_beyond_the_limit_are_cut_and_flagged(con, limit, expected_rows, expected_truncated):
    _, rows, truncated = run_read_only(con, "SELECT ad_id FROM dim_ads ORDER BY ad_id", limit)

    assert rows == [["ad-1"], ["ad-2"], ["ad-3"]][:expected_rows]
    assert truncated is expected_truncated


def test_explain_is_allowed(con):
    columns, rows, _ = run_read_only(con, "EXPLAIN SELECT * FROM dim_ads", 100)

    assert len(columns) == 2
    assert "dim_ads" in str(rows).lower()


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM dim_ads",
        "INSERT INTO dim_ads VALUES ('ad-9', 'adv-9', now()::TIMESTAMP, now()::TIMESTAMP)",
        "UPDATE dim_ads SET advertiser_id = 'x'",
        "CREATE TABLE evil AS SELECT * FROM dim_ads",
        "DROP TABLE dim_ads",
        "COPY dim_ads TO 'dim_ads.csv'",
        "ATTACH ':memory:' AS other",
        "PRAGMA enable_profiling",
        "SET threads = 1",
        "SELECT 1; DELETE FROM dim_ads",
        "SELECT 1; SELECT 2",
        "",
    ],
    ids=["delete", "insert", "update", "create", "drop", "copy", "attach", "pragma", "set", "select-then-delete",
         "two-selects", "empty"],
)
def test_anything_but_one_select_is_refused_and_changes_nothing(con, query, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ReadOnlyError):
        run_read_only(con, query, 100)

    assert ad_ids(con) == ["ad-1", "ad-2", "ad-3"]
    assert not (tmp_path / "dim_ads.csv").exists()
    assert "evil" not in {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


@pytest.mark.parametrize(
    "query",
    [
        "EXPLAIN ANALYZE DELETE FROM dim_ads",
        "WITH gone AS (DELETE FROM dim_ads RETURNING ad_id) SELECT * FROM gone",
    ],
    ids=["explain-analyze-delete", "delete-in-cte"],
)
def test_a_write_hidden_in_a_read_statement_is_refused(con, query):
    with pytest.raises(ReadOnlyError):
        run_read_only(con, query, 100)

    assert ad_ids(con) == ["ad-1", "ad-2", "ad-3"]


def test_a_syntax_error_is_raised_as_a_duckdb_error(con):
    with pytest.raises(duckdb.ParserException):
        run_read_only(con, "SELEC 1", 100)
