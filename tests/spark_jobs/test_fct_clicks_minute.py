"""The minute rollup's pure transforms, on a few inline rows (local Spark, no Cassandra)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from spark_jobs.fct_clicks_minute import (
    CLICK_KINDS,
    MINUTE_COLUMNS,
    RAW_COLUMNS,
    USER_COLUMNS,
    may_have_clicks_before,
    minutes_between,
    partition_keys,
    transform_billable,
    transform_minute_cells,
    transform_minute_facts,
    transform_minute_users,
)

T0 = datetime(2026, 1, 1, 10, 0)
IMPRESSION_COLUMNS = ["impression_id", "clicked_at", "click_id", "status"]


def at(minute: int, second: int = 0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


def click(
    click_id: str,
    impression_id: str,
    clicked_at: datetime,
    status: str = "valid",
    reason: str | None = None,
    ad_id: str = "ad-1",
    user_id: str | None = None,
    fingerprint: str = "fp-0",
) -> dict:
    minute = clicked_at.replace(second=0, microsecond=0)
    return {
        "minute": minute, "impression_id": impression_id, "click_id": click_id, "ad_id": ad_id,
        "advertiser_id": "adv-" + ad_id, "clicked_at": clicked_at, "issued_at": clicked_at - timedelta(seconds=5),
        "status": status, "reason": reason,
        "user_id": user_id, "fingerprint": fingerprint,
    }


def raw_schema():
    from pyspark.sql import types as T

    timestamps = {"minute", "clicked_at", "issued_at"}
    return T.StructType(
        [T.StructField(c, T.TimestampType() if c in timestamps else T.StringType()) for c in RAW_COLUMNS]
    )


def impression_schema():
    from pyspark.sql import types as T

    return T.StructType(
        [T.StructField(c, T.TimestampType() if c == "clicked_at" else T.StringType()) for c in IMPRESSION_COLUMNS]
    )


def label(spark, clicks: list[dict], earlier: list[dict] = (), unindexed: tuple[str, ...] = ()):
    """transform_billable over ``clicks``; clicks_by_impression holds them (but the ``unindexed``
    click IDs) plus ``earlier`` ones."""
    clicks_df = spark.createDataFrame([tuple(c[k] for k in RAW_COLUMNS) for c in clicks], raw_schema())
    indexed = [c for c in [*clicks, *earlier] if c["click_id"] not in unindexed]
    by_impression = [tuple(c[k] for k in IMPRESSION_COLUMNS) for c in indexed]
    impression_df = spark.createDataFrame(by_impression, impression_schema())
    return transform_billable(clicks_df, impression_df)


def billable_by_click(labelled) -> dict[str, bool]:
    return {row["click_id"]: row["is_billable"] for row in labelled.collect()}


def xxhash64(spark, value: str) -> int:
    from pyspark.sql import functions as F

    return spark.range(1).select(F.xxhash64(F.lit(value)).alias("h")).first()["h"]


# minutes_between and partition_keys


def test_minutes_between_lists_every_minute_of_a_half_open_interval():
    assert minutes_between(at(0), at(3)) == [at(0), at(1), at(2)]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (at(0, 30), at(3)),
        (at(0), at(3, 1)),
        (at(0) + timedelta(microseconds=1), at(3)),
        (at(0), at(3) + timedelta(microseconds=1)),
    ],
    ids=["start-seconds", "end-seconds", "start-microseconds", "end-microseconds"],
)
def test_minutes_between_rejects_an_unaligned_bound(start, end):
    with pytest.raises(ValueError, match="whole minutes"):
        minutes_between(start, end)


@pytest.mark.parametrize(("start", "end"), [(at(3), at(0)), (at(2), at(2))], ids=["reversed", "empty"])
def test_minutes_between_rejects_an_end_not_after_the_start(start, end):
    with pytest.raises(ValueError, match="after --start"):
        minutes_between(start, end)


@pytest.mark.spark
def test_partition_keys_pairs_every_minute_with_every_shard(spark):
    keys = partition_keys(spark, at(0), at(3), shards=4)

    assert keys.columns == ["minute", "shard"]
    rows = [(r["minute"], r["shard"]) for r in keys.collect()]
    assert sorted(rows) == [(at(m), s) for m in range(3) for s in range(4)]


# transform_billable


@pytest.mark.spark
def test_billable_is_the_first_click_and_a_repeat_labelled_duplicate_is_not(spark):
    labelled = label(
        spark,
        [
            click("c1", "imp-1", at(0, 5)),
            click("c2", "imp-1", at(0, 30), status="duplicate"),
            click("c3", "imp-2", at(1, 10)),
        ],
    )

    assert billable_by_click(labelled) == {"c1": True, "c2": False, "c3": True}


@pytest.mark.spark
def test_two_clicks_labelled_valid_while_redis_was_down_bill_only_the_earliest(spark):
    # The later click has the smaller click_id: time decides, not the ID.
    labelled = label(spark, [click("c-a", "imp-1", at(0, 40)), click("c-b", "imp-1", at(0, 10))])

    assert billable_by_click(labelled) == {"c-a": False, "c-b": True}


@pytest.mark.spark
def test_a_first_click_before_the_window_makes_the_in_window_click_not_billable(spark):
    before_window = click("c-old", "imp-1", at(-3, 20))
    labelled = label(spark, [click("c-new", "imp-1", at(1, 5))], earlier=[before_window])

    assert billable_by_click(labelled) == {"c-new": False}


@pytest.mark.spark
def test_a_tie_on_clicked_at_is_broken_by_click_id(spark):
    labelled = label(
        spark, [click("c-b", "imp-1", at(0, 15)), click("c-a", "imp-1", at(0, 15), status="duplicate")]
    )

    assert billable_by_click(labelled) == {"c-a": True, "c-b": False}


@pytest.mark.spark
def test_invalid_and_expired_clicks_are_never_billable_nor_anyones_first_click(spark):
    labelled = label(
        spark,
        [
            click("c1", "imp-1", at(0, 1), status="invalid", reason="prefetch"),
            click("c2", "imp-1", at(0, 2), status="expired"),
            click("c3", "imp-1", at(0, 3), status="duplicate"),
            click("c4", "imp-2", at(0, 4), status="invalid", reason="bot_user_agent"),
            click("c5", "imp-3", at(0, 5), status="expired"),
            click("c6", "imp-4", at(1, 6)),
        ],
        earlier=[click("c-old", "imp-4", at(-5), status="expired")],
    )

    assert billable_by_click(labelled) == {
        "c1": False, "c2": False, "c3": True, "c4": False, "c5": False, "c6": True,
    }


@pytest.mark.spark
def test_a_click_missing_from_clicks_by_impression_still_competes_for_first(spark):
    labelled = label(
        spark,
        [click("c1", "imp-1", at(0, 1)), click("c2", "imp-1", at(0, 2), status="duplicate")],
        unindexed=("c1",),
    )

    assert billable_by_click(labelled) == {"c1": True, "c2": False}


@pytest.mark.spark
def test_transform_billable_keeps_every_click_once(spark):
    clicks = [click("c1", "imp-1", at(0, 1)), click("c2", "imp-1", at(0, 2)), click("c3", "imp-2", at(0, 3))]
    labelled = label(spark, clicks, earlier=[click("c0", "imp-1", at(-1))])

    assert sorted(row["click_id"] for row in labelled.collect()) == ["c1", "c2", "c3"]


# transform_minute_cells, transform_minute_facts and transform_minute_users

FACT_CLICKS = [
    # ad-1, minute 0: three billable users (u1 twice with two fingerprints, fp-9 twice anonymously, u2).
    click("a1", "imp-1", at(0, 1), user_id="u1", fingerprint="fp-a"),
    click("a2", "imp-2", at(0, 2), user_id="u1", fingerprint="fp-b"),
    click("a3", "imp-3", at(0, 3), fingerprint="fp-9"),
    click("a4", "imp-4", at(0, 4), fingerprint="fp-9"),
    click("a5", "imp-5", at(0, 5), user_id="u2", fingerprint="fp-9"),
    # Not billable, so their users do not count.
    click("a6", "imp-1", at(0, 6), status="duplicate", user_id="u3"),
    click("a7", "imp-2", at(0, 7), status="valid", user_id="u4"),
    click("a8", "imp-6", at(0, 8), status="expired", user_id="u5"),
    click("a9", "imp-7", at(0, 9), status="invalid", reason="head_request", user_id="u6"),
    click("a10", "imp-8", at(0, 10), status="invalid", reason="prefetch", user_id="u6"),
    click("a11", "imp-9", at(0, 11), status="invalid", reason="bot_user_agent"),
    click("a12", "imp-10", at(0, 12), status="invalid", reason="bot_user_agent"),
    click("a13", "imp-11", at(0, 13), status="invalid", reason=None),
    # ad-1, minute 1: u1 again, and a duplicate of a minute-0 impression.
    click("b1", "imp-12", at(1, 1), user_id="u1"),
    click("b2", "imp-3", at(1, 2), status="duplicate", fingerprint="fp-9"),
    # ad-2, minute 0: only a duplicate of an impression first clicked before the window.
    click("c1", "imp-20", at(0, 30), ad_id="ad-2", status="valid", user_id="u7"),
]
FACT_EARLIER = [click("c0", "imp-20", at(-2), ad_id="ad-2", user_id="u7")]


def cells(spark, clicks: list[dict], earlier: list[dict] = ()):
    return transform_minute_cells(label(spark, clicks, earlier=earlier))


@pytest.mark.spark
def test_minute_cells_hold_each_billed_user_once_and_the_clicks_that_bill_nobody_apart(spark):
    rows = cells(spark, FACT_CLICKS, earlier=FACT_EARLIER).collect()

    h = {name: xxhash64(spark, name) for name in ("u1", "u2", "fp-9")}
    # (minute, ad, user) -> billable, duplicate, expired, invalid
    got = {(r["minute_at"], r["ad_id"], r["user_hash"]): (r["billable_clicks"], r["duplicate_clicks"],
                                                          r["expired_clicks"], r["invalid_clicks"]) for r in rows}
    assert len(rows) == len(got)
    assert got == {
        (at(0), "ad-1", h["u1"]): (2, 0, 0, 0),
        (at(0), "ad-1", h["fp-9"]): (2, 0, 0, 0),
        (at(0), "ad-1", h["u2"]): (1, 0, 0, 0),
        (at(0), "ad-1", None): (0, 2, 1, 5),
        (at(1), "ad-1", h["u1"]): (1, 0, 0, 0),
        (at(1), "ad-1", None): (0, 1, 0, 0),
        (at(0), "ad-2", None): (0, 1, 0, 0),
    }


@pytest.mark.spark
def test_minute_facts_count_each_label_and_reason_per_minute_and_ad(spark):
    facts = transform_minute_facts(cells(spark, FACT_CLICKS, earlier=FACT_EARLIER))

    assert facts.columns == MINUTE_COLUMNS
    rows = sorted(tuple(row) for row in facts.collect())
    # minute_at, ad_id, advertiser_id, billable, duplicate, expired, invalid, head, prefetch, bot, unique_users
    assert rows == [
        (at(0), "ad-1", "adv-ad-1", 5, 2, 1, 5, 1, 1, 2, 3),
        (at(0), "ad-2", "adv-ad-2", 0, 1, 0, 0, 0, 0, 0, 0),
        (at(1), "ad-1", "adv-ad-1", 1, 1, 0, 0, 0, 0, 0, 1),
    ]


@pytest.mark.spark
def test_each_click_is_in_exactly_one_of_the_click_kinds(spark):
    facts = transform_minute_facts(cells(spark, FACT_CLICKS, earlier=FACT_EARLIER))

    # The job reports its raw click count as this sum over its output.
    assert sum(row[c] for row in facts.collect() for c in CLICK_KINDS) == len(FACT_CLICKS)


@pytest.mark.spark
def test_minute_facts_schema_uses_64_bit_counts(spark):
    facts = transform_minute_facts(cells(spark, FACT_CLICKS[:1]))

    types = dict(facts.dtypes)
    assert types["minute_at"] == "timestamp"
    assert {types[c] for c in MINUTE_COLUMNS[3:]} == {"bigint"}


@pytest.mark.spark
def test_minute_users_are_the_distinct_users_of_billable_clicks(spark):
    users = transform_minute_users(cells(spark, FACT_CLICKS, earlier=FACT_EARLIER))

    assert users.columns == USER_COLUMNS
    rows = [tuple(row) for row in users.collect()]
    assert len(rows) == len(set(rows))
    h = {name: xxhash64(spark, name) for name in ("u1", "u2", "fp-9")}
    assert set(rows) == {
        (at(0), "ad-1", h["u1"]),
        (at(0), "ad-1", h["fp-9"]),
        (at(0), "ad-1", h["u2"]),
        (at(1), "ad-1", h["u1"]),
    }


@pytest.mark.spark
def test_impressions_stamped_before_the_window_start_plus_the_clock_skew_may_have_earlier_clicks(spark):
    skew = timedelta(seconds=10)
    issued = [at(-30), at(0, -1), at(0), at(0, 9), at(0, 10), at(1)]
    frame = spark.createDataFrame([(moment,) for moment in issued], "issued_at timestamp")

    flagged = [row["issued_at"] for row in frame.where(may_have_clicks_before(T0, skew)).collect()]

    assert flagged == [at(-30), at(0, -1), at(0), at(0, 9)]
