"""Roll raw clicks up by ad and minute for one interval: Cassandra in, Parquet for the warehouse out.

    spark-submit spark_jobs/fct_clicks_minute.py --start 2026-01-01T10:00 --end 2026-01-01T10:05 \
        --output /path/to/staging/fct_clicks_minute/<interval>

Reads only the interval's partitions of raw_clicks: the partition key is (minute, shard), so
the job builds the list of (minute, shard) keys of the interval and joins it with the table;
the connector turns that join into one read per partition (a "Cassandra Direct Join") instead
of a scan. The same is done on clicks_by_impression to find each impression's first click,
wherever in time it happened: that click alone is billable, whatever Redis said. ``--explain``
prints both plans and exits.

Writes two Parquet datasets under --output: ``minute`` (one row per ad and minute) and
``users`` (the distinct hashed users behind the billable clicks of each ad and minute, from
which the warehouse derives exact hourly and daily unique users).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from click_api.windows import Windows, oldest_held
from spark_jobs.session import build_session, window_parser

VALID, DUPLICATE, EXPIRED, INVALID = "valid", "duplicate", "expired", "invalid"
REASONS = {"head_request": "invalid_head_clicks", "prefetch": "invalid_prefetch_clicks", "bot_user_agent": "invalid_bot_clicks"}
CASSANDRA = "org.apache.spark.sql.cassandra"

RAW_COLUMNS = [
    "minute", "impression_id", "click_id", "ad_id", "advertiser_id", "clicked_at", "issued_at", "status", "reason",
    "user_id", "fingerprint",
]
# Raw columns no step after transform_billable reads: left out of its shuffle.
NOT_AFTER_LABELLING = ["user_id", "fingerprint", "issued_at", "shard", "referrer"]
MINUTE_COLUMNS = [
    "minute_at", "ad_id", "advertiser_id", "billable_clicks", "duplicate_clicks", "expired_clicks",
    "invalid_clicks", "invalid_head_clicks", "invalid_prefetch_clicks", "invalid_bot_clicks", "unique_users",
]
USER_COLUMNS = ["minute_at", "ad_id", "user_hash"]
# Every raw click falls in exactly one of these columns of its (minute, ad) row.
CLICK_KINDS = ["billable_clicks", "duplicate_clicks", "expired_clicks", "invalid_clicks"]


def minutes_between(start: datetime, end: datetime) -> list[datetime]:
    """Every whole minute in [start, end); both must be minute-aligned."""
    if start.second or start.microsecond or end.second or end.microsecond:
        raise ValueError("--start and --end must fall on whole minutes")
    if end <= start:
        raise ValueError("--end must be after --start")
    count = int((end - start).total_seconds() // 60)
    return [start + timedelta(minutes=i) for i in range(count)]


def partition_keys(spark: SparkSession, start: datetime, end: datetime, shards: int) -> DataFrame:
    schema = T.StructType([T.StructField("minute", T.TimestampType()), T.StructField("shard", T.ShortType())])
    rows = [(minute, shard) for minute in minutes_between(start, end) for shard in range(shards)]
    return spark.createDataFrame(rows, schema)


def cassandra_table(spark: SparkSession, keyspace: str, table: str) -> DataFrame:
    """A Cassandra table whose joins on the partition key always become per-partition reads."""
    return spark.read.format(CASSANDRA).options(keyspace=keyspace, table=table, directJoinSetting="on").load()


def may_have_clicks_before(start: datetime, clock_skew: timedelta) -> Column:
    """True for a click whose impression may have been clicked before ``start``.

    An impression's clicks all come after it was issued, by the click server's clock. The issue
    time comes from the minting server's clock, which may run ahead by up to ``clock_skew``: an
    impression stamped before ``start + clock_skew`` may have been issued, and clicked, before
    ``start``. One stamped later cannot have been.
    """
    return F.col("issued_at") < F.lit(start + clock_skew)


def extract(spark: SparkSession, keyspace: str, start: datetime, end: datetime, shards: int,
            clock_skew: timedelta):
    """The interval's raw clicks, and every click of the impressions they belong to."""
    raw = cassandra_table(spark, keyspace, "raw_clicks")
    # Persisted right after the join: the connector's direct join fails ("Couldn't find none#0")
    # when a later step prunes its output down to a few columns, and it is read twice anyway.
    clicks = (
        partition_keys(spark, start, end, shards)
        .join(raw, on=["minute", "shard"], how="inner")
        .select(*RAW_COLUMNS)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    # If an impression was issued inside the window, every earlier click of it is in ``clicks``
    # already. Only the others are looked up, one partition each.
    by_impression = cassandra_table(spark, keyspace, "clicks_by_impression")
    impression_clicks = (
        clicks.where(may_have_clicks_before(start, clock_skew))
        .select("impression_id")
        .distinct()
        .join(by_impression, on="impression_id", how="inner")
    )
    return clicks, impression_clicks


def transform_billable(clicks: DataFrame, impression_clicks: DataFrame) -> DataFrame:
    """Mark each click billable when it is its impression's first valid-or-duplicate click.

    Redis labels a repeat as "duplicate", but with Redis down or flushed a repeat is stored as
    "valid": ranking all of an impression's eligible clicks by time makes the count right either way.
    """
    is_eligible = F.col("status").isin(VALID, DUPLICATE)
    # One pass over each impression's clicks (one shuffle, no join back): every click row carries
    # the (time, click ID) of its impression's first eligible click, from the window's own clicks
    # and from those looked up in clicks_by_impression (which may repeat window clicks: harmless).
    # The user is hashed first and only the columns used after this are shuffled.
    time_and_id = F.struct("clicked_at", "click_id")
    looked_up = (
        impression_clicks.select("impression_id", "clicked_at", "click_id", "status")
        .where(is_eligible)
        .withColumn("_in_window", F.lit(False))
    )
    narrow = (
        clicks.withColumn("user_hash", F.xxhash64(F.coalesce(F.col("user_id"), F.col("fingerprint"))))
        .drop(*NOT_AFTER_LABELLING)
        .withColumn("_in_window", F.lit(True))
    )
    both = narrow.unionByName(looked_up, allowMissingColumns=True)
    first = F.min(F.when(is_eligible, time_and_id)).over(Window.partitionBy("impression_id"))
    return (
        both.withColumn("_first", first)
        .where(F.col("_in_window"))
        .withColumn("is_billable", is_eligible & F.coalesce(time_and_id == F.col("_first"), F.lit(False)))
        .withColumn("is_eligible", is_eligible)
        .drop("_in_window", "_first")
    )


def _count_where(condition) -> F.Column:
    return F.sum(F.when(condition, 1).otherwise(0)).cast("long")


def transform_minute_cells(clicks: DataFrame, *extra: Column) -> DataFrame:
    """The labelled clicks counted by (minute, ad) and billable user, in one shuffle.

    One row per distinct user behind the billable clicks of each (minute, ad), holding those
    clicks, and one row with a null ``user_hash`` holding the ones that bill nobody (duplicates,
    expired, invalid). transform_minute_facts() and transform_minute_users() both derive from
    these rows, so the job groups its clicks once. Spark adds up each task's rows of a
    (minute, ad, user) before the shuffle, so a hot ad's clicks reach the shuffle as one row per
    user and task. ``extra``: more aggregates to compute per row, in the same pass.

    A (minute, ad) is expected to have one advertiser (the registry keeps it so, and the data
    quality check fails a run otherwise); rows of an ad that carry two would give two users rows.
    """
    status, reason = F.col("status"), F.col("reason")
    reason_counts = [_count_where((status == INVALID) & (reason == name)).alias(col) for name, col in REASONS.items()]
    billed_user = F.when(F.col("is_billable"), F.col("user_hash")).alias("user_hash")
    return clicks.groupBy(F.col("minute").alias("minute_at"), "ad_id", "advertiser_id", billed_user).agg(
        _count_where(F.col("is_billable")).alias("billable_clicks"),
        _count_where(F.col("is_eligible") & ~F.col("is_billable")).alias("duplicate_clicks"),
        _count_where(status == EXPIRED).alias("expired_clicks"),
        _count_where(status == INVALID).alias("invalid_clicks"),
        *reason_counts,
        *extra,
    )


def transform_minute_facts(cells: DataFrame) -> DataFrame:
    """One row per (minute, ad) of transform_minute_cells(): billable, duplicate, expired and
    invalid clicks, and unique users (the cell's rows that name a user)."""
    counts = [F.sum(c).cast("long").alias(c) for c in MINUTE_COLUMNS if c.endswith("_clicks")]
    return (
        cells.groupBy("minute_at", "ad_id", "advertiser_id")
        .agg(*counts, F.count("user_hash").cast("long").alias("unique_users"))
        .select(*MINUTE_COLUMNS)
    )


def transform_minute_users(cells: DataFrame) -> DataFrame:
    """The distinct users behind each (minute, ad)'s billable clicks, as 64-bit hashes, from
    transform_minute_cells() (which holds each of them once)."""
    return cells.where(F.col("user_hash").isNotNull()).select(*USER_COLUMNS)


def load(facts: DataFrame, users: DataFrame, output: str) -> None:
    """Write both datasets, replacing whatever a previous run of the same interval left.

    Unsorted: the warehouse sorts rows as it inserts them, so a sort here would be a second one.
    """
    facts.write.mode("overwrite").parquet(f"{output}/minute")
    users.write.mode("overwrite").parquet(f"{output}/users")


def main(argv: list[str] | None = None) -> int:
    parser = window_parser(__doc__.split("\n")[0])
    parser.add_argument("--output", help="folder (or s3a:// URL) for the Parquet output (required unless --explain)")
    parser.add_argument("--keyspace", default=os.environ.get("CASSANDRA_KEYSPACE", "clickagg"))
    parser.add_argument("--shards", type=int, default=int(os.environ.get("RAW_CLICK_SHARDS", "16")))
    parser.add_argument("--master", help="Spark master when not run by spark-submit, e.g. local[2]")
    parser.add_argument("--explain", action="store_true",
                        help="print the physical plans of the Cassandra reads (one read per partition, no scan) "
                             "and exit without reading or writing")
    args = parser.parse_args(argv)
    if not args.output and not args.explain:
        parser.error("--output is required")
    minutes_between(args.start, args.end)  # validate before starting Spark
    oldest = oldest_held(datetime.now(timezone.utc), Windows.from_env(os.environ).raw_click_ttl)
    if args.start < oldest:
        parser.error(f"the window starts at {args.start.isoformat()}, before {oldest:%Y-%m-%dT%H:%M}Z: raw clicks "
                     "older than RAW_CLICK_TTL_S have expired from Cassandra, so rolling the window up again would "
                     "delete warehouse rows it cannot rebuild. reconcile_clicks_hourly recomputes past hours from "
                     "their S3 dumps.")

    spark = build_session("fct_clicks_minute", os.environ, args.master)
    try:
        clicks, impression_clicks = extract(spark, args.keyspace, args.start, args.end, args.shards,
                                            timedelta(seconds=args.clock_skew_s))
        if args.explain:
            for name, frame in (("raw_clicks of the window", clicks), ("earlier clicks of its impressions", impression_clicks)):
                print(f"== {name} ==", flush=True)
                frame.explain()
            return 0
        cells = transform_minute_cells(transform_billable(clicks, impression_clicks)).persist(StorageLevel.MEMORY_AND_DISK)
        load(transform_minute_facts(cells), transform_minute_users(cells), args.output)
        # The summary comes from the small output, not from another pass over the raw clicks (at 3M
        # clicks a count of the cached raw clicks ran the driver's 2 GB heap out of memory).
        written = spark.read.parquet(f"{args.output}/minute").agg(
            F.count(F.lit(1)).alias("rows"), F.sum(sum(F.col(c) for c in CLICK_KINDS)).alias("raw_clicks")
        ).first()
        summary = {
            "start": args.start.isoformat(),
            "end": args.end.isoformat(),
            "raw_clicks": int(written["raw_clicks"] or 0),
            "rows": written["rows"],
            "output": args.output,
        }
        print("fct_clicks_minute " + json.dumps(summary), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
