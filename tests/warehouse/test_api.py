"""The metrics API on a temp warehouse: its series equal the warehouse's own SQL in every time zone."""

from __future__ import annotations

import csv
import io
import shutil
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
import pytest

from warehouse import api, compaction, connect, loads, schema
from warehouse.server import create_app

TOKEN = "admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# Two windows loaded as the rollup would: each holds a New York DST change (2026-03-08 07:00 UTC
# springs forward, 2026-11-01 06:00 UTC falls back).
WINDOWS = [(datetime(2026, 3, 6), datetime(2026, 3, 10)), (datetime(2026, 10, 30), datetime(2026, 11, 3))]
ADS = [("ad-1", "adv-A", 17), ("ad-2", "adv-A", 23), ("ad-9", "adv-B", 31)]  # ad, advertiser, minutes apart
MINUTE_LAYOUT = (
    "minute_at TIMESTAMP, ad_id VARCHAR, advertiser_id VARCHAR, billable_clicks BIGINT, duplicate_clicks BIGINT, "
    "expired_clicks BIGINT, invalid_clicks BIGINT, invalid_head_clicks BIGINT, invalid_prefetch_clicks BIGINT, "
    "invalid_bot_clicks BIGINT, unique_users BIGINT"
)
VALUES = ["billable_clicks", "duplicate_clicks", "invalid_clicks", "expired_clicks", "unique_users"]


def window_rows(start: datetime, end: datetime):
    """Minute facts and their users: users recur across minutes, so an hour's distinct users < the sum."""
    minutes, users = [], []
    for ad_id, advertiser_id, step in ADS:
        for i, minute in enumerate(range(0, int((end - start) / timedelta(minutes=1)), step)):
            at = start + timedelta(minutes=minute)
            billable = 1 + i % 5
            minutes.append((at, ad_id, advertiser_id, billable, i % 3, int(i % 7 == 0), i % 2, i % 2, 0, 0, billable))
            users += [(at, ad_id, (i + k) % 40) for k in range(billable)]
    return minutes, users


def write_parquet(path, layout: str, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = duckdb.connect()
    mem.execute(f"CREATE TABLE t ({layout})")
    mem.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    mem.execute(f"COPY (SELECT * FROM t) TO '{path}' (FORMAT parquet)")
    mem.close()
    return str(path)


@pytest.fixture(scope="module")
def warehouse_file(tmp_path_factory):
    """A warehouse filled by the real loads over both windows; closed, so tests can copy it."""
    folder = tmp_path_factory.mktemp("api")
    path = str(folder / "w.duckdb")
    con = connect(path)
    schema.migrate(con)
    for n, (start, end) in enumerate(WINDOWS):
        minutes, users = window_rows(start, end)
        m = write_parquet(folder / f"run{n}" / "minute" / "p.parquet", MINUTE_LAYOUT, minutes)
        u = write_parquet(folder / f"run{n}" / "users" / "p.parquet", "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT",
                          users)
        loads.load_clicks_minute(con, m, u, start, end)
    con.close()
    return path


def make_app(path: str, **config):
    return create_app({"WAREHOUSE_PATH": path, "ADMIN_TOKEN": TOKEN, "THREADS": 1, **config})


def issue_key(client, advertiser_id: str) -> dict:
    response = client.post("/internal/api-keys", json={"advertiser_id": advertiser_id}, headers=ADMIN)
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.get_json()['api_key']}"}


@pytest.fixture(scope="module")
def shared(warehouse_file, tmp_path_factory):
    """One app on a copy of the file, with a key for each advertiser (for tests that only read)."""
    path = str(tmp_path_factory.mktemp("shared") / "w.duckdb")
    shutil.copy(warehouse_file, path)
    app = make_app(path)
    client = app.test_client()
    yield client, issue_key(client, "adv-A"), issue_key(client, "adv-B"), app.extensions["warehouse"]
    app.extensions["warehouse"].close()


@pytest.fixture
def fresh(warehouse_file, tmp_path):
    """An app on its own copy of the file, for tests that change it."""
    path = str(tmp_path / "w.duckdb")
    shutil.copy(warehouse_file, path)
    app = make_app(path)
    client = app.test_client()
    yield client, issue_key(client, "adv-A"), app.extensions["warehouse"]
    app.extensions["warehouse"].close()


# The warehouse's own answer, in SQL: local buckets from DuckDB's ICU time zones


BUCKET_SQL = {
    "minute": "minute_at",
    # The local hour's start minus this minute's offset: the two 01:00s of a fall-back night stay apart.
    "hour": "date_trunc('hour', local_at) - (local_at - minute_at)",
    "day": "timezone(?, local_at::DATE::TIMESTAMP)::TIMESTAMP",
}


def reference(con, tz: str, granularity: str, start: datetime, end: datetime, advertiser_id: str, ad_id=None):
    """(ad_id, bucket start UTC, values...) per bucket with clicks, straight from fct_clicks_minute and the users."""
    bucket = BUCKET_SQL[granularity]
    bucket_params = [tz] if granularity == "day" else []
    ad_filter = "AND ad_id = ?" if ad_id else ""
    ad_params = [ad_id] if ad_id else []
    return con.execute(
        f"""
        WITH m AS (SELECT *, timezone(?, minute_at::TIMESTAMPTZ) AS local_at FROM fct_clicks_minute
                   WHERE advertiser_id = ? {ad_filter} AND minute_at >= ? AND minute_at < ?),
             facts AS (SELECT ad_id, {bucket} AS bucket_at, sum(billable_clicks) AS b, sum(duplicate_clicks) AS d,
                              sum(invalid_clicks) AS i, sum(expired_clicks) AS e FROM m GROUP BY ALL),
             u AS (SELECT *, timezone(?, minute_at::TIMESTAMPTZ) AS local_at FROM stg_clicks_minute_users
                   WHERE ad_id IN (SELECT ad_id FROM m) AND minute_at >= ? AND minute_at < ?),
             users AS (SELECT ad_id, {bucket} AS bucket_at, count(DISTINCT user_hash) AS n FROM u GROUP BY ALL)
        SELECT ad_id, bucket_at, b, d, i, e, coalesce(n, 0) FROM facts LEFT JOIN users USING (ad_id, bucket_at)
        ORDER BY bucket_at, ad_id""",
        [tz, advertiser_id, *ad_params, start, end, *bucket_params, tz, start, end, *bucket_params],
    ).fetchall()


def label(moment: datetime, tz: str) -> str:
    return moment.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(tz)).isoformat()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc).replace(tzinfo=None)


def series(client, key, path: str, **params):
    return client.get(path, query_string=params, headers=key)


CASES = [
    # tz, granularity, local from, local to, the tables the API should pick
    ("UTC", "day", "2026-03-06", "2026-03-10", ["fct_clicks_day"]),
    ("UTC", "hour", "2026-03-08", "2026-03-09", ["fct_clicks_hour"]),
    ("America/New_York", "hour", "2026-03-08", "2026-03-09", ["fct_clicks_hour"]),
    ("America/New_York", "hour", "2026-11-01", "2026-11-02", ["fct_clicks_hour"]),
    ("America/New_York", "day", "2026-03-07", "2026-03-10", ["fct_clicks_hour"]),
    ("America/New_York", "day", "2026-10-31", "2026-11-03", ["fct_clicks_hour"]),
    ("America/New_York", "minute", "2026-11-01T00:30", "2026-11-01T03:00", ["fct_clicks_minute"]),
    ("Asia/Kathmandu", "hour", "2026-03-08", "2026-03-09", ["fct_clicks_minute"]),
    ("Asia/Kathmandu", "day", "2026-03-07", "2026-03-10", ["fct_clicks_hour", "fct_clicks_minute"]),
    ("Asia/Kathmandu", "minute", "2026-03-08T05:45", "2026-03-08T09:00", ["fct_clicks_minute"]),
    ("Asia/Kolkata", "hour", "2026-11-01", "2026-11-02", ["fct_clicks_minute"]),
    ("Asia/Kolkata", "day", "2026-10-31", "2026-11-03", ["fct_clicks_hour", "fct_clicks_minute"]),
]


@pytest.mark.parametrize(("tz", "granularity", "start", "end", "sources"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_an_ads_series_equals_the_warehouse_sql(shared, tz, granularity, start, end, sources):
    client, key_a, _, con = shared

    response = series(client, key_a, "/v1/ads/ad-1/series", granularity=granularity, tz=tz, **{"from": start, "to": end})

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    first, last = utc(body["from"]), utc(body["to"])
    expected = reference(con, tz, granularity, first, last, "adv-A", "ad-1")
    assert body["rows"] == [[label(at, tz), *values] for _, at, *values in expected]
    assert body["row_count"] == len(expected) > 0
    assert body["sources"] == sources
    assert body["unique_users_exact"] is True
    assert body["columns"] == ["start", *VALUES]


@pytest.mark.parametrize(("tz", "granularity", "start", "end", "sources"), CASES[::3],
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES[::3]])
def test_an_advertisers_series_has_each_of_its_ads_and_equals_the_sql(shared, tz, granularity, start, end, sources):
    client, key_a, _, con = shared

    body = series(client, key_a, "/v1/advertisers/adv-A/series", granularity=granularity, tz=tz,
                  **{"from": start, "to": end}).get_json()

    expected = reference(con, tz, granularity, utc(body["from"]), utc(body["to"]), "adv-A")
    assert body["rows"] == [[ad, label(at, tz), *values] for ad, at, *values in expected]
    assert {row[0] for row in body["rows"]} == {"ad-1", "ad-2"}
    assert body["columns"] == ["ad_id", "start", *VALUES]


def test_new_yorks_dst_days_have_23_and_25_hours_with_both_1am_hours_apart(shared):
    client, key_a, _, _ = shared

    spring = series(client, key_a, "/v1/ads/ad-1/series", granularity="hour", tz="America/New_York",
                    **{"from": "2026-03-08", "to": "2026-03-09"}).get_json()
    autumn = series(client, key_a, "/v1/ads/ad-1/series", granularity="hour", tz="America/New_York",
                    **{"from": "2026-11-01", "to": "2026-11-02"}).get_json()

    assert (spring["buckets"], autumn["buckets"]) == (23, 25)
    assert (spring["from"], spring["to"]) == ("2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00")
    starts = [row[0] for row in autumn["rows"]]
    assert "2026-11-01T01:00:00-04:00" in starts and "2026-11-01T01:00:00-05:00" in starts
    assert not any(row[0].startswith("2026-03-08T02:") for row in spring["rows"])


def test_a_dst_day_sums_its_25_hours(shared):
    client, key_a, _, con = shared

    body = series(client, key_a, "/v1/ads/ad-1/series", granularity="day", tz="America/New_York",
                  **{"from": "2026-11-01", "to": "2026-11-02"}).get_json()

    # 2026-11-01 in New York is [04:00, 05:00 next day) UTC: 25 hours.
    billable = con.execute("SELECT sum(billable_clicks) FROM fct_clicks_minute WHERE ad_id = 'ad-1' "
                           "AND minute_at >= '2026-11-01 04:00' AND minute_at < '2026-11-02 05:00'").fetchone()[0]
    assert body["rows"][0][:2] == ["2026-11-01T00:00:00-04:00", billable]
    assert body["buckets"] == 1


def test_kathmandu_hours_start_at_a_quarter_past_utc(shared):
    client, key_a, _, _ = shared

    body = series(client, key_a, "/v1/ads/ad-1/series", granularity="hour", tz="Asia/Kathmandu",
                  **{"from": "2026-03-08T05:00:00+05:45", "to": "2026-03-08T08:00:00+05:45"}).get_json()

    assert [row[0] for row in body["rows"]] == [
        "2026-03-08T05:00:00+05:45", "2026-03-08T06:00:00+05:45", "2026-03-08T07:00:00+05:45"]
    assert [utc(row[0]).strftime("%d %H:%M") for row in body["rows"]] == ["07 23:15", "08 00:15", "08 01:15"]


def test_hour_buckets_that_straddle_utc_hours_count_each_user_once(shared):
    client, key_a, _, con = shared

    exact = series(client, key_a, "/v1/ads/ad-1/series", granularity="hour", tz="Asia/Kolkata",
                   **{"from": "2026-03-08", "to": "2026-03-09"}).get_json()
    upper = series(client, key_a, "/v1/ads/ad-1/series", granularity="hour", tz="Asia/Kolkata", unique_users="upper_bound",
                   **{"from": "2026-03-08", "to": "2026-03-09"}).get_json()

    summed = con.execute(
        "SELECT sum(unique_users) FROM fct_clicks_minute WHERE ad_id = 'ad-1' AND minute_at >= ? AND minute_at < ?",
        [utc(exact["from"]), utc(exact["to"])]).fetchone()[0]
    assert sum(row[-1] for row in exact["rows"]) < summed
    assert sum(row[-1] for row in upper["rows"]) == summed
    assert (exact["unique_users_exact"], exact["unique_users_note"]) == (True, None)
    assert upper["unique_users_exact"] is False
    assert "upper bound" in upper["unique_users_note"]
    assert [row[:-1] for row in upper["rows"]] == [row[:-1] for row in exact["rows"]]


def test_without_the_hashed_users_unique_users_are_flagged_as_an_upper_bound(fresh):
    client, key_a, con = fresh
    con.execute("DELETE FROM stg_clicks_minute_users WHERE minute_at < '2026-03-08 12:00'")
    client.application.extensions.pop("api_users_since", None)

    body = series(client, key_a, "/v1/ads/ad-1/series", granularity="day", tz="America/New_York",
                  **{"from": "2026-03-07", "to": "2026-03-10"}).get_json()

    assert body["unique_users_exact"] is False
    assert "before 2026-03-09T00:00:00-04:00" in body["unique_users_note"]
    exact_day = con.execute(
        "SELECT count(DISTINCT user_hash) FROM stg_clicks_minute_users WHERE ad_id = 'ad-1' "
        "AND minute_at >= '2026-03-09 04:00' AND minute_at < '2026-03-10 04:00'").fetchone()[0]
    assert body["rows"][-1][0] == "2026-03-09T00:00:00-04:00"
    assert body["rows"][-1][-1] == exact_day


# Formats


def test_csv_and_json_carry_the_same_rows(shared):
    client, key_a, _, _ = shared
    params = {"granularity": "hour", "tz": "Asia/Kathmandu", "from": "2026-03-08", "to": "2026-03-09"}

    as_json = series(client, key_a, "/v1/advertisers/adv-A/series", **params).get_json()
    by_param = series(client, key_a, "/v1/advertisers/adv-A/series", format="csv", **params)
    by_accept = client.get("/v1/advertisers/adv-A/series", query_string=params, headers={**key_a, "Accept": "text/csv"})

    assert by_param.mimetype == by_accept.mimetype == "text/csv"
    assert by_param.data == by_accept.data
    table = list(csv.reader(io.StringIO(by_param.data.decode())))
    assert table[0] == as_json["columns"]
    assert table[1:] == [[str(v) for v in row] for row in as_json["rows"]]
    assert by_param.headers["X-Unique-Users-Exact"] == "true"
    assert by_param.headers["X-Sources"] == "fct_clicks_minute"
    assert by_param.headers["X-Complete-Through"] == as_json["completeness"]["complete_through"]


@pytest.mark.parametrize(("bodies", "separator", "tail", "whole"), [
    ([], b",", b"]}", b'{"rows": []}'),
    ([b"[1]"], b",", b"]}", b'{"rows": [[1]]}'),
    ([b"[1]", b"[2],[3]", b"[4]"], b",", b"]}", b'{"rows": [[1],[2],[3],[4]]}'),
])
def test_joined_pieces_make_the_whole_body_with_nothing_sent_alone(bodies, separator, tail, whole):
    pieces = api.joined(b'{"rows": [', bodies, separator, tail)

    assert b"".join(pieces) == whole
    assert len(pieces) == max(1, len(bodies))


def test_a_long_series_says_its_length_and_sends_all_of_it(shared):
    client, key_a, _, _ = shared
    params = {"granularity": "minute", "from": "2026-03-07", "to": "2026-03-10"}

    response = series(client, key_a, "/v1/advertisers/adv-A/series", **params)

    assert int(response.headers["Content-Length"]) == len(response.data)
    assert len(response.get_json()["rows"]) == response.get_json()["row_count"] > 0


def test_csv_quotes_an_ad_id_with_a_comma(fresh):
    client, key_a, con = fresh
    con.execute("INSERT INTO fct_clicks_minute SELECT minute_at, 'ad,\"x\"', advertiser_id, * EXCLUDE "
                "(minute_at, ad_id, advertiser_id) FROM fct_clicks_minute WHERE ad_id = 'ad-1'")

    response = series(client, key_a, "/v1/advertisers/adv-A/series", format="csv", granularity="hour",
                      tz="Asia/Kathmandu", **{"from": "2026-03-07", "to": "2026-03-08"})

    table = list(csv.reader(io.StringIO(response.data.decode())))
    assert {row[0] for row in table[1:]} == {"ad,\"x\"", "ad-1", "ad-2"}


def test_an_empty_range_has_a_header_and_no_rows(shared):
    client, key_a, _, _ = shared

    as_csv = series(client, key_a, "/v1/ads/ad-1/series", format="csv", granularity="day",
                    **{"from": "2025-01-01", "to": "2025-01-03"})
    as_json = series(client, key_a, "/v1/ads/ad-1/series", granularity="day",
                     **{"from": "2025-01-01", "to": "2025-01-03"}).get_json()

    assert as_csv.data.decode() == "start,billable_clicks,duplicate_clicks,invalid_clicks,expired_clicks,unique_users\n"
    assert (as_json["rows"], as_json["row_count"], as_json["buckets"]) == ([], 0, 2)


# Completeness


def test_the_answer_says_how_far_the_data_is_complete_and_reconciled(fresh):
    client, key_a, con = fresh
    con.execute("INSERT INTO meta_reconciliations SELECT h, 1, 0, 0, false, 0.1, 'ok', NULL, now()::TIMESTAMP "
                "FROM range(TIMESTAMP '2026-03-07 00:00', TIMESTAMP '2026-03-08 00:00', INTERVAL 1 HOUR) t(h)")
    con.execute("UPDATE meta_reconciliations SET status = 'repaired' WHERE hour_at = '2026-03-07 05:00'")

    def status(start, end):
        return series(client, key_a, "/v1/ads/ad-1/series", granularity="hour",
                      **{"from": start, "to": end}).get_json()["completeness"]

    assert status("2026-03-07T00:00", "2026-03-08T00:00") == {
        # The second window left a gap after the first: the watermark stays at the first's end.
        "complete_through": "2026-03-10T00:00:00Z", "range_complete": True, "reconciled": True,
        "hours": 24, "hours_reconciled": 24,
    }
    assert status("2026-03-07T20:00", "2026-03-08T01:00")["reconciled"] is False
    con.execute("UPDATE meta_reconciliations SET status = 'failed' WHERE hour_at = '2026-03-07 10:00'")
    assert status("2026-03-07T09:00", "2026-03-07T11:00")["hours_reconciled"] == 1
    assert status("2026-03-09T00:00", "2026-03-11T00:00")["range_complete"] is False


def test_a_minute_range_touching_part_of_an_hour_needs_that_hour_reconciled(fresh):
    client, key_a, con = fresh
    con.execute("INSERT INTO meta_reconciliations VALUES ('2026-03-08 05:00', 1, 0, 0, false, 0.1, 'ok', NULL, "
                "now()::TIMESTAMP)")

    body = series(client, key_a, "/v1/ads/ad-1/series", granularity="minute", tz="Asia/Kolkata",
                  **{"from": "2026-03-08T10:40", "to": "2026-03-08T11:20"}).get_json()

    assert body["completeness"]["hours"] == 1  # 05:10-05:50 UTC
    assert body["completeness"]["reconciled"] is True


# Who may read what


def test_a_key_reads_only_its_own_advertisers_ads(shared):
    client, key_a, key_b, _ = shared
    params = {"granularity": "day", "from": "2026-03-06", "to": "2026-03-10"}

    own = series(client, key_b, "/v1/ads/ad-9/series", **params)
    others = series(client, key_a, "/v1/ads/ad-9/series", **params)
    unknown = series(client, key_a, "/v1/ads/no-such-ad/series", **params)
    other_advertiser = series(client, key_a, "/v1/advertisers/adv-B/series", **params)

    assert own.status_code == 200 and own.get_json()["row_count"] == 4
    assert others.status_code == unknown.status_code == other_advertiser.status_code == 404
    assert others.get_json() == {"error": "no ad 'ad-9' for this API key", "status": 404}
    assert unknown.get_json()["error"] == "no ad 'no-such-ad' for this API key"
    assert other_advertiser.get_json()["error"] == "no advertiser 'adv-B' for this API key"
    assert b"rows" not in others.data


def test_an_advertisers_series_never_has_another_advertisers_ad(shared):
    client, _, key_b, _ = shared

    body = series(client, key_b, "/v1/advertisers/adv-B/series", granularity="day",
                  **{"from": "2026-03-06", "to": "2026-03-10"}).get_json()

    assert {row[0] for row in body["rows"]} == {"ad-9"}


# Bad input


GOOD = {"granularity": "hour", "tz": "UTC", "from": "2026-03-08", "to": "2026-03-09"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": None}, "'from' is required"),
        ({"to": None}, "'to' is required"),
        ({"from": "yesterday"}, "'from' 'yesterday' is not an ISO-8601 date or time"),
        ({"to": "2026-13-01"}, "'to' '2026-13-01' is not an ISO-8601"),
        ({"from": "2026-03-09", "to": "2026-03-08"}, "'to' (2026-03-08) must be after 'from' (2026-03-09)"),
        ({"to": "2026-03-08"}, "must be after"),
        ({"granularity": "week"}, "unknown granularity 'week': use one of minute, hour, day"),
        ({"tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"tz": "+05:30"}, "use an IANA name"),
        ({"granularity": "minute", "from": "2026-03-01", "to": "2026-04-02"}, "a minute series covers at most 31 days"),
        ({"granularity": "hour", "from": "2025-01-01", "to": "2026-03-01"}, "at most 366 days"),
        ({"tz": "Asia/Kathmandu", "from": "2026-03-08T10:00:00Z"},
         "'from' must be the start of an hour in Asia/Kathmandu, e.g. 2026-03-08T15:00:00+05:45"),
        ({"granularity": "day", "tz": "America/New_York", "from": "2026-03-08T00:00:00Z"},
         "'from' must be the start of a day in America/New_York"),
        ({"granularity": "minute", "tz": "America/New_York", "from": "2026-03-08T02:30", "to": "2026-03-08T04:00"},
         "'from' 2026-03-08T02:30 does not exist in America/New_York"),
        ({"from": "1999-12-31"}, "'from' must be between 2000 and 2200"),
        ({"format": "xml"}, "unknown format 'xml': use json or csv"),
        ({"unique_users": "approximate"}, "unknown unique_users 'approximate'"),
    ],
    ids=["no-from", "no-to", "unparseable-from", "unparseable-to", "reversed", "empty", "granularity", "tz",
         "offset-as-tz", "minutes-too-long", "hours-too-long", "unaligned-hour", "unaligned-day", "skipped-local-time",
         "too-early", "format", "unique-users"],
)
def test_bad_input_is_a_400_that_says_what_to_fix(shared, params, message):
    client, key_a, _, _ = shared
    query = {k: v for k, v in {**GOOD, **params}.items() if v is not None}

    response = client.get("/v1/ads/ad-1/series", query_string=query, headers=key_a)

    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_the_good_query_of_the_bad_input_table_is_answered(shared):
    client, key_a, _, _ = shared

    assert client.get("/v1/ads/ad-1/series", query_string=GOOD, headers=key_a).status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "this API needs an API key"),
        ({"Authorization": "Basic abc"}, "'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer not-a-key"}, "malformed API key"),
        ({"X-API-Key": "ck_0123456789abcdef_short"}, "malformed API key"),
        ({"Authorization": "Bearer ck_0123456789abcdef_" + "A" * 43}, "invalid API key"),
    ],
    ids=["none", "basic", "malformed", "malformed-x-api-key", "unknown"],
)
def test_a_missing_or_bad_key_is_a_401(shared, headers, message):
    client, _, _, _ = shared

    response = client.get("/v1/ads/ad-1/series", query_string=GOOD, headers=headers)

    assert response.status_code == 401
    assert message in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="clickagg"'


def test_a_key_with_another_keys_secret_is_invalid(shared):
    client, key_a, key_b, _ = shared
    key_id_a = key_a["Authorization"].split("_")[1]
    secret_b = key_b["Authorization"].split("_", 2)[2]

    response = client.get("/v1/ads/ad-1/series", query_string=GOOD,
                          headers={"Authorization": f"Bearer ck_{key_id_a}_{secret_b}"})

    assert response.status_code == 401
    assert "invalid API key" in response.get_json()["error"]


def test_the_x_api_key_header_works_too(shared):
    client, key_a, _, _ = shared

    response = client.get("/v1/ads/ad-1/series", query_string=GOOD,
                          headers={"X-API-Key": key_a["Authorization"].removeprefix("Bearer ")})

    assert response.status_code == 200


# The OpenAPI document


def test_the_openapi_document_is_public_and_describes_every_v1_route(shared):
    client, _, _, _ = shared

    response = client.get("/v1/openapi.json")

    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.")
    routes = {rule.rule.replace("<", "{").replace(">", "}") for rule in client.application.url_map.iter_rules()
              if rule.rule.startswith("/v1/")}
    assert set(doc["paths"]) == routes
    params = doc["paths"]["/v1/ads/{ad_id}/series"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["ad_id", "from", "to", "granularity", "tz", "unique_users", "format"]
    by_name = {p["name"]: p for p in params}
    assert by_name["granularity"]["schema"]["enum"] == list(api.GRANULARITIES)
    assert "minute: 31 days" in by_name["to"]["description"]
    assert doc["components"]["schemas"]["Series"]["properties"]["columns"]["example"] == ["start", *VALUES]


# The pure time arithmetic


def test_cover_cuts_a_range_into_whole_days_then_hours_then_minutes():
    assert api.cover(datetime(2026, 1, 1, 5, 30), datetime(2026, 1, 3, 2, 15)) == [
        ("minute", datetime(2026, 1, 1, 5, 30), datetime(2026, 1, 1, 6, 0)),
        ("hour", datetime(2026, 1, 1, 6, 0), datetime(2026, 1, 2, 0, 0)),
        ("day", datetime(2026, 1, 2, 0, 0), datetime(2026, 1, 3, 0, 0)),
        ("hour", datetime(2026, 1, 3, 0, 0), datetime(2026, 1, 3, 2, 0)),
        ("minute", datetime(2026, 1, 3, 2, 0), datetime(2026, 1, 3, 2, 15)),
    ]
    assert api.cover(datetime(2026, 1, 1, 5, 15), datetime(2026, 1, 1, 5, 45)) == [
        ("minute", datetime(2026, 1, 1, 5, 15), datetime(2026, 1, 1, 5, 45))]


def test_offset_segments_split_at_the_dst_change_to_the_minute():
    segments = api.offset_segments(datetime(2026, 3, 1), datetime(2026, 3, 15), ZoneInfo("America/New_York"))

    assert [(s.start, s.end, s.offset) for s in segments] == [
        (datetime(2026, 3, 1), datetime(2026, 3, 8, 7, 0), timedelta(hours=-5)),
        (datetime(2026, 3, 8, 7, 0), datetime(2026, 3, 15), timedelta(hours=-4)),
    ]


@pytest.mark.parametrize(
    ("tz", "start", "end", "granularity", "count"),
    [
        ("America/New_York", datetime(2026, 3, 8, 5), datetime(2026, 3, 9, 4), "hour", 23),
        ("America/New_York", datetime(2026, 11, 1, 4), datetime(2026, 11, 2, 5), "hour", 25),
        ("America/New_York", datetime(2026, 3, 1, 5), datetime(2026, 4, 1, 4), "day", 31),
        ("Australia/Lord_Howe", datetime(2026, 4, 3, 13), datetime(2026, 4, 6, 13, 30), "day", 3),
    ],
)
def test_bucket_starts_follow_local_clocks(tz, start, end, granularity, count):
    zone = ZoneInfo(tz)

    starts = api.bucket_starts(api.offset_segments(start, end, zone), granularity)

    assert len(starts) == count
    assert starts[0] == start
    assert all(api.is_boundary(s, granularity, zone) for s in starts)
    walls = [s.replace(tzinfo=timezone.utc).astimezone(zone) for s in starts]
    assert all(w.minute == 0 and (granularity == "hour" or w.hour == 0) for w in walls)


# The cache of closed days


def cached_chunks(client) -> list:
    """The UTC start of every cached chunk."""
    cache = client.application.extensions.get("api_chunk_cache")
    return sorted(api.EPOCH + timedelta(seconds=key[-1][0]) for key in cache.entries) if cache else []


def test_closed_days_and_hours_of_a_minute_series_are_cached_and_answer_the_same(fresh):
    client, key_a, _ = fresh
    params = {"granularity": "minute", "tz": "Asia/Kolkata", "from": "2026-03-06T12:00", "to": "2026-03-09T12:00"}

    cold = series(client, key_a, "/v1/advertisers/adv-A/series", **params)
    warm = series(client, key_a, "/v1/advertisers/adv-A/series", **params)

    # Inside [06:30 on the 6th, 06:30 on the 9th) UTC, behind the watermark (midnight on the 10th):
    # the whole days before the watermark's last day, then the whole hours of that day.
    assert cached_chunks(client) == [datetime(2026, 3, 7), datetime(2026, 3, 8)] + [
        datetime(2026, 3, 9, hour) for hour in range(6)]
    assert warm.data == cold.data
    assert warm.get_json()["row_count"] > 0


def test_days_after_the_watermark_are_not_cached(fresh):
    client, key_a, _ = fresh

    series(client, key_a, "/v1/ads/ad-1/series", granularity="minute", **{"from": "2026-10-30", "to": "2026-11-02"})

    assert cached_chunks(client) == []


def reload_tenfold(con, tmp_path, start: datetime, end: datetime) -> None:
    """Load [start, end) again, as a later run or a repair would, with ten times the billable clicks."""
    minutes, users = window_rows(start, end)
    minutes = [(*row[:3], 10 * row[3], *row[4:]) for row in minutes]
    loads.load_clicks_minute(
        con, write_parquet(tmp_path / "m" / "p.parquet", MINUTE_LAYOUT, minutes),
        write_parquet(tmp_path / "u" / "p.parquet", "minute_at TIMESTAMP, ad_id VARCHAR, user_hash BIGINT", users),
        start, end)


def test_a_load_over_a_cached_day_is_seen_at_once(fresh, tmp_path):
    client, key_a, con = fresh
    params = {"granularity": "hour", "tz": "America/New_York", "from": "2026-03-07", "to": "2026-03-09"}
    before = series(client, key_a, "/v1/ads/ad-1/series", **params).get_json()
    assert datetime(2026, 3, 8) in cached_chunks(client)  # a day before the watermark's last day
    # A reload of one hour of the 8th (as a reconciliation's repair would do) with ten times the clicks.
    reload_tenfold(con, tmp_path, datetime(2026, 3, 8, 10), datetime(2026, 3, 8, 11))

    after = series(client, key_a, "/v1/ads/ad-1/series", **params).get_json()

    expected = reference(con, "America/New_York", "hour", utc(after["from"]), utc(after["to"]), "adv-A", "ad-1")
    assert after["rows"] == [[label(at, "America/New_York"), *values] for _, at, *values in expected]
    assert after["rows"] != before["rows"]
    assert [row for row in after["rows"] if row[0] == "2026-03-08T06:00:00-04:00"][0][1] > \
        [row for row in before["rows"] if row[0] == "2026-03-08T06:00:00-04:00"][0][1]


def test_a_compaction_that_corrects_a_cached_day_is_seen_at_once(fresh):
    client, key_a, con = fresh
    params = {"granularity": "day", "tz": "UTC", "from": "2026-03-07", "to": "2026-03-09"}
    con.execute("UPDATE fct_clicks_day SET unique_users = 999 WHERE ad_id = 'ad-1' AND day_at = '2026-03-08'")
    wrong = series(client, key_a, "/v1/ads/ad-1/series", **params).get_json()
    assert datetime(2026, 3, 8) in cached_chunks(client)
    assert [row for row in wrong["rows"] if row[0].startswith("2026-03-08")][0][-1] == 999

    assert compaction.compact_day(con, date(2026, 3, 8)).unique_users_corrected == 1
    after = series(client, key_a, "/v1/ads/ad-1/series", **params).get_json()

    expected = reference(con, "UTC", "day", utc(after["from"]), utc(after["to"]), "adv-A", "ad-1")
    assert after["rows"] == [[label(at, "UTC"), *values] for _, at, *values in expected]
    assert [row for row in after["rows"] if row[0].startswith("2026-03-08")][0][-1] != 999


def test_a_load_reads_again_only_the_hours_it_wrote(fresh, tmp_path):
    client, key_a, con = fresh
    params = {"granularity": "minute", "tz": "UTC", "from": "2026-03-09T08:00Z", "to": "2026-03-09T13:00Z"}
    before = series(client, key_a, "/v1/ads/ad-1/series", **params).get_json()
    cache = client.application.extensions["api_chunk_cache"]
    entries = dict(cache.entries)
    # A scheduled run's load: the minute and its lookback, across the 10:00 boundary, with ten times the clicks.
    reload_tenfold(con, tmp_path, datetime(2026, 3, 9, 9, 55), datetime(2026, 3, 9, 10, 6))

    after = series(client, key_a, "/v1/ads/ad-1/series", **params).get_json()

    expected = reference(con, "UTC", "minute", utc(after["from"]), utc(after["to"]), "adv-A", "ad-1")
    assert after["rows"] == [[label(at, "UTC"), *values] for _, at, *values in expected]
    assert after["rows"] != before["rows"]
    rewritten = {api.EPOCH + timedelta(seconds=key[-1][0]) for key, entry in cache.entries.items()
                 if entries.get(key) is not entry}
    assert rewritten == {datetime(2026, 3, 9, 9), datetime(2026, 3, 9, 10)}
    assert len(cache.entries) == 5


@pytest.mark.parametrize(("start", "end", "watermark", "hours", "expected"), [
    # Days up to the hour zone, then hours up to the watermark.
    (datetime(2026, 3, 6, 6, 30), datetime(2026, 3, 9, 6, 30), datetime(2026, 3, 10), datetime(2026, 3, 9),
     [datetime(2026, 3, 7), datetime(2026, 3, 8), *(datetime(2026, 3, 9, h) for h in range(6))]),
    # The watermark cuts the hours; nothing after it is closed.
    (datetime(2026, 3, 8), datetime(2026, 3, 12), datetime(2026, 3, 9, 2, 30), datetime(2026, 3, 9),
     [datetime(2026, 3, 8), datetime(2026, 3, 9), datetime(2026, 3, 9, 1)]),
    # A range that starts inside the hour zone: hours only, from the first whole one.
    (datetime(2026, 3, 9, 4, 10), datetime(2026, 3, 9, 8), datetime(2026, 3, 10), datetime(2026, 3, 9),
     [datetime(2026, 3, 9, h) for h in (5, 6, 7)]),
    # A partial day just before the hour zone is not a chunk; the zone's hours are.
    (datetime(2026, 3, 8, 12), datetime(2026, 3, 9, 3), datetime(2026, 3, 10), datetime(2026, 3, 9),
     [datetime(2026, 3, 9, h) for h in (0, 1, 2)]),
    # Day series: days only.
    (datetime(2026, 3, 6), datetime(2026, 3, 10), datetime(2026, 3, 9, 5), api.NEVER,
     [datetime(2026, 3, 6), datetime(2026, 3, 7), datetime(2026, 3, 8)]),
    # No watermark: nothing is closed.
    (datetime(2026, 3, 6), datetime(2026, 3, 10), None, api.NEVER, []),
], ids=["days-then-hours", "cut-by-watermark", "inside-hour-zone", "partial-day-before-hours", "day-series",
        "no-watermark"])
def test_cache_chunks_are_whole_closed_days_then_hours(start, end, watermark, hours, expected):
    assert api.cache_chunks(start, end, watermark, hours) == expected


def test_load_versions_are_read_again_only_when_the_count_of_loads_changes():
    con = duckdb.connect()
    con.execute("CREATE TABLE meta_load_hours (hour_at TIMESTAMP, loads BIGINT, last_load_id VARCHAR)")
    con.execute("INSERT INTO meta_load_hours VALUES ('2026-03-09 00:00', 2, 'a'), ('2026-03-09 05:00', 1, 'b'), "
                "('2026-03-10 00:00', 1, 'c')")
    versions = api.LoadVersions()
    midnight, five = api._key(datetime(2026, 3, 9)), api._key(datetime(2026, 3, 9, 5))
    ids = dict(con.execute("SELECT last_load_id, hash(last_load_id) FROM meta_load_hours").fetchall())

    hours, days = versions.get(con, 4)

    assert hours[midnight] == (2, ids["a"]) and hours[five] == (1, ids["b"])
    assert days[midnight] == (3, ids["a"] ^ ids["b"])  # a day and its first hour: same start, own versions
    con.execute("UPDATE meta_load_hours SET loads = 3, last_load_id = 'd' WHERE hour_at = '2026-03-09 05:00'")
    assert versions.get(con, 4)[1][midnight] == (3, ids["a"] ^ ids["b"])  # same count of loads: not read
    assert versions.get(con, 6)[1][midnight][0] == 5


def test_the_cache_keeps_within_its_size():
    cache = api.ChunkCache(max_bytes=100)

    for n in range(10):
        cache.put(("k", n), (1, 0), 1, b"x" * 20)

    assert cache.size <= 100
    assert cache.get_many(("k",), {9: (1, 0)}) == {9: (1, b"x" * 20)}
    assert cache.get_many(("k",), {0: (1, 0)}) == {}
    assert cache.get_many(("k",), {9: (2, 0)}) == {}  # another version: a miss


@pytest.mark.parametrize("minutes", [[], [datetime(2026, 3, 8, 10, 17)],
                                     [datetime(2031, 1, 1), datetime(2026, 3, 8, 10, 17), datetime(2027, 5, 1, 3, 3)]],
                         ids=["empty", "one", "unordered"])
def test_first_user_minute_finds_the_earliest_hashed_user(tmp_path, minutes):
    con = connect(str(tmp_path / "w.duckdb"))
    schema.migrate(con)
    for n, minute in enumerate(minutes):
        con.execute("INSERT INTO stg_clicks_minute_users VALUES (?, 'ad-1', ?)", [minute, n])

    found = api.first_user_minute(con.cursor())

    assert found == (min(minutes) if minutes else None)
    con.close()


@pytest.mark.parametrize(
    ("start", "end", "grains", "one_row"),
    [
        (datetime(2026, 1, 1, 5, 0), datetime(2026, 1, 1, 6, 0), {"hour"}, True),
        (datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 2, 0, 0), {"day"}, True),
        (datetime(2026, 1, 1, 5, 0), datetime(2026, 1, 2, 5, 0), {"hour"}, False),  # a New York day
        (datetime(2026, 1, 1, 4, 15), datetime(2026, 1, 1, 5, 15), {"minute"}, False),  # a Kathmandu hour
        (datetime(2026, 1, 1, 18, 30), datetime(2026, 1, 2, 18, 30), {"hour", "minute"}, False),  # a Kolkata day
        (datetime(2026, 1, 1, 22, 0), datetime(2026, 1, 3, 1, 0), {"day", "hour"}, False),
    ],
)
def test_a_bucket_reads_the_coarsest_tables_that_fit_it(start, end, grains, one_row):
    bucket = api.Bucket.of(start, end)

    assert bucket.grains() == grains
    assert bucket.is_one_stored_row() is one_row
