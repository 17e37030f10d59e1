"""Loading the rollup job's Parquet into a temp DuckDB warehouse: replace, roll up, watermark."""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from warehouse import connect, loads, schema

# The layout the Spark job writes: <output>/minute with these columns, <output>/users with USER_LAYOUT.
MINUTE_LAYOUT = [
    ("minute_at", "TIMESTAMP"), ("ad_id", "VARCHAR"), ("advertiser_id", "VARCHAR"),
    ("billable_clicks", "BIGINT"), ("duplicate_clicks", "BIGINT"), ("expired_clicks", "BIGINT"),
    ("invalid_clicks", "BIGINT"), ("invalid_head_clicks", "BIGINT"), ("invalid_prefetch_clicks", "BIGINT"),
    ("invalid_bot_clicks", "BIGINT"), ("unique_users", "BIGINT"),
]
USER_LAYOUT = [("minute_at", "TIMESTAMP"), ("ad_id", "VARCHAR"), ("user_hash", "BIGINT")]
COUNTS = [name for name, _ in MINUTE_LAYOUT[3:10]]

T0 = datetime(2026, 1, 1, 10, 0)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def minute_row(minute_at, ad_id="ad-1", billable=0, duplicate=0, expired=0, invalid=0, head=0, prefetch=0, bot=0,
               users=0, advertiser_id=None) -> tuple:
    return (minute_at, ad_id, advertiser_id or "adv-" + ad_id, billable, duplicate, expired, invalid, head, prefetch,
            bot, users)


def write_parquet(path: Path, layout: list[tuple[str, str]], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = duckdb.connect()
    mem.execute("CREATE TABLE t (" + ", ".join(f"{name} {kind}" for name, kind in layout) + ")")
    if rows:
        mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(layout))})", list(rows))
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()


@pytest.fixture
def con(tmp_path):
    con = connect(str(tmp_path / "warehouse" / "w.duckdb"))
    schema.migrate(con)
    yield con
    con.close()


@pytest.fixture
def load(con, tmp_path):
    """Stage the rows as the Spark job would, then load [start, end) from them."""
    runs = itertools.count()

    def run(start, end, minutes, users=(), **kwargs) -> loads.LoadResult:
        folder = tmp_path / f"run-{next(runs)}"
        write_parquet(folder / "minute" / "part-0.parquet", MINUTE_LAYOUT, minutes)
        write_parquet(folder / "users" / "part-0.parquet", USER_LAYOUT, users)
        return loads.load_clicks_minute(
            con, f"{folder}/minute/*.parquet", f"{folder}/users/*.parquet", start, end, **kwargs
        )

    return run


def rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


TABLES = {
    "fct_clicks_minute": "SELECT * EXCLUDE (loaded_at) FROM fct_clicks_minute",
    "fct_clicks_hour": "SELECT * EXCLUDE (loaded_at) FROM fct_clicks_hour",
    "fct_clicks_day": "SELECT * EXCLUDE (loaded_at) FROM fct_clicks_day",
    "stg_clicks_minute_users": "SELECT * FROM stg_clicks_minute_users",
    "dim_ads": "SELECT * FROM dim_ads",
    "meta_watermarks": "SELECT * EXCLUDE (updated_at) FROM meta_watermarks",
}


def contents(con) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, without the load-time columns."""
    return {table: rows(con, f"{select} ORDER BY ALL") for table, select in TABLES.items()}


def minute_facts(con) -> list[tuple]:
    return rows(con, "SELECT * EXCLUDE (loaded_at) FROM fct_clicks_minute ORDER BY ALL")


def rollup(con, table: str) -> list[tuple]:
    return rows(con, f"SELECT * EXCLUDE (loaded_at) FROM {table} ORDER BY ALL")


def expected_rollup(minutes: list[tuple], users: list[tuple], truncate) -> list[tuple]:
    """Sum the minutes per (truncated time, ad) and count distinct user hashes, in plain Python."""
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(COUNTS))
    advertiser = {}
    for row in minutes:
        key = (truncate(row[0]), row[1])
        advertiser[key] = row[2]
        sums[key] = [a + b for a, b in zip(sums[key], row[3:10])]
    hashes = defaultdict(set)
    for minute_at, ad_id, user_hash in users:
        hashes[(truncate(minute_at), ad_id)].add(user_hash)
    return sorted((*key, advertiser[key], *sums[key], len(hashes[key])) for key in sums)


def to_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0)


def to_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0)


# Replacing the interval


def test_load_inserts_the_minute_rows_and_their_users(con, load):
    minutes = [minute_row(at(0), billable=3, duplicate=1, users=2), minute_row(at(1), "ad-2", invalid=2, bot=2)]
    users = [(at(0), "ad-1", 11), (at(0), "ad-1", 12)]

    result = load(at(0), at(5), minutes, users)

    assert minute_facts(con) == sorted(minutes)
    assert rows(con, "SELECT * FROM stg_clicks_minute_users ORDER BY ALL") == users
    assert (result.rows_deleted, result.rows_inserted, result.users_inserted) == (0, 2, 2)
    assert (result.start, result.end) == (at(0), at(5))


def test_loading_the_same_interval_twice_leaves_identical_tables(con, load):
    minutes = [minute_row(at(0), billable=3, users=1), minute_row(at(4), "ad-2", billable=1, users=1)]
    users = [(at(0), "ad-1", 7), (at(4), "ad-2", 8)]
    load(at(0), at(5), minutes, users)
    first = contents(con)

    again = load(at(0), at(5), minutes, users)

    assert contents(con) == first
    assert first["fct_clicks_minute"] == sorted(minutes)
    assert (again.rows_deleted, again.rows_inserted) == (2, 2)


def test_a_reload_with_changed_numbers_replaces_the_interval(con, load):
    load(at(0), at(5), [minute_row(at(0), billable=3, users=1), minute_row(at(1), billable=2, users=1)],
         [(at(0), "ad-1", 7), (at(1), "ad-1", 7)])
    changed = [minute_row(at(0), billable=5, expired=1, users=2)]

    load(at(0), at(5), changed, [(at(0), "ad-1", 7), (at(0), "ad-1", 9)])

    assert minute_facts(con) == changed
    assert rollup(con, "fct_clicks_hour") == [(at(0), "ad-1", "adv-ad-1", 5, 0, 1, 0, 0, 0, 0, 2)]
    assert rows(con, "SELECT minute_at, user_hash FROM stg_clicks_minute_users ORDER BY ALL") == [(at(0), 7), (at(0), 9)]


@pytest.mark.parametrize("outside", [at(-1), at(5)], ids=["before-start", "at-end"])
def test_rows_outside_the_interval_are_rejected_and_nothing_changes(con, load, outside):
    load(at(0), at(5), [minute_row(at(2), billable=1, users=1)], [(at(2), "ad-1", 1)])
    before = contents(con)
    loads_before = rows(con, "SELECT count(*) FROM meta_loads")

    with pytest.raises(ValueError, match="1 rows .* fall outside"):
        load(at(0), at(5), [minute_row(at(3), billable=9), minute_row(outside, billable=9)])

    assert contents(con) == before
    assert rows(con, "SELECT count(*) FROM meta_loads") == loads_before


def test_a_load_failing_half_way_rolls_back_and_the_next_load_works(con, load, tmp_path):
    load(at(0), at(5), [minute_row(at(2), billable=1, users=1)], [(at(2), "ad-1", 1)])
    before = contents(con)
    staged = tmp_path / "no-users"
    write_parquet(staged / "minute" / "part-0.parquet", MINUTE_LAYOUT, [minute_row(at(3), billable=9)])

    with pytest.raises(duckdb.IOException):
        loads.load_clicks_minute(con, f"{staged}/minute/*.parquet", f"{staged}/users/*.parquet", at(0), at(5))

    assert contents(con) == before
    load(at(0), at(5), [minute_row(at(4), billable=2)])
    assert minute_facts(con) == [minute_row(at(4), billable=2)]


def test_an_interval_whose_end_is_not_after_its_start_is_rejected(con, load):
    with pytest.raises(ValueError, match="end must be after"):
        load(at(5), at(5), [])


def test_an_aware_interval_is_converted_to_naive_utc(con, load):
    plus_two = timezone(timedelta(hours=2))
    start = datetime(2026, 1, 1, 12, 0, tzinfo=plus_two)

    result = load(start, start + timedelta(minutes=5), [minute_row(at(4), billable=1)])

    assert (result.start, result.end) == (at(0), at(5))
    assert minute_facts(con) == [minute_row(at(4), billable=1)]
    assert result.as_dict()["start"] == "2026-01-01T10:00:00"


# Hour and day rollups

MIDNIGHT = datetime(2026, 1, 2)
NIGHT_MINUTES = [
    minute_row(MIDNIGHT - timedelta(minutes=3), billable=4, duplicate=1, expired=2, users=2),
    minute_row(MIDNIGHT - timedelta(minutes=2), billable=1, invalid=3, head=1, prefetch=1, bot=1, users=1),
    minute_row(MIDNIGHT - timedelta(minutes=2), "ad-2", billable=6, users=3),
    minute_row(MIDNIGHT, billable=2, duplicate=5, users=1),
    minute_row(MIDNIGHT + timedelta(minutes=1), invalid=1, bot=1),
    minute_row(MIDNIGHT + timedelta(minutes=4), "ad-2", billable=1, expired=7, users=1),
]
NIGHT_USERS = [
    (MIDNIGHT - timedelta(minutes=3), "ad-1", 1),
    (MIDNIGHT - timedelta(minutes=3), "ad-1", 2),
    (MIDNIGHT - timedelta(minutes=2), "ad-1", 2),
    (MIDNIGHT - timedelta(minutes=2), "ad-2", 1),
    (MIDNIGHT - timedelta(minutes=2), "ad-2", 3),
    (MIDNIGHT - timedelta(minutes=2), "ad-2", 4),
    (MIDNIGHT, "ad-1", 1),
    (MIDNIGHT + timedelta(minutes=4), "ad-2", 3),
]


def test_hour_and_day_rows_are_the_sums_of_their_minutes_across_loads(con, load):
    before, after = [r for r in NIGHT_MINUTES if r[0] < MIDNIGHT], [r for r in NIGHT_MINUTES if r[0] >= MIDNIGHT]
    load(MIDNIGHT - timedelta(minutes=5), MIDNIGHT, before, [u for u in NIGHT_USERS if u[0] < MIDNIGHT])
    load(MIDNIGHT, MIDNIGHT + timedelta(minutes=5), after, [u for u in NIGHT_USERS if u[0] >= MIDNIGHT])

    assert rollup(con, "fct_clicks_hour") == expected_rollup(NIGHT_MINUTES, NIGHT_USERS, to_hour)
    assert rollup(con, "fct_clicks_day") == expected_rollup(NIGHT_MINUTES, NIGHT_USERS, to_day)
    assert len(rollup(con, "fct_clicks_day")) == 4


def test_a_user_active_in_two_minutes_of_an_hour_counts_once_in_the_hour_and_day(con, load):
    load(at(0), at(5), [minute_row(at(1), billable=1, users=1)], [(at(1), "ad-1", 42)])
    load(at(5), at(10), [minute_row(at(6), billable=2, users=2)], [(at(6), "ad-1", 42), (at(6), "ad-1", 43)])
    load(at(60), at(65), [minute_row(at(61), billable=1, users=1)], [(at(61), "ad-1", 42)])

    hours = rows(con, "SELECT hour_at, billable_clicks, unique_users FROM fct_clicks_hour ORDER BY hour_at")
    days = rows(con, "SELECT day_at, billable_clicks, unique_users FROM fct_clicks_day")
    assert hours == [(at(0), 3, 2), (at(60), 1, 1)]
    assert days == [(to_day(T0), 4, 2)]


def test_a_load_leaves_the_hour_and_day_rows_of_ads_it_does_not_touch(con, load):
    load(at(0), at(5), [minute_row(at(1), billable=1), minute_row(at(2), "ad-2", billable=2)])

    load(at(5), at(10), [minute_row(at(6), "ad-2", billable=4)])

    hours = rows(con, "SELECT hour_at, ad_id, billable_clicks FROM fct_clicks_hour ORDER BY ALL")
    days = rows(con, "SELECT day_at, ad_id, billable_clicks FROM fct_clicks_day ORDER BY ALL")
    assert hours == [(at(0), "ad-1", 1), (at(0), "ad-2", 6)]
    assert days == [(to_day(T0), "ad-1", 1), (to_day(T0), "ad-2", 6)]


def test_an_ad_dropped_by_a_reload_loses_or_recomputes_its_hour_and_day_rows(con, load):
    load(at(0), at(5), [minute_row(at(1), billable=1), minute_row(at(1), "ad-2", billable=2),
                        minute_row(at(2), "ad-3", billable=3)])
    load(at(5), at(10), [minute_row(at(6), "ad-2", billable=4)])

    load(at(0), at(5), [minute_row(at(1), billable=1)])

    hours = rows(con, "SELECT hour_at, ad_id, billable_clicks FROM fct_clicks_hour ORDER BY ALL")
    days = rows(con, "SELECT day_at, ad_id, billable_clicks FROM fct_clicks_day ORDER BY ALL")
    assert hours == [(at(0), "ad-1", 1), (at(0), "ad-2", 4)]
    assert days == [(to_day(T0), "ad-1", 1), (to_day(T0), "ad-2", 4)]


@pytest.mark.parametrize("seed", range(4))
def test_hour_and_day_rows_equal_a_recount_after_any_sequence_of_reloads(con, load, seed):
    """Unique users move by each load's difference; after reloads that add, change and drop users and
    ads across an hour and a day boundary, every hour and day row equals a recount from scratch."""
    rng = random.Random(seed)
    night = MIDNIGHT - timedelta(minutes=70)
    for _ in range(25):
        start = night + timedelta(minutes=rng.randrange(0, 140))
        end = start + timedelta(minutes=rng.randrange(1, 15))
        minutes, users = [], []
        for minute in range(int((end - start).total_seconds() // 60)):
            minute_at = start + timedelta(minutes=minute)
            for ad_id in rng.sample(["ad-1", "ad-2", "ad-3"], rng.randrange(0, 3)):
                hashes = rng.sample(range(8), rng.randrange(1, 4))
                minutes.append(minute_row(minute_at, ad_id, billable=len(hashes) + rng.randrange(2), users=len(hashes)))
                users += [(minute_at, ad_id, user_hash) for user_hash in hashes]
        load(start, end, minutes, users)

    all_minutes = minute_facts(con)
    all_users = rows(con, "SELECT * FROM stg_clicks_minute_users")
    assert rollup(con, "fct_clicks_hour") == expected_rollup(all_minutes, all_users, to_hour)
    assert rollup(con, "fct_clicks_day") == expected_rollup(all_minutes, all_users, to_day)
    assert len(rollup(con, "fct_clicks_day")) > 3


# Watermark, dim_ads, meta_loads


def test_the_watermark_advances_only_over_contiguous_loads(con, load):
    assert loads.watermark(con) is None

    assert load(at(0), at(5), []).watermark == at(5)
    assert load(at(5), at(10), []).watermark == at(10)
    assert load(at(0), at(5), []).watermark == at(10)  # an older re-load does not move it back
    assert load(at(15), at(20), []).watermark == at(10)  # a gap is not jumped over
    assert load(at(5), at(15), []).watermark == at(15)  # an overlapping (lookback) load is contiguous
    assert loads.watermark(con) == at(15)


def test_a_load_without_advancing_leaves_the_watermark(con, load):
    load(at(0), at(5), [])

    result = load(at(5), at(10), [], advance_watermark=False)

    assert result.watermark is None
    assert loads.watermark(con) == at(5)


def test_dim_ads_keeps_the_earliest_first_seen_and_latest_last_seen(con, load):
    load(at(0), at(5), [minute_row(at(2), billable=1), minute_row(at(3), billable=1)])
    load(at(-60), at(-55), [minute_row(at(-59), billable=1, advertiser_id="adv-new")])

    load(at(0), at(5), [minute_row(at(0), billable=1, advertiser_id="adv-new")])

    assert rows(con, "SELECT * FROM dim_ads") == [("ad-1", "adv-new", at(-59), at(3))]


def test_dim_ads_takes_a_new_owner_even_when_the_seen_bounds_do_not_move(con, load):
    load(at(0), at(5), [minute_row(at(1), billable=1, advertiser_id="adv-a"), minute_row(at(3), billable=1, advertiser_id="adv-a")])

    load(at(0), at(5), [minute_row(at(2), billable=1, advertiser_id="adv-b")])

    assert rows(con, "SELECT * FROM dim_ads") == [("ad-1", "adv-b", at(1), at(3))]


def test_meta_loads_records_every_load(con, load):
    first = load(at(0), at(5), [minute_row(at(1)), minute_row(at(2))])
    second = load(at(0), at(5), [minute_row(at(3))])

    recorded = rows(
        con,
        "SELECT load_id, table_name, interval_start_at, interval_end_at, rows_deleted, rows_inserted "
        "FROM meta_loads ORDER BY loaded_at, rows_deleted",
    )
    assert recorded == [
        (first.load_id, "fct_clicks_minute", at(0), at(5), 0, 2),
        (second.load_id, "fct_clicks_minute", at(0), at(5), 2, 1),
    ]
    assert first.load_id != second.load_id


def test_meta_load_hours_versions_every_hour_a_load_touches(con, load):
    morning = load(at(0), at(5), [minute_row(at(1))])
    midnight = datetime(2026, 1, 2)
    across = load(midnight - timedelta(minutes=2), midnight + timedelta(minutes=3), [minute_row(midnight)])
    again = load(at(0), at(5), [minute_row(at(2))])

    assert rows(con, "SELECT hour_at, loads, last_load_id FROM meta_load_hours ORDER BY hour_at") == [
        (T0, 2, again.load_id),
        (datetime(2026, 1, 1, 23), 1, across.load_id),
        (midnight, 1, across.load_id),
    ]
    assert morning.load_id != again.load_id


# Migrations and time zones


def test_load_hours_migration_counts_the_loads_already_recorded(tmp_path, monkeypatch):
    con = connect(str(tmp_path / "old.duckdb"))
    monkeypatch.setattr(schema, "MIGRATIONS", [m for m in schema.MIGRATIONS if m[1] != "load_hours"])
    schema.migrate(con)
    con.executemany("INSERT INTO meta_loads VALUES (?, 'fct_clicks_minute', ?, ?, 0, 0, ?)", [
        ("a", datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 10, 5), datetime(2026, 1, 1, 10, 6)),
        ("b", datetime(2026, 1, 1, 23, 58), datetime(2026, 1, 2, 0, 3), datetime(2026, 1, 2, 0, 4)),
        ("c", datetime(2026, 1, 2, 0, 0), datetime(2026, 1, 2, 0, 5), datetime(2026, 1, 2, 0, 6)),
    ])
    monkeypatch.undo()

    assert [version for version, name, _ in schema.MIGRATIONS if name == "load_hours"] == schema.migrate(con)
    assert rows(con, "SELECT hour_at, loads, last_load_id FROM meta_load_hours ORDER BY hour_at") == [
        (datetime(2026, 1, 1, 10), 1, "a"),
        (datetime(2026, 1, 1, 23), 1, "b"),
        (datetime(2026, 1, 2), 2, "c"),
    ]
    con.close()


def test_migrate_is_idempotent(tmp_path):
    path = str(tmp_path / "fresh.duckdb")
    con = connect(path)

    assert schema.migrate(con) == [version for version, _, _ in schema.MIGRATIONS]
    assert schema.migrate(con) == []
    con.close()
    reopened = connect(path)
    assert schema.migrate(reopened) == []
    tables = {row[0] for row in rows(reopened, "SELECT table_name FROM duckdb_tables()")}
    assert {"fct_clicks_minute", "fct_clicks_hour", "fct_clicks_day", "dim_ads", "meta_loads"} <= tables
    assert rows(reopened, "SELECT version FROM schema_migrations ORDER BY version") == [(v,) for v, _, _ in schema.MIGRATIONS]


@pytest.fixture
def tokyo_host(monkeypatch):
    """Run as on a host whose local time zone is not UTC (DuckDB takes its TimeZone from it)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_loaded_at_is_utc_on_a_host_outside_utc(tokyo_host, tmp_path):
    con = connect(str(tmp_path / "tokyo.duckdb"))
    schema.migrate(con)
    folder = tmp_path / "run"
    write_parquet(folder / "minute" / "part-0.parquet", MINUTE_LAYOUT, [minute_row(at(1), billable=1)])
    write_parquet(folder / "users" / "part-0.parquet", USER_LAYOUT, [])

    loads.load_clicks_minute(con, f"{folder}/minute/*.parquet", f"{folder}/users/*.parquet", at(0), at(5))

    loaded_at = rows(con, "SELECT loaded_at FROM fct_clicks_minute")[0][0]
    utc_now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(loaded_at - utc_now) < timedelta(minutes=5)
