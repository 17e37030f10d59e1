"""Dump closed hours of raw clicks from Cassandra to S3 as Parquet, with one manifest per hour.

    spark-submit spark_jobs/dump_raw_clicks.py --start 2026-01-01T10:00 --end 2026-01-01T11:00 \
        [--also-hours 2026-01-01T02:00,2026-01-01T05:00]

For each hour of [start, end) (whole UTC hours), and each hour of --also-hours: read the hour's (minute, shard) partitions of
raw_clicks with the same direct join as the minute rollup (no table scan), write every column to
a new run prefix ``s3a://<bucket>/raw_clicks/date=YYYY-MM-DD/hour=HH/run=<run id>/``, measuring
the row count, the first and last click time and a checksum on the rows as they are written;
then publish the hour's manifest and delete the hour's older runs. Readers start from the
manifest, so a re-run replaces the hour and a failed run never leaves a partial hour that looks
complete (spark_jobs/raw_dumps.py describes the layout).

Only dump hours that have closed and that Cassandra still holds in full (RAW_CLICK_TTL_S): the
reconcile_clicks_hourly DAG decides which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from spark_jobs import raw_dumps
from spark_jobs.fct_clicks_minute import cassandra_table, partition_keys
from spark_jobs.session import build_session, parse_utc, window_parser

# Every column of raw_clicks: the dump is the archive, not just what today's rollup reads.
DUMP_COLUMNS = [
    "minute", "shard", "impression_id", "click_id", "ad_id", "advertiser_id", "clicked_at", "issued_at",
    "stored_at", "user_id", "fingerprint", "referrer", "status", "reason",
]
CHECKSUM_PREFIX = "xxhash64-sum:"


def extract(spark: SparkSession, keyspace: str, start: datetime, end: datetime, shards: int) -> DataFrame:
    """Every raw click of [start, end), read partition by partition.

    Written straight out, with no shuffle after the join: planning an exchange above the
    connector's direct join fails ("Couldn't find none#0"), and the dump needs none.
    """
    raw = cassandra_table(spark, keyspace, "raw_clicks")
    return partition_keys(spark, start, end, shards).join(raw, on=["minute", "shard"], how="inner").select(*DUMP_COLUMNS)


def row_hash() -> Column:
    """A row's 64-bit hash of every dumped column."""
    return F.xxhash64(*[F.col(c) for c in DUMP_COLUMNS])


def dump_metrics() -> list[Column]:
    """Row count, first and last click time (epoch microseconds) and an order-independent checksum.

    The checksum is the exact sum of every row's row_hash(), so it does not depend on how Spark
    splits or orders the rows, and the reconciliation can recompute it from the files.
    """
    row_hash_sum = row_hash().cast("decimal(38,0)")
    return [
        F.count(F.lit(1)).alias("rows"),
        F.unix_micros(F.min("clicked_at")).alias("min_clicked_at_us"),
        F.unix_micros(F.max("clicked_at")).alias("max_clicked_at_us"),
        F.coalesce(F.sum(row_hash_sum), F.lit(0).cast("decimal(38,0)")).alias("checksum_sum"),
    ]


def earliest_issue_metric() -> Column:
    """The earliest issue time (epoch microseconds) of the rows' impressions, for the manifest."""
    return F.unix_micros(F.min("issued_at")).alias("min_issued_at_us")


def stats_of(metrics: dict) -> dict:
    """The manifest's statistics from dump_metrics() values and, when measured, earliest_issue_metric()'s."""

    def instant(micros):
        return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)

    return {
        "rows": int(metrics["rows"]),
        "min_clicked_at": instant(metrics["min_clicked_at_us"]),
        "max_clicked_at": instant(metrics["max_clicked_at_us"]),
        "min_issued_at": instant(metrics.get("min_issued_at_us")),
        "checksum": checksum_text(int(metrics["checksum_sum"])),
    }


def checksum_text(row_hash_sum: int) -> str:
    """The manifest's checksum: the exact sum of the rows' row_hash()."""
    return f"{CHECKSUM_PREFIX}{row_hash_sum}"


def write(clicks: DataFrame, url: str) -> dict:
    """Write the rows as Parquet under ``url`` (a new prefix); return their statistics, measured in the same pass."""
    observation = Observation("dump")
    clicks.observe(observation, *dump_metrics(), earliest_issue_metric()).write.mode("errorifexists").parquet(url)
    return stats_of(observation.get)


def parse_hours(text: str) -> list[datetime]:
    """``--also-hours``: comma-separated hour starts; an empty text is no hour."""
    hours = [parse_utc(part) for part in text.split(",") if part.strip()]
    for hour in hours:
        if hour != raw_dumps.floor_hour(hour):
            raise argparse.ArgumentTypeError(f"{hour.isoformat()} is not the start of an hour")
    return hours


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def main(argv: list[str] | None = None) -> int:
    parser = window_parser(__doc__.split("\n")[0])
    parser.add_argument("--bucket", default=os.environ.get("S3_BUCKET", "clickagg-raw"))
    parser.add_argument("--root", default=raw_dumps.ROOT, help="key prefix of the dumps in the bucket")
    parser.add_argument("--keyspace", default=os.environ.get("CASSANDRA_KEYSPACE", "clickagg"))
    parser.add_argument("--shards", type=int, default=int(os.environ.get("RAW_CLICK_SHARDS", "16")))
    parser.add_argument("--also-hours", default="", type=parse_hours,
                        help="more hours to dump, comma-separated ISO-8601 UTC hour starts (may be empty)")
    parser.add_argument("--master", help="Spark master when not run by spark-submit, e.g. local[2]")
    args = parser.parse_args(argv)
    hours = raw_dumps.hours_between(args.start, args.end)  # validate before starting Spark
    if not hours:
        parser.error("--end must be after --start")
    hours = sorted(set(args.also_hours) | set(hours))
    store = raw_dumps.DumpStore(raw_dumps.s3_client(os.environ), args.bucket, args.root)

    spark = build_session("dump_raw_clicks", os.environ, args.master)
    try:
        for hour in hours:
            started = time.monotonic()
            run_id = new_run_id()
            prefix = raw_dumps.run_prefix(args.root, hour, run_id)
            stats = write(extract(spark, args.keyspace, hour, hour + raw_dumps.HOUR, args.shards), store.url(prefix, "s3a"))
            manifest = raw_dumps.build_manifest(
                args.root, hour, run_id, store.list_objects(prefix), stats, DUMP_COLUMNS, datetime.now(timezone.utc)
            )
            store.publish(manifest)
            summary = {
                "hour": hour.isoformat(), "rows": manifest.row_count, "files": len(manifest.files),
                "bytes": sum(size for _, size in manifest.files), "checksum": manifest.checksum,
                "manifest": store.url(raw_dumps.manifest_key(args.root, hour)),
                "seconds": round(time.monotonic() - started, 3),
            }
            print("dump_raw_clicks " + json.dumps(summary), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
