"""The dump's statistics and the reconciliation's transforms, on a few inline rows (local Spark, no services)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from spark_jobs import raw_dumps
from spark_jobs.dump_raw_clicks import DUMP_COLUMNS, dump_metrics, earliest_issue_metric, stats_of
from spark_jobs.fct_clicks_minute import transform_billable, transform_minute_facts
from spark_jobs.reconcile_clicks import (
    IMPRESSION_COLUMNS,
    earliest_issue,
    earliest_of,
    hour_cells,
    hour_figures,
    hours_reached,
    transform_recompute_inputs,
    verify,
)

pytestmark = pytest.mark.spark

H10 = datetime(2026, 1, 1, 10, 0)
HORIZON_S = 3 * 3600
SKEW = timedelta(seconds=10)


def at(minutes: int, seconds: int = 0) -> datetime:
    return H10 + timedelta(minutes=minutes, seconds=seconds)


def dumped(click_id: str, impression_id: str, clicked_at: datetime, status: str = "valid", ad_id: str = "ad-1",
           user_id: str | None = None, stored_after: timedelta = timedelta(seconds=1),
           issued_at: datetime | None = None) -> tuple:
    """A raw_clicks row as the dump holds it (every column); issued a minute before the click unless said."""
    row = {
        "minute": clicked_at.replace(second=0, microsecond=0), "shard": 3, "impression_id": impression_id,
        "click_id": click_id, "ad_id": ad_id, "advertiser_id": "adv-" + ad_id, "clicked_at": clicked_at,
        "issued_at": issued_at or clicked_at - timedelta(minutes=1), "stored_at": clicked_at + stored_after,
        "user_id": user_id or "u-" + click_id, "fingerprint": "fp", "referrer": None, "status": status, "reason": None,
    }
    return tuple(row[c] for c in DUMP_COLUMNS)


def dump_df(spark, rows: list[tuple]):
    from pyspark.sql import types as T

    kinds = {"minute": T.TimestampType(), "clicked_at": T.TimestampType(), "issued_at": T.TimestampType(),
             "stored_at": T.TimestampType(), "shard": T.ShortType()}
    schema = T.StructType([T.StructField(c, kinds.get(c, T.StringType())) for c in DUMP_COLUMNS])
    return spark.createDataFrame(rows, schema)


def recompute(spark, hour_rows: list[tuple], earlier_rows: list[tuple], horizon_s: int = HORIZON_S):
    earlier = dump_df(spark, earlier_rows).select(*IMPRESSION_COLUMNS)
    clicks, impression_clicks = transform_recompute_inputs(dump_df(spark, hour_rows), earlier, H10, horizon_s, SKEW)
    return transform_billable(clicks, impression_clicks)


def figures(labelled, late_after_s: int) -> tuple[dict, dict]:
    return hour_figures(hour_cells(labelled, late_after_s))


def billable_by_click(labelled) -> dict[str, bool]:
    return {row["click_id"]: row["is_billable"] for row in labelled.collect()}


# The dump's row statistics


def metrics(df, *extra) -> dict:
    return stats_of(df.agg(*dump_metrics(), *extra).first().asDict())


def test_the_checksum_does_not_depend_on_row_order_or_partitioning(spark):
    rows = [dumped(f"c{i}", f"imp-{i}", at(i)) for i in range(6)]

    forward = metrics(dump_df(spark, rows))
    shuffled = metrics(dump_df(spark, rows[::-1]).repartition(3))

    assert forward == shuffled
    assert forward["rows"] == 6
    assert forward["checksum"].startswith("xxhash64-sum:") and forward["checksum"] != "xxhash64-sum:0"


def test_the_checksum_changes_when_any_value_changes_or_a_row_goes(spark):
    rows = [dumped(f"c{i}", f"imp-{i}", at(i)) for i in range(3)]
    changed = [*rows[:2], dumped("c2", "imp-2", at(2), status="duplicate")]

    checksums = {metrics(dump_df(spark, r))["checksum"] for r in (rows, changed, rows[:2])}

    assert len(checksums) == 3


def test_the_stats_carry_the_first_and_last_click_in_utc(spark):
    stats = metrics(dump_df(spark, [dumped("c1", "imp-1", at(5, 7)), dumped("c2", "imp-2", at(59, 59))]),
                    earliest_issue_metric())

    assert stats["min_clicked_at"] == at(5, 7).replace(tzinfo=timezone.utc)
    assert stats["max_clicked_at"] == at(59, 59).replace(tzinfo=timezone.utc)
    assert stats["min_issued_at"] == at(4, 7).replace(tzinfo=timezone.utc)  # issued a minute before its click


def test_an_empty_hour_has_zero_rows_no_click_times_and_a_zero_checksum(spark):
    assert metrics(dump_df(spark, []), earliest_issue_metric()) == {
        "rows": 0, "min_clicked_at": None, "max_clicked_at": None, "min_issued_at": None, "checksum": "xxhash64-sum:0"}


# Deduplication across the horizon


def test_a_repeat_of_an_earlier_hours_impression_is_not_billed_again(spark):
    earlier = [dumped("c-first", "imp-1", at(-10)), dumped("c-other", "imp-9", at(-20))]
    hour = [dumped("c-repeat", "imp-1", at(5), issued_at=at(-11)), dumped("c-new", "imp-2", at(6))]

    assert billable_by_click(recompute(spark, hour, earlier)) == {"c-repeat": False, "c-new": True}


def test_only_the_hours_impressions_issued_before_it_are_looked_up_in_the_earlier_dumps(spark):
    earlier = [dumped("c-first", "imp-1", at(-10)), dumped("c-other", "imp-9", at(-20)),
               dumped("c-expired", "imp-1", at(-5), status="expired", issued_at=at(-11)),
               dumped("c-within", "imp-2", at(-1))]
    hour = [dumped("c-repeat", "imp-1", at(5), issued_at=at(-11)),
            dumped("c-issued-late", "imp-2", at(5))]  # issued at 10:04: an earlier click of it is impossible
    clicks, impression_clicks = transform_recompute_inputs(
        dump_df(spark, hour), dump_df(spark, earlier).select(*IMPRESSION_COLUMNS), H10, HORIZON_S, SKEW,
    )

    assert [(r["impression_id"], r["click_id"]) for r in impression_clicks.collect()] == [("imp-1", "c-first")]
    assert impression_clicks.columns == IMPRESSION_COLUMNS
    assert sorted(r["click_id"] for r in clicks.collect()) == ["c-issued-late", "c-repeat"]


def test_a_repeat_of_an_impression_issued_just_before_the_hour_is_not_billed_again(spark):
    earlier = [dumped("c-first", "imp-1", at(0, -20), issued_at=at(0, -30))]
    hour = [dumped("c-repeat", "imp-1", at(0, 15), issued_at=at(0, -30))]

    assert billable_by_click(recompute(spark, hour, earlier)) == {"c-repeat": False}


def test_an_impression_stamped_within_the_clock_skew_after_the_hour_began_is_looked_up(spark):
    # The minting server's clock ran 8 s ahead: the impression really was issued, and clicked, before 10:00.
    earlier = [dumped("c-first", "imp-1", at(0, -2), issued_at=at(0, 5))]
    hour = [dumped("c-repeat", "imp-1", at(0, 20), issued_at=at(0, 5))]

    assert billable_by_click(recompute(spark, hour, earlier)) == {"c-repeat": False}


def manifest_of(hour_start: datetime, rows: int = 0, min_issued_at: datetime | None = None) -> raw_dumps.Manifest:
    start = hour_start.replace(tzinfo=timezone.utc)
    return raw_dumps.Manifest(start, "r1", "p", (), rows, None, None, "", tuple(DUMP_COLUMNS), start, min_issued_at)


def test_only_the_earlier_hours_after_the_earliest_issue_time_are_read():
    horizon = [manifest_of(H10 - timedelta(hours=n)) for n in (3, 2, 1)]
    utc = timezone.utc

    def reached(earliest):
        return [m.hour_start.hour for m in hours_reached(horizon, earliest, SKEW)]

    assert reached(None) == []
    assert reached(at(-20).replace(tzinfo=utc)) == [9]
    assert reached(at(-60).replace(tzinfo=utc)) == [8, 9]  # its clicks may come 10 s before 09:00, by the skew
    assert reached(at(-60, 10).replace(tzinfo=utc)) == [9]
    assert reached(at(-500).replace(tzinfo=utc)) == [7, 8, 9]


def test_the_earliest_issue_time_is_of_the_impressions_that_may_have_earlier_clicks(spark):
    hour = [dumped("c1", "imp-1", at(5), issued_at=at(-42, 30)), dumped("c2", "imp-2", at(6), issued_at=at(-3)),
            dumped("c3", "imp-3", at(7), issued_at=at(2))]

    assert earliest_issue(dump_df(spark, hour), H10, SKEW) == at(-42, 30).replace(tzinfo=timezone.utc)
    assert earliest_issue(dump_df(spark, hour[2:]), H10, SKEW) is None


def test_the_manifests_earliest_issue_time_reaches_the_same_hours_as_a_pass_over_the_dump(spark):
    horizon = [manifest_of(H10 - timedelta(hours=n)) for n in (3, 2, 1)]
    utc = timezone.utc
    hours = [
        [dumped("c1", "imp-1", at(5), issued_at=at(-42, 30)), dumped("c2", "imp-2", at(6), issued_at=at(2))],
        [dumped("c1", "imp-1", at(5), issued_at=at(-130)), dumped("c2", "imp-2", at(6), issued_at=at(-3))],
        [dumped("c1", "imp-1", at(5), issued_at=at(0, 5)), dumped("c2", "imp-2", at(6), issued_at=at(2))],  # within the skew
        [dumped("c1", "imp-1", at(5), issued_at=at(0, 30)), dumped("c2", "imp-2", at(6), issued_at=at(2))],  # none before
    ]
    for rows in hours:
        df = dump_df(spark, rows)
        recorded = manifest_of(H10, len(rows), metrics(df, earliest_issue_metric())["min_issued_at"])
        assert (hours_reached(horizon, earliest_of(recorded, None, SKEW), SKEW)
                == hours_reached(horizon, earliest_issue(df, H10, SKEW), SKEW))
    assert [m.hour_start.hour for m in hours_reached(horizon, at(-130).replace(tzinfo=utc), SKEW)] == [7, 8, 9]


def test_a_manifest_without_the_earliest_issue_time_is_measured_on_the_dump(spark):
    rows = [dumped("c1", "imp-1", at(5), issued_at=at(-42, 30)), dumped("c2", "imp-2", at(6), issued_at=at(2))]

    assert earliest_of(manifest_of(H10, rows=2), dump_df(spark, rows), SKEW) == at(-42, 30).replace(tzinfo=timezone.utc)
    assert earliest_of(manifest_of(H10, rows=0), None, SKEW) is None  # an empty hour reads nothing


def test_an_earlier_click_beyond_the_horizon_is_not_looked_at(spark):
    beyond = [dumped("c-first", "imp-1", at(-3 * 60 - 1))]
    repeat = dumped("c-repeat", "imp-1", at(5), issued_at=at(-3 * 60 - 2))

    assert billable_by_click(recompute(spark, [repeat], beyond)) == {"c-repeat": True}


def test_a_repeat_labelled_valid_within_the_hour_is_billed_once(spark):
    hour = [dumped("c-b", "imp-1", at(3, 30)), dumped("c-a", "imp-1", at(3, 10))]

    assert billable_by_click(recompute(spark, hour, [])) == {"c-a": True, "c-b": False}


def test_the_minute_facts_of_a_recompute(spark):
    earlier = [dumped("c-first", "imp-1", at(-10), user_id="u1")]
    hour = [
        dumped("c-repeat", "imp-1", at(5, 1), user_id="u1", issued_at=at(-11)),
        dumped("c-x", "imp-2", at(5, 2), user_id="u2"),
        dumped("c-y", "imp-3", at(5, 3), user_id="u2"),
        dumped("c-z", "imp-4", at(6), status="expired"),
    ]

    facts = transform_minute_facts(hour_cells(recompute(spark, hour, earlier), 680))

    got = {(r["minute_at"], r["ad_id"]): (r["billable_clicks"], r["duplicate_clicks"], r["expired_clicks"], r["unique_users"])
           for r in facts.collect()}
    assert got == {(at(5), "ad-1"): (2, 1, 0, 1), (at(6), "ad-1"): (0, 0, 1, 0)}


# Late clicks


def test_clicks_stored_after_every_minute_rollup_are_counted_as_late(spark):
    late_after_s = 60 + 600 + 20
    hour = [
        dumped("c-on-time", "imp-1", at(1), stored_after=timedelta(seconds=2)),
        dumped("c-late", "imp-2", at(2), stored_after=timedelta(minutes=30)),
        dumped("c-late-repeat", "imp-2", at(2, 5), status="duplicate", stored_after=timedelta(minutes=30)),
        # Stored 679 s after its minute began: the last rollup covering it still saw it.
        dumped("c-just-in-time", "imp-3", at(3, 59), stored_after=timedelta(seconds=late_after_s - 59 - 1)),
    ]

    _, late = figures(recompute(spark, hour, []), late_after_s)

    assert late == {"late_clicks": 2, "late_billable_clicks": 1}


def test_an_hour_without_clicks_has_no_late_clicks_and_the_statistics_of_an_empty_dump(spark):
    stats, late = figures(recompute(spark, [], []), 680)

    assert late == {"late_clicks": 0, "late_billable_clicks": 0}
    assert stats == {"rows": 0, "checksum": metrics(dump_df(spark, []))["checksum"]}


# Checking the dumps read back against their manifests


class LocalDumps:
    """DumpStore's URL scheme for files on the local disk (unit tests only)."""

    def url(self, key: str, scheme: str = "s3") -> str:
        return key


def local_dump(spark, folder, hour: datetime, clicks: list[tuple], **stat_overrides):
    """Write clicks as the dump job would, to a local folder; return (DataFrame read back, its manifest)."""
    dump_df(spark, clicks).coalesce(1).write.parquet(str(folder))
    files = {str(f): f.stat().st_size for f in folder.glob("*.parquet")}
    read_back = spark.read.parquet(*files)
    stats = metrics(read_back) | stat_overrides
    manifest = raw_dumps.Manifest(hour.replace(tzinfo=timezone.utc), "r1", str(folder), tuple(files.items()), stats["rows"],
                                  stats["min_clicked_at"], stats["max_clicked_at"], stats["checksum"], tuple(DUMP_COLUMNS),
                                  hour.replace(tzinfo=timezone.utc), stats["min_issued_at"])
    return read_back, manifest


def test_the_labelled_rows_give_the_dumps_own_statistics(spark):
    hour_rows = [dumped("c1", "imp-1", at(1)), dumped("c2", "imp-1", at(2), status="duplicate"),
                 dumped("c3", "imp-old", at(3), issued_at=at(-90)), dumped("c4", "imp-4", at(59, 59), user_id="u-x")]
    earlier_rows = [dumped("c0", "imp-old", at(-80))]

    labelled = recompute(spark, hour_rows, earlier_rows)

    stats, _ = figures(labelled, 680)
    dumped_stats = metrics(dump_df(spark, hour_rows))
    assert stats == {"rows": dumped_stats["rows"], "checksum": dumped_stats["checksum"]}
    assert labelled.count() == len(hour_rows)


def test_verify_accepts_dumps_that_match_their_manifests(spark, tmp_path):
    hour_clicks, hour = local_dump(spark, tmp_path / "h10", H10, [dumped("c1", "imp-1", at(1)), dumped("c2", "imp-2", at(2))])
    _, earlier = local_dump(spark, tmp_path / "h09", H10 - timedelta(hours=1), [dumped("c0", "imp-0", at(-30))])

    # Raises DumpMismatch on any difference (the tests below); these dumps have none.
    verify(spark, LocalDumps(), hour, metrics(hour_clicks), [earlier])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"checksum": "xxhash64-sum:1"}, "checksum xxhash64-sum:"), ({"rows": 3}, "row count 2 != manifest 3")],
    ids=["checksum", "row-count"],
)
def test_verify_fails_on_a_dump_whose_rows_differ_from_its_manifest(spark, tmp_path, overrides, message):
    hour_clicks, hour = local_dump(spark, tmp_path / "h10", H10, [dumped("c1", "imp-1", at(1)), dumped("c2", "imp-2", at(2))],
                                   **overrides)

    with pytest.raises(raw_dumps.DumpMismatch, match=f"2026-01-01T10:00:00\\+00:00: {message}"):
        verify(spark, LocalDumps(), hour, metrics(hour_clicks), [])


def test_verify_fails_when_an_earlier_hour_lost_rows(spark, tmp_path):
    hour_clicks, hour = local_dump(spark, tmp_path / "h10", H10, [dumped("c1", "imp-1", at(1))])
    _, earlier = local_dump(spark, tmp_path / "h09", H10 - timedelta(hours=1), [dumped("c0", "imp-0", at(-30))], rows=5)

    with pytest.raises(raw_dumps.DumpMismatch, match="2026-01-01T09:00:00\\+00:00: row count 1 != manifest 5"):
        verify(spark, LocalDumps(), hour, metrics(hour_clicks), [earlier])
