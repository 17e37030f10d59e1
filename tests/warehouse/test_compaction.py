"""Compaction rewrites a closed day sorted by (advertiser, ad, time) and changes nothing else."""

from __future__ import annotations

import shutil
from datetime import date, datetime, timedelta

import duckdb
import pytest

from warehouse import compaction, connect, loads, schema
from warehouse.server import create_app

TOKEN = "admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DAY = date(2026, 1, 1)
T0 = datetime(2026, 1, 1)
MINUTE_LAYOUT = (
    "minute_at TIMESTAMP, ad_id VARCHAR, advertiser_id VARCHAR, billable_clicks BIGINT, duplicate_clicks BIGINT, "
    "expired_clicks BIGINT, invalid_clicks BIGINT, invalid_head_clicks BIGINT, invalid_prefetch_clicks BIGINT, "
    "invalid_bot_clicks BIGINT, unique_users BIGINT"
)
USER_LAYOUT = "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT"
ADS = [("ad-3", "adv-1"), ("ad-1", "adv-2"), ("ad-2", "adv-1"), ("ad-4", "adv-2")]
SORT_KEYS = {
    "fct_clicks_minute": "advertiser_id, ad_id, minute_at",
    "fct_clicks_hour": "advertiser_id, ad_id, hour_at",
    "fct_clicks_day": "advertiser_id, ad_id, day_at",
}
GRAINS = {"fct_clicks_minute": "minute_at", "fct_clicks_hour": "hour_at", "fct_clicks_day": "day_at",
          "stg_clicks_minute_users": "minute_at"}


def write_parquet(path, layout: str, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = duckdb.connect()
    mem.execute(f"CREATE TABLE t ({layout})")
    mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()
    return str(path)


def load_in_arrival_order(con, folder, start: datetime, windows: int, width: timedelta) -> None:
    """Load consecutive windows as the every-minute rollup does, so each ad's rows end up spread out."""
    for n in range(windows):
        lo, hi = start + n * width, start + (n + 1) * width
        minutes, users = [], []
        for i, (ad_id, advertiser_id) in enumerate(ADS):
            at = lo + timedelta(minutes=(7 * i + n) % int(width / timedelta(minutes=1)))
            minutes.append((at, ad_id, advertiser_id, 2 + i, i % 2, 0, 1, 1, 0, 0, 2))
            users += [(at, ad_id, 10 * n + i), (at, ad_id, 10 * n + i + 1)]
        run = folder / f"run-{start:%d}-{n}"
        loads.load_clicks_minute(con, write_parquet(run / "minute" / "p.parquet", MINUTE_LAYOUT, minutes),
                                 write_parquet(run / "users" / "p.parquet", USER_LAYOUT, users), lo, hi)


@pytest.fixture(scope="module")
def loaded_file(tmp_path_factory):
    """Day 1 in 24 hourly loads, then 6 hours of day 2 (which stays open); closed, so tests can copy it."""
    folder = tmp_path_factory.mktemp("compaction")
    path = folder / "w.duckdb"
    con = connect(str(path))
    schema.migrate(con)
    load_in_arrival_order(con, folder, T0, 24, timedelta(hours=1))
    load_in_arrival_order(con, folder, T0 + timedelta(days=1), 6, timedelta(hours=1))
    con.close()
    return path


@pytest.fixture
def app(loaded_file, tmp_path):
    path = tmp_path / "w.duckdb"
    shutil.copy(loaded_file, path)
    app = create_app({"WAREHOUSE_PATH": str(path), "ADMIN_TOKEN": TOKEN, "THREADS": 1})
    yield app
    app.extensions["warehouse"].close()


def everything(con) -> dict[str, list[tuple]]:
    """Every row of the rewritten tables (loaded_at included), as a sorted multiset."""
    return {table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() for table in GRAINS}


def stored_order(con, table: str, day: date) -> list[tuple]:
    grain = GRAINS[table]
    start = datetime(day.year, day.month, day.day)
    return con.execute(
        f"SELECT * FROM {table} WHERE {grain} >= ? AND {grain} < ? ORDER BY rowid", [start, start + timedelta(days=1)]
    ).fetchall()


def is_sorted(con, table: str, day: date) -> bool:
    columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    rows = stored_order(con, table, day)
    key = [columns.index(c) for c in SORT_KEYS[table].split(", ")]
    return [tuple(r[i] for i in key) for r in rows] == sorted(tuple(r[i] for i in key) for r in rows)


def test_the_loads_leave_a_day_in_arrival_order(app):
    con = app.extensions["warehouse"]

    assert not is_sorted(con, "fct_clicks_minute", DAY)


def test_compacting_a_day_keeps_every_row_and_sorts_it_by_advertiser_ad_and_time(app):
    con = app.extensions["warehouse"]
    before = everything(con)

    response = app.test_client().post("/internal/compactions/clicks-minute", json={"day": "2026-01-01"}, headers=ADMIN)

    assert response.status_code == 200
    body = response.get_json()
    counted = ("day", "minute_rows", "user_rows", "hour_rows", "day_rows", "unique_users_corrected")
    assert {k: body[k] for k in counted} == {
        "day": "2026-01-01", "minute_rows": 96, "user_rows": 192, "hour_rows": 96, "day_rows": 4,
        "unique_users_corrected": 0}
    assert everything(con) == before
    for table in SORT_KEYS:
        assert is_sorted(con, table, DAY), table
    ads = [row[1] for row in stored_order(con, "stg_clicks_minute_users", DAY)]
    assert ads == ["ad-2"] * 48 + ["ad-3"] * 48 + ["ad-1"] * 48 + ["ad-4"] * 48  # adv-1's ads, then adv-2's


def test_compaction_corrects_hour_and_day_unique_users_that_differ_from_a_recount(app):
    con = app.extensions["warehouse"]
    unique_users = "SELECT {grain}, ad_id, unique_users FROM {table} ORDER BY ALL"
    before = {t: con.execute(unique_users.format(table=t, grain=g)).fetchall() for t, g in loads.ROLLUP_TABLES.values()}
    con.execute("UPDATE fct_clicks_hour SET unique_users = 99 WHERE ad_id = 'ad-2' AND hour_at = ?", [T0])
    con.execute("UPDATE fct_clicks_day SET unique_users = 0 WHERE ad_id = 'ad-4' AND day_at = ?", [T0])
    con.execute("UPDATE fct_clicks_day SET unique_users = 7 WHERE ad_id = 'ad-4' AND day_at = ?", [T0 + timedelta(days=1)])

    result = compaction.compact_day(con, DAY)

    assert result.unique_users_corrected == 2
    after = {t: con.execute(unique_users.format(table=t, grain=g)).fetchall() for t, g in loads.ROLLUP_TABLES.values()}
    assert after["fct_clicks_hour"] == before["fct_clicks_hour"]
    assert [r for r in after["fct_clicks_day"] if r[0] == T0] == [r for r in before["fct_clicks_day"] if r[0] == T0]
    assert (T0 + timedelta(days=1), "ad-4", 7) in after["fct_clicks_day"]  # another day: not compaction's


def test_compaction_leaves_other_days_where_they_were(app):
    con = app.extensions["warehouse"]
    next_day = stored_order(con, "fct_clicks_minute", date(2026, 1, 2))

    compaction.compact_day(con, DAY)

    assert stored_order(con, "fct_clicks_minute", date(2026, 1, 2)) == next_day


def test_compacting_again_changes_nothing(app):
    con = app.extensions["warehouse"]
    compaction.compact_day(con, DAY)
    once = {table: stored_order(con, table, DAY) for table in GRAINS}

    compaction.compact_day(con, DAY)

    assert {table: stored_order(con, table, DAY) for table in GRAINS} == once


def test_an_open_day_is_refused_with_a_409(app):
    con = app.extensions["warehouse"]
    before = stored_order(con, "fct_clicks_minute", date(2026, 1, 2))

    response = app.test_client().post("/internal/compactions/clicks-minute", json={"day": "2026-01-02"}, headers=ADMIN)

    assert response.status_code == 409
    assert "2026-01-02 is not closed" in response.get_json()["error"]
    assert stored_order(con, "fct_clicks_minute", date(2026, 1, 2)) == before


@pytest.mark.parametrize("body", [{}, {"day": "yesterday"}, {"day": 20260101}], ids=["missing", "word", "number"])
def test_a_bad_day_is_a_400(app, body):
    response = app.test_client().post("/internal/compactions/clicks-minute", json=body, headers=ADMIN)

    assert response.status_code == 400
    assert '{"day": "2026-01-01"}' in response.get_json()["error"]


def test_a_failure_midway_rolls_everything_back(app, monkeypatch):
    con = app.extensions["warehouse"]
    before = {table: stored_order(con, table, DAY) for table in GRAINS}
    real = compaction._rewrite

    def fail_on_users(cur, table, *args):
        if table == "stg_clicks_minute_users":
            raise RuntimeError("disk full")
        return real(cur, table, *args)

    monkeypatch.setattr(compaction, "_rewrite", fail_on_users)

    with pytest.raises(RuntimeError, match="disk full"):
        compaction.compact_day(con, DAY)

    assert {table: stored_order(con, table, DAY) for table in GRAINS} == before


def test_a_reader_during_compaction_sees_the_whole_day(app, monkeypatch):
    con = app.extensions["warehouse"]
    total = con.execute("SELECT sum(billable_clicks) FROM fct_clicks_minute WHERE minute_at < '2026-01-02'").fetchone()[0]
    seen = []
    real = compaction._rewrite

    def read_between_tables(cur, table, *args):
        result = real(cur, table, *args)
        reader = con.cursor()  # another connection: it must not see the deleted-and-not-yet-committed day
        seen.append(reader.execute(
            "SELECT sum(billable_clicks) FROM fct_clicks_minute WHERE minute_at < '2026-01-02'").fetchone()[0])
        reader.close()
        return result

    monkeypatch.setattr(compaction, "_rewrite", read_between_tables)

    compaction.compact_day(con, DAY)

    assert seen == [total] * 4
