"""The S3 dump layout, manifests and their checks, retention, and DumpStore on an in-memory S3."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from spark_jobs import raw_dumps
from spark_jobs.raw_dumps import DumpMismatch, DumpMissing, DumpStore, Manifest
from tests.spark_jobs.fake_s3 import FakeS3

H10 = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
BUCKET = "bucket"
HOUR = timedelta(hours=1)


def stats(rows=3, first=H10 + timedelta(minutes=1), last=H10 + timedelta(minutes=59, seconds=59), checksum="xxhash64-sum:42",
          issued=H10 - timedelta(minutes=7)):
    return {"rows": rows, "min_clicked_at": first, "max_clicked_at": last, "checksum": checksum, "min_issued_at": issued}


def run_files(hour: datetime, run_id: str, sizes=(10, 20)) -> dict[str, int]:
    prefix = raw_dumps.run_prefix("raw_clicks", hour, run_id)
    return {f"{prefix}part-{i:05d}.snappy.parquet": size for i, size in enumerate(sizes)} | {f"{prefix}_SUCCESS": 0}


def manifest(hour=H10, run_id="r1", **overrides) -> Manifest:
    return raw_dumps.build_manifest("raw_clicks", hour, run_id, run_files(hour, run_id), stats(**overrides),
                                    ["minute", "clicked_at"], datetime(2026, 1, 1, 12, tzinfo=timezone.utc))


# Hours and keys


def test_an_hour_lives_under_its_date_and_hour_and_each_run_under_its_own_prefix():
    assert raw_dumps.hour_prefix("raw_clicks", H10) == "raw_clicks/date=2026-01-01/hour=10/"
    assert raw_dumps.manifest_key("raw_clicks", H10) == "raw_clicks/date=2026-01-01/hour=10/_manifest.json"
    assert raw_dumps.run_prefix("raw_clicks", H10, "20260101T120000Z-ab12") == (
        "raw_clicks/date=2026-01-01/hour=10/run=20260101T120000Z-ab12/"
    )


def test_a_naive_hour_is_utc_and_an_offset_is_converted():
    plus_two = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))

    assert raw_dumps.hour_prefix("r", datetime(2026, 1, 1, 10)) == raw_dumps.hour_prefix("r", plus_two) == "r/date=2026-01-01/hour=10/"


def test_a_run_id_cannot_escape_its_prefix():
    with pytest.raises(ValueError, match="run id"):
        raw_dumps.run_prefix("raw_clicks", H10, "../other")


def test_hour_of_key_reads_the_hour_back_and_ignores_other_keys():
    assert raw_dumps.hour_of_key("raw_clicks/date=2026-01-01/hour=10/run=r1/part-0.parquet") == H10
    assert raw_dumps.hour_of_key("bench/raw_clicks/date=2026-01-01/hour=10/_manifest.json") == H10
    assert raw_dumps.hour_of_key("raw_clicks/date=2026-01-01/notes.txt") is None
    assert raw_dumps.hour_of_key("raw_clicks/xdate=2026-01-01/hour=10/a") is None


def test_hours_between_lists_whole_hours_and_refuses_unaligned_bounds():
    assert raw_dumps.hours_between(H10, H10 + 3 * HOUR) == [H10, H10 + HOUR, H10 + 2 * HOUR]
    assert raw_dumps.hours_between(H10, H10) == []
    with pytest.raises(ValueError, match="whole hours"):
        raw_dumps.hours_between(H10 + timedelta(minutes=30), H10 + 2 * HOUR)
    with pytest.raises(ValueError, match="not be before"):
        raw_dumps.hours_between(H10 + HOUR, H10)


@pytest.mark.parametrize(("horizon_s", "first"), [(3 * 3600, 7), (3600, 9), (5400, 8), (1, 9)])
def test_the_horizon_reaches_back_to_the_hour_holding_its_earliest_instant(horizon_s, first):
    assert raw_dumps.horizon_hours(H10, horizon_s) == [H10.replace(hour=h) for h in range(first, 10)]


# Manifests


def test_a_manifest_lists_only_the_runs_parquet_files_and_carries_the_stats():
    listed = run_files(H10, "r1") | run_files(H10, "r0", sizes=(99,))

    built = raw_dumps.build_manifest("raw_clicks", H10, "r1", listed, stats(), ["minute"], H10 + 2 * HOUR)

    assert built.data_prefix == "raw_clicks/date=2026-01-01/hour=10/run=r1/"
    assert built.files == (
        ("raw_clicks/date=2026-01-01/hour=10/run=r1/part-00000.snappy.parquet", 10),
        ("raw_clicks/date=2026-01-01/hour=10/run=r1/part-00001.snappy.parquet", 20),
    )
    assert (built.row_count, built.checksum, built.hour_end) == (3, "xxhash64-sum:42", H10 + HOUR)


def test_a_manifest_survives_its_json_round_trip():
    original = manifest()

    assert Manifest.from_json(original.to_json()) == original
    assert original.min_issued_at == H10 - timedelta(minutes=7)


def test_a_manifest_written_before_the_earliest_issue_time_was_recorded_still_reads():
    import json

    body = json.loads(manifest().to_json())
    del body["min_issued_at"]

    read = Manifest.from_json(json.dumps(body))

    assert read.min_issued_at is None
    assert read.row_count == 3


def test_an_empty_hour_has_a_manifest_with_no_click_times():
    empty = manifest(rows=0, first=None, last=None, checksum="xxhash64-sum:0", issued=None)

    assert Manifest.from_json(empty.to_json()).min_clicked_at is None
    assert Manifest.from_json(empty.to_json()).min_issued_at is None
    assert empty.row_count == 0


def test_a_run_without_parquet_files_has_no_manifest():
    with pytest.raises(DumpMismatch, match="no Parquet file"):
        raw_dumps.build_manifest("raw_clicks", H10, "r1", {"raw_clicks/date=2026-01-01/hour=10/run=r1/_SUCCESS": 0},
                                 stats(), [], H10)


def test_a_click_outside_the_hour_refuses_the_manifest():
    with pytest.raises(DumpMismatch, match="outside the hour"):
        manifest(last=H10 + HOUR)


def test_an_unknown_manifest_version_is_refused():
    with pytest.raises(ValueError, match="version"):
        Manifest.from_json(manifest().to_json().replace('"version": 1', '"version": 9'))


def test_file_problems_names_a_missing_a_resized_and_an_extra_file():
    m = manifest()
    (first, _), (second, size) = m.files
    listed = {second: size + 1, m.data_prefix + "part-9.parquet": 5, m.data_prefix + "_SUCCESS": 0}

    problems = raw_dumps.file_problems(m, listed)

    assert problems == [
        f"{first} is missing",
        f"{second} has {size + 1} bytes, the manifest says {size}",
        f"1 Parquet files not in the manifest, e.g. {m.data_prefix}part-9.parquet",
    ]
    assert raw_dumps.file_problems(m, dict(m.files)) == []


def test_content_problems_compares_rows_and_checksum():
    m = manifest()

    assert raw_dumps.content_problems(m, 3, "xxhash64-sum:42") == []
    assert raw_dumps.content_problems(m, 2, "xxhash64-sum:41") == [
        "row count 2 != manifest 3", "checksum xxhash64-sum:41 != manifest xxhash64-sum:42",
    ]
    assert raw_dumps.content_problems(m, 3, None) == []


# Retention


NOW = datetime(2026, 2, 10, 12, 30, tzinfo=timezone.utc)


def test_an_hour_expires_once_it_ended_the_retention_before_now():
    retention = 10 * 86400  # cutoff 2026-01-31 12:30
    hours = [datetime(2026, 1, 31, h, tzinfo=timezone.utc) for h in (13, 12, 11, 10)]

    assert raw_dumps.expired_hours(hours, NOW, retention) == [hours[3], hours[2]]
    assert raw_dumps.expired_hours(hours, NOW + timedelta(minutes=30), retention) == [hours[3], hours[2], hours[1]]


def test_dates_split_into_wholly_and_partly_expired():
    whole, partial = raw_dumps.expired_dates(["2026-01-31", "2026-01-29", "2026-01-30", "2026-02-01"], NOW, 10 * 86400)

    assert (whole, partial) == (["2026-01-29", "2026-01-30"], ["2026-01-31"])


# DumpStore on an in-memory S3


@pytest.fixture
def s3() -> FakeS3:
    return FakeS3()


@pytest.fixture
def store(s3) -> DumpStore:
    return DumpStore(s3, BUCKET)


def write_run(s3: FakeS3, hour: datetime, run_id: str) -> Manifest:
    """Put a run's files where Spark would, and return the manifest the dump job would build."""
    for key in run_files(hour, run_id, sizes=(3, 4)):
        s3.put(BUCKET, key, b"abc" if "part-00000" in key else b"abcd" if "part-00001" in key else b"")
    listed = {k: len(s3.objects[(BUCKET, k)]) for k in s3.keys(BUCKET) if k.startswith(raw_dumps.run_prefix("raw_clicks", hour, run_id))}
    clicks = stats(first=hour + timedelta(minutes=1), last=hour + timedelta(minutes=2))
    return raw_dumps.build_manifest("raw_clicks", hour, run_id, listed, clicks, ["minute"], hour + 2 * HOUR)


def test_publishing_puts_the_manifest_then_deletes_the_hours_other_runs(s3, store):
    store.publish(write_run(s3, H10, "r0"))
    s3.put(BUCKET, raw_dumps.run_prefix("raw_clicks", H10, "crashed") + "part-00000.parquet")
    other_hour = write_run(s3, H10 + HOUR, "r0")
    store.publish(other_hour)
    s3.calls.clear()

    newer = write_run(s3, H10, "r1")
    store.publish(newer)

    assert s3.calls[0] == ("put", "raw_clicks/date=2026-01-01/hour=10/_manifest.json")
    assert {key for _, key in s3.calls[1:]} == {
        "raw_clicks/date=2026-01-01/hour=10/run=r0/part-00000.snappy.parquet",
        "raw_clicks/date=2026-01-01/hour=10/run=r0/part-00001.snappy.parquet",
        "raw_clicks/date=2026-01-01/hour=10/run=r0/_SUCCESS",
        "raw_clicks/date=2026-01-01/hour=10/run=crashed/part-00000.parquet",
    }
    assert store.require_manifest(H10) == newer
    store.check_files(newer)
    assert store.require_manifest(H10 + HOUR) == other_hour


def test_a_missing_manifest_is_a_missing_dump_whatever_data_lies_there(s3, store):
    write_run(s3, H10, "r1")  # data written, manifest never published: a crashed run

    assert store.read_manifest(H10) is None
    with pytest.raises(DumpMissing, match=r"no dump of raw clicks for the hour 2026-01-01T10:00:00\+00:00.*DUMP_RETENTION_S"):
        store.require_manifest(H10)


def test_check_files_fails_when_a_file_of_the_manifest_is_gone(s3, store):
    published = write_run(s3, H10, "r1")
    store.publish(published)
    del s3.objects[(BUCKET, published.files[0][0])]

    with pytest.raises(DumpMismatch, match="is missing"):
        store.check_files(published)


def test_a_manifest_of_another_hour_is_refused(s3, store):
    s3.put(BUCKET, raw_dumps.manifest_key("raw_clicks", H10), write_run(s3, H10 + HOUR, "r1").to_json().encode())

    with pytest.raises(DumpMismatch, match="describes 2026-01-01T11:00"):
        store.require_manifest(H10)


def test_retention_deletes_expired_hours_manifest_first_and_keeps_the_rest(s3, store):
    hours = [datetime(2026, 1, 29, 23, tzinfo=timezone.utc), datetime(2026, 1, 31, 11, tzinfo=timezone.utc),
             datetime(2026, 1, 31, 12, tzinfo=timezone.utc), datetime(2026, 2, 9, 0, tzinfo=timezone.utc)]
    for hour in hours:
        store.publish(write_run(s3, hour, "r1"))
    s3.calls.clear()

    result = store.delete_expired(NOW, 10 * 86400)

    assert result["hours_deleted"] == [hours[0].isoformat(), hours[1].isoformat()]
    assert result["objects_deleted"] == 8
    assert {raw_dumps.hour_of_key(k) for k in s3.keys(BUCKET)} == set(hours[2:])
    for hour in hours[:2]:
        deletes = [key for op, key in s3.calls if op == "delete" and key.startswith(raw_dumps.hour_prefix("raw_clicks", hour))]
        assert deletes[0] == raw_dumps.manifest_key("raw_clicks", hour)
        assert len(deletes) == 4


def test_retention_with_nothing_expired_deletes_nothing(s3, store):
    store.publish(write_run(s3, H10, "r1"))
    before = s3.keys(BUCKET)

    result = store.delete_expired(H10 + 2 * HOUR, 400 * 86400)

    assert (result["hours_deleted"], result["objects_deleted"]) == ([], 0)
    assert s3.keys(BUCKET) == before


def test_the_dump_jobs_extra_hours_are_whole_hours_and_may_be_none():
    import argparse

    from spark_jobs.dump_raw_clicks import parse_hours

    assert parse_hours("") == []
    assert parse_hours("2026-01-01T05:00:00+00:00,2026-01-01T07:00Z") == [H10 - 5 * HOUR, H10 - 3 * HOUR]
    with pytest.raises(argparse.ArgumentTypeError, match="not the start of an hour"):
        parse_hours("2026-01-01T05:30Z")
