"""Recompute one hour's minute facts from the S3 dumps, for the warehouse to compare and repair.

    spark-submit spark_jobs/reconcile_clicks.py --start 2026-01-01T10:00 --end 2026-01-01T11:00 \
        --output /path/to/staging/reconcile_clicks/20260101T10

Reads the hour's dump in full, checks it against its manifest (row count and checksum), and from
the dumps of the hours before it within the duplicate horizon (RECONCILE_DUPLICATE_HORIZON_S)
reads only the columns that decide billing, so a repeat of an earlier hour's impression is not
billed again. Of those hours, only the ones after the earliest issue time of the hour's
impressions are read: no click of them can be older. Labels and aggregates with the minute
rollup's own transforms and writes the same two Parquet datasets (``minute``, ``users``) plus
``summary.json``: the dump's statistics and the clicks that reached Cassandra too late for any
minute rollup (after ROLLUP_LOOKBACK_S and ROLLUP_LATENESS_S), which this recompute counts in
their own minute.

A missing dump, or one that does not match its manifest, fails the job with a message saying so
(also written to ``<output>/_FAILED``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from click_api.windows import Windows
from spark_jobs import raw_dumps
from spark_jobs.dump_raw_clicks import DUMP_COLUMNS, checksum_text, row_hash
from spark_jobs.fct_clicks_minute import (
    DUPLICATE,
    VALID,
    load,
    may_have_clicks_before,
    transform_billable,
    transform_minute_cells,
    transform_minute_facts,
    transform_minute_users,
)
from spark_jobs.session import build_session, window_parser

# What transform_billable needs of an impression's other clicks.
IMPRESSION_COLUMNS = ["impression_id", "clicked_at", "click_id", "status"]
IMPRESSION_SCHEMA = T.StructType([
    T.StructField("impression_id", T.StringType()), T.StructField("clicked_at", T.TimestampType()),
    T.StructField("click_id", T.StringType()), T.StructField("status", T.StringType()),
])
# Each hour row's row_hash(), carried through the labelling so the checksum needs no pass of its own.
ROW_HASH = "_row_hash"
LATE_COUNTS = ("late_clicks", "late_billable_clicks")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def read_dump(spark: SparkSession, store: raw_dumps.DumpStore, manifest: raw_dumps.Manifest) -> DataFrame:
    """Exactly the files the manifest lists (never whatever else lies under the hour)."""
    return spark.read.parquet(*[store.url(key, "s3a") for key, _ in manifest.files])


def earliest_issue(hour_clicks: DataFrame, hour_start: datetime, clock_skew: timedelta) -> datetime | None:
    """The earliest issue time (UTC) of the hour's impressions that may have been clicked before it;
    None when there are none. One pass over the hour's issued_at column."""
    row = hour_clicks.where(may_have_clicks_before(hour_start, clock_skew)).agg(
        F.unix_micros(F.min("issued_at")).alias("micros")).first()
    return None if row["micros"] is None else EPOCH + timedelta(microseconds=row["micros"])


def earliest_of(hour: raw_dumps.Manifest, hour_clicks: DataFrame, clock_skew: timedelta) -> datetime | None:
    """The earliest issue time for hours_reached(): the one the hour's manifest recorded or, for a
    manifest written before it was recorded, earliest_issue() (one pass over the dump)."""
    if hour.min_issued_at is not None or hour.row_count == 0:
        return hour.min_issued_at
    return earliest_issue(hour_clicks, hour.hour_start, clock_skew)


def hours_reached(earlier: list[raw_dumps.Manifest], earliest: datetime | None,
                  clock_skew: timedelta) -> list[raw_dumps.Manifest]:
    """The earlier hours that can hold a click of an impression issued at ``earliest`` or later.

    A click comes after its impression was issued, and the issue time may run ahead of the click
    server's clock by ``clock_skew``. The hours of the horizon ending before that are not read:
    with impressions clicked within minutes, as most are, only the hour before is.

    ``earliest`` may be the earliest issue time of all the hour's impressions or only of those
    issued before the hour's start plus ``clock_skew``: the two give the same hours. Whenever such
    an impression exists, the earliest of all is one of them; when none does, the earliest of all
    is at or after that start, and no earlier hour ends after it.
    """
    if earliest is None:
        return []
    return [manifest for manifest in earlier if manifest.hour_end > earliest - clock_skew]


def extract_earlier(spark: SparkSession, store: raw_dumps.DumpStore, earlier: list[raw_dumps.Manifest]) -> DataFrame:
    """The billing columns of the earlier hours' dumps."""
    earlier_clicks = spark.createDataFrame([], IMPRESSION_SCHEMA)
    for manifest in earlier:
        earlier_clicks = earlier_clicks.unionByName(read_dump(spark, store, manifest).select(*IMPRESSION_COLUMNS))
    return earlier_clicks


def hour_cells(labelled: DataFrame, late_after_s: int) -> DataFrame:
    """transform_minute_cells() of the hour, each cell also carrying its part of the hour's checks:
    its rows, the sum of their ROW_HASH, and its late clicks (late_metrics()). hour_figures() adds
    them up, so the hour is read once for both."""
    row_hash_column = F.col(ROW_HASH)
    return transform_minute_cells(
        labelled,
        F.count(F.lit(1)).alias("_rows"),
        # The 64-bit hashes summed as two 32-bit halves in 64-bit sums: exact up to 2^31 rows an hour.
        F.sum(F.shiftright(row_hash_column, 32)).alias("_hash_high_sum"),
        F.sum(row_hash_column.bitwiseAND(F.lit(0xFFFFFFFF))).alias("_hash_low_sum"),
        *late_metrics(late_after_s),
    )


def hour_figures(cells: DataFrame) -> tuple[dict, dict]:
    """The hour's row count and checksum, as its manifest records them, and its late-click counts,
    added up over hour_cells(): exact however often Spark ran a stage to build the cells."""
    names = ("_rows", "_hash_high_sum", "_hash_low_sum", *LATE_COUNTS)
    sums = cells.agg(*[F.coalesce(F.sum(name), F.lit(0)).alias(name) for name in names]).first()
    checksum = checksum_text((sums["_hash_high_sum"] << 32) + sums["_hash_low_sum"])
    return {"rows": sums["_rows"], "checksum": checksum}, {name: sums[name] for name in LATE_COUNTS}


def verify(spark: SparkSession, store: raw_dumps.DumpStore, hour: raw_dumps.Manifest, stats: dict,
           earlier: list[raw_dumps.Manifest]) -> dict:
    """Raise DumpMismatch unless the hour's ``stats`` match its manifest's row count and checksum, and
    each earlier hour its row count (their checksums were checked when they were reconciled)."""
    problems = [f"{hour.hour_start.isoformat()}: {p}" for p in raw_dumps.content_problems(hour, stats["rows"], stats["checksum"])]
    for manifest in earlier:
        rows = read_dump(spark, store, manifest).count()
        problems += [f"{manifest.hour_start.isoformat()}: {p}" for p in raw_dumps.content_problems(manifest, rows, None)]
    if problems:
        raise raw_dumps.DumpMismatch("a dump does not match its manifest: " + "; ".join(problems))
    return stats


def transform_recompute_inputs(hour_clicks: DataFrame, earlier_clicks: DataFrame, hour_start: datetime, horizon_s: int,
                               clock_skew: timedelta):
    """transform_billable's inputs: the hour's clicks, and the earlier clicks (within the horizon) of
    its impressions that were issued before the hour.

    As in the minute rollup, an impression issued inside the hour has no click before it, so only
    the few issued earlier are looked up in the earlier hours' dumps, and only their billable kinds.
    The hour's clicks carry their row_hash() (ROW_HASH) for hour_cells.
    """
    clicks = hour_clicks.select(*DUMP_COLUMNS).withColumn(ROW_HASH, row_hash())
    clicked_at = F.col("clicked_at")
    is_in_horizon = (clicked_at >= F.lit(hour_start - timedelta(seconds=horizon_s))) & (clicked_at < F.lit(hour_start))
    is_eligible = F.col("status").isin(VALID, DUPLICATE)
    looked_up = clicks.where(may_have_clicks_before(hour_start, clock_skew)).select("impression_id").distinct()
    impression_clicks = (
        earlier_clicks.where(is_in_horizon & is_eligible)
        .join(looked_up, on="impression_id", how="left_semi")
        .select(*IMPRESSION_COLUMNS)
    )
    return clicks, impression_clicks


def late_metrics(late_after_s: int) -> list[Column]:
    """The clicks stored more than ``late_after_s`` after their minute began, and how many are billable."""
    delay_us = F.unix_micros(F.col("stored_at")) - F.unix_micros(F.col("minute"))
    is_late = F.coalesce(delay_us > F.lit(late_after_s * 1_000_000), F.lit(False))
    return [
        F.sum(F.when(is_late, 1).otherwise(0)).cast("long").alias("late_clicks"),
        F.sum(F.when(is_late & F.col("is_billable"), 1).otherwise(0)).cast("long").alias("late_billable_clicks"),
    ]


def _write_local(output: str, name: str, text: str) -> None:
    if "://" not in output:
        Path(output).mkdir(parents=True, exist_ok=True)
        (Path(output) / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = window_parser(__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder for the Parquet output, read by the warehouse")
    parser.add_argument("--bucket", default=os.environ.get("S3_BUCKET", "clickagg-raw"))
    parser.add_argument("--root", default=raw_dumps.ROOT, help="key prefix of the dumps in the bucket")
    parser.add_argument("--horizon-s", type=int, default=int(os.environ.get("RECONCILE_DUPLICATE_HORIZON_S", "10800")))
    parser.add_argument("--late-after-s", type=int,
                        default=Windows.from_env(os.environ).late_after,
                        help="a click stored this long after its minute began missed every minute rollup")
    parser.add_argument("--master", help="Spark master when not run by spark-submit, e.g. local[2]")
    args = parser.parse_args(argv)
    if raw_dumps.hours_between(args.start, args.end) != [args.start]:
        parser.error("--start and --end must be one whole hour")
    started = time.monotonic()
    if "://" not in args.output:
        shutil.rmtree(args.output, ignore_errors=True)  # no summary or _FAILED of an earlier run survives

    store = raw_dumps.DumpStore(raw_dumps.s3_client(os.environ), args.bucket, args.root)
    try:
        hour = store.require_manifest(args.start)
        horizon = [store.require_manifest(h) for h in raw_dumps.horizon_hours(args.start, args.horizon_s)]
        for manifest in [*horizon, hour]:
            store.check_files(manifest)
    except (raw_dumps.DumpMissing, raw_dumps.DumpMismatch) as error:
        return _fail(args.output, error)

    clock_skew = timedelta(seconds=args.clock_skew_s)
    spark = build_session("reconcile_clicks", os.environ, args.master)
    try:
        hour_clicks = read_dump(spark, store, hour)
        earlier = hours_reached(horizon, earliest_of(hour, hour_clicks, clock_skew), clock_skew)
        earlier_clicks = extract_earlier(spark, store, earlier)
        clicks, impression_clicks = transform_recompute_inputs(hour_clicks, earlier_clicks, args.start, args.horizon_s,
                                                               clock_skew)
        # The hour is read once: its checks are counted into the cells with its clicks, and they
        # pass before anything is written.
        cells = hour_cells(transform_billable(clicks, impression_clicks), args.late_after_s)
        cells = cells.persist(StorageLevel.MEMORY_AND_DISK)
        stats, late = hour_figures(cells)
        try:
            verify(spark, store, hour, stats, earlier)
        except raw_dumps.DumpMismatch as error:
            return _fail(args.output, error)
        load(transform_minute_facts(cells), transform_minute_users(cells), args.output)
        summary = {
            "hour": args.start.isoformat(),
            "rows": hour.row_count,
            "horizon_hours": [m.hour_start.isoformat() for m in horizon],
            "earlier_hours": [m.hour_start.isoformat() for m in earlier],  # those of the horizon read
            "earlier_rows": sum(m.row_count for m in earlier),
            "dump_run_id": hour.run_id,
            "checksum": hour.checksum,
            "late_after_s": args.late_after_s,
            "late_clicks": late["late_clicks"],
            "late_billable_clicks": late["late_billable_clicks"],
            "recompute_seconds": round(time.monotonic() - started, 3),
            "output": args.output,
        }
        _write_local(args.output, "summary.json", json.dumps(summary))
        print("reconcile_clicks " + json.dumps(summary), flush=True)
    finally:
        spark.stop()
    return 0


def _fail(output: str, error: Exception) -> int:
    message = f"{type(error).__name__}: {error}"
    _write_local(output, "_FAILED", message)
    print(f"reconcile_clicks FAILED {message}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
