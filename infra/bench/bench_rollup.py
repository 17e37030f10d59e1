"""Rollup benchmarks: a peak batch through the Spark job and the load, and click-to-warehouse freshness.

    python -m infra.bench.bench_rollup batch [--clicks 3000000] [--minutes 5] [--ads 10000000]
    python -m infra.bench.bench_rollup freshness [--rate 20] [--seconds 300]

``batch`` writes raw clicks with a Zipf shape over the ads into a separate keyspace
(``clickagg_bench``) for a window of past minutes, runs ``spark_jobs/fct_clicks_minute.py`` with
spark-submit exactly as the DAG does, then the warehouse load into a separate DuckDB file.
``freshness`` sends clicks at a steady rate to the running click service while the scheduler runs
the minute DAG, and measures how long each click takes to be counted in the live warehouse.
Both print a table and write docs/benchmarks/rollup-<kind>-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from infra.bench.machine import machine_info, services_status

REPO = Path(__file__).resolve().parents[2]
BENCH_KEYSPACE = "clickagg_bench"
POLL_S = 2


def record(kind: str, command: str, figures: dict) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = REPO / "docs" / "benchmarks" / f"rollup-{kind}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": f"rollup-{kind}", "at": stamp, "command": command, "machine": machine_info(),
            "services_running": services_status(), "figures": figures}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def generate_clicks(spark, clicks: int, ads: int, start: datetime, minutes: int, shards: int):
    """Raw clicks over ``minutes`` from ``start``: Zipf(1.1) over ``ads``, 3% repeats, 2% bots.

    Most clicks come seconds after their impression was shown; a tail comes much later. 80% of the
    impressions were issued 1 to 30 s before their click and 20% 30 s to 30 min before, so about a
    fifth of a window's impressions predate it and cost the job a lookup in clicks_by_impression.
    """
    from pyspark.sql import functions as F

    span = minutes * 60 * 1000
    exponent = 1.1
    # Inverse CDF of a bounded power law: rank 1 is the hottest ad.
    rank = F.floor(F.pow((F.pow(F.lit(float(ads)), 1 - exponent) - 1) * F.rand(7) + 1, 1 / (1 - exponent)))
    base = (
        spark.range(clicks, numPartitions=8)
        .withColumn("u", F.rand(11))
        .withColumn("ad_rank", F.least(rank, F.lit(ads)).cast("long"))
        .withColumn("clicked_ms", (F.lit(int(start.timestamp() * 1000)) + (F.rand(13) * span).cast("long")))
        .withColumn("age_ms", F.when(F.rand(17) < 0.8, 1_000 + F.rand(19) * 29_000)
                    .otherwise(30_000 + F.rand(19) * 1_770_000).cast("long"))
        .withColumn("clicked_at", F.timestamp_millis("clicked_ms"))
        .withColumn("issued_at", F.timestamp_millis(F.col("clicked_ms") - F.col("age_ms")))
        .withColumn("impression_id", F.substring(F.sha2(F.concat(F.lit("imp"), F.col("id").cast("string")), 256), 1, 32))
    )
    # A repeat reuses the impression of the click before it, one second later.
    repeat = F.col("u") < 0.03
    bot = (F.col("u") >= 0.03) & (F.col("u") < 0.05)
    return (
        base.withColumn("impression_id", F.when(repeat, F.substring(F.sha2(F.concat(F.lit("imp"), (F.col("id") - 1).cast("string")), 256), 1, 32)).otherwise(F.col("impression_id")))
        .withColumn("ad_id", F.concat(F.lit("bench-ad-"), F.col("ad_rank").cast("string")))
        .withColumn("advertiser_id", F.concat(F.lit("bench-adv-"), (F.col("ad_rank") % 5000).cast("string")))
        .withColumn("minute", F.date_trunc("minute", "clicked_at"))
        .withColumn("shard", (F.conv(F.substring("impression_id", 1, 8), 16, 10).cast("long") % shards).cast("short"))
        .withColumn("click_id", F.substring(F.sha2(F.concat(F.lit("clk"), F.col("id").cast("string")), 256), 1, 32))
        .withColumn("stored_at", F.col("clicked_at"))
        .withColumn("user_id", F.concat(F.lit("user-"), (F.col("id") % (clicks // 3 + 1)).cast("string")))
        .withColumn("fingerprint", F.substring(F.sha2(F.col("user_id"), 256), 1, 32))
        .withColumn("referrer", F.lit(None).cast("string"))
        .withColumn("status", F.when(repeat, "duplicate").when(bot, "invalid").otherwise("valid"))
        .withColumn("reason", F.when(bot, "bot_user_agent"))
        .drop("id", "u", "ad_rank", "clicked_ms", "age_ms")
    )


def batch_window(now: datetime, minutes: int) -> tuple[datetime, datetime]:
    """The batch's window: ``minutes`` whole minutes, aligned to a multiple of them, ending about two
    hours before ``now``. Recent, because the job refuses a window older than the raw clicks' TTL
    (RAW_CLICK_TTL_S); closed, because the bench writes all of its clicks at once."""
    two_hours_ago = now.replace(second=0, microsecond=0) - timedelta(hours=2)
    start = two_hours_ago - timedelta(minutes=two_hours_ago.minute % minutes)
    return start, start + timedelta(minutes=minutes)


def batch(args) -> dict:
    sys.path.insert(0, str(REPO))

    from click_api.storage import connect, migrate
    from click_api.windows import Windows
    from spark_jobs.fct_clicks_minute import may_have_clicks_before
    from spark_jobs.session import build_session, spark_jars
    from warehouse import connect as warehouse_connect
    from warehouse import loads, schema

    cluster = connect([os.environ.get("CASSANDRA_HOST", "127.0.0.1")], int(os.environ["CASSANDRA_PORT"]))
    session = cluster.connect()
    migrate(session, BENCH_KEYSPACE)
    start, end = batch_window(datetime.now(timezone.utc), args.minutes)
    for table in ("raw_clicks", "clicks_by_impression"):
        session.execute(f"TRUNCATE {BENCH_KEYSPACE}.{table}", timeout=120)
    cluster.shutdown()

    print(f"writing {args.clicks:,} raw clicks for [{start:%Y-%m-%d %H:%M}, {end:%H:%M}) into {BENCH_KEYSPACE} ...",
          flush=True)
    spark = build_session("bench-rollup-generate", os.environ, os.environ.get("SPARK_MASTER", "local[2]"))
    t0 = time.monotonic()
    clicks = generate_clicks(spark, args.clicks, args.ads, start, args.minutes, args.shards).cache()
    # Batches grouped by partition (the connector's default) of up to 4 KiB, under Cassandra's 5 KiB
    # warning: a raw_clicks partition (minute, shard) then takes about 16 rows per mutation.
    writer = {"keyspace": BENCH_KEYSPACE, "spark.cassandra.output.concurrent.writes": "32",
              "spark.cassandra.output.batch.size.bytes": "4096",
              # As the click service does (click_api/storage.py): an absent value is not written as a tombstone.
              "spark.cassandra.output.ignoreNulls": "true",
              "spark.cassandra.output.consistency.level": "ONE"}
    clicks.write.format("org.apache.spark.sql.cassandra").options(table="raw_clicks", **writer).mode("append").save()
    # clicks_by_impression gets the rows the job can look up: those of impressions that may have
    # been clicked before the window (spark_jobs/fct_clicks_minute.py); the job never reads others.
    clock_skew = timedelta(seconds=Windows.from_env(os.environ).clock_skew)
    looked_up = clicks.where(may_have_clicks_before(start, clock_skew)).select("impression_id").distinct()
    clicks.join(looked_up, "impression_id").select("impression_id", "clicked_at", "click_id", "status").write.format(
        "org.apache.spark.sql.cassandra").options(table="clicks_by_impression", **writer).mode("append").save()
    lookups = looked_up.count()
    expected_billable = clicks.where("status in ('valid', 'duplicate')").select("impression_id").distinct().count()
    generate_s = time.monotonic() - t0
    spark.stop()
    print(f"  written in {generate_s:.1f}s; {expected_billable:,} impressions should be billed; "
          f"{lookups:,} predate the window", flush=True)

    output = REPO / ".local" / "bench" / "rollup-output"
    jars = spark_jars(os.environ, s3=False)
    command = [
        "spark-submit", "--master", os.environ.get("SPARK_MASTER", "local[2]"), "--jars", jars,
        "--driver-memory", os.environ.get("SPARK_DRIVER_MEMORY", "2g"),
        "--conf", f"spark.sql.shuffle.partitions={os.environ.get('SPARK_SHUFFLE_PARTITIONS', '4')}",
        str(REPO / "spark_jobs" / "fct_clicks_minute.py"), "--start", start.isoformat(), "--end", end.isoformat(),
        "--output", str(output), "--keyspace", BENCH_KEYSPACE, "--shards", str(args.shards),
    ]
    print("running the rollup job with spark-submit (as the DAG does) ...", flush=True)
    t0 = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    job_s = time.monotonic() - t0

    db = REPO / ".local" / "bench" / "rollup.duckdb"
    db.unlink(missing_ok=True)
    con = warehouse_connect(str(db))
    schema.migrate(con)
    t0 = time.monotonic()
    result = loads.load_clicks_minute(con, f"{output}/minute/*.parquet", f"{output}/users/*.parquet", start, end)
    load_s = time.monotonic() - t0
    billed = con.execute("SELECT sum(billable_clicks) FROM fct_clicks_minute").fetchone()[0]
    con.close()
    figures = {
        "raw_clicks": args.clicks, "ads": args.ads, "window_minutes": args.minutes, "shards": args.shards,
        "generate_and_write_s": round(generate_s, 1), "spark_job_s": round(job_s, 1), "load_s": round(load_s, 2),
        "end_to_end_s": round(job_s + load_s, 1), "rows_per_s": round(args.clicks / (job_s + load_s)),
        "impressions_looked_up": lookups, "minute_rows": result.rows_inserted, "billable_clicks": billed, "expected_billable": expected_billable,
        "target_end_to_end_s": 60,
    }
    if billed != expected_billable:
        raise SystemExit(f"the warehouse billed {billed} clicks, {expected_billable} expected")
    return figures


def caught_up(watermark: datetime | None, now: datetime) -> bool:
    """True when the rollup's watermark is where a run on schedule leaves it: at most two minutes
    (the run's own minute and the one its lateness waits out) behind ``now``."""
    return watermark is not None and watermark >= now.replace(second=0, microsecond=0) - timedelta(minutes=2)


def wait_for_caught_up_rollup(timeout_s: float = 1800) -> None:
    """Wait until the unpaused rollup DAG has caught up with the clock. A watermark left behind
    (the DAG paused, or the scheduler stopped) is caught up a window at a time, and clicks sent
    meanwhile would measure the catch-up instead of the schedule."""
    from warehouse import client as warehouse_client

    give_up = time.monotonic() + timeout_s
    while not caught_up(mark := warehouse_client.watermark(os.environ), now := datetime.now(timezone.utc)):
        if time.monotonic() > give_up:
            raise SystemExit(f"the rollup's watermark ({mark}) did not catch up with the clock in {timeout_s:.0f}s: "
                             "is the scheduler running (make status)?")
        print(f"  the rollup is catching up: watermark {mark:%Y-%m-%d %H:%M} UTC at {now:%H:%M:%S}"
              if mark else "  waiting for the rollup's first load", flush=True)
        time.sleep(15)


def freshness(args) -> dict:
    """Send clicks at a steady rate; note when each (ad, minute) shows all of its clicks."""
    import requests

    sys.path.insert(0, str(REPO))
    from click_api import config
    from click_api.storage import Ad, CassandraStore, connect
    from click_api.tokens import Impression, mint, new_impression_id
    from infra.airflow_api import AirflowAPI

    cfg = config.from_env(os.environ)
    run_tag = datetime.now(timezone.utc).strftime("%H%M%S")
    ads = [Ad(f"fresh-{run_tag}-{i}", "fresh-advertiser", "https://landing.example.com/fresh") for i in range(5)]
    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"])
    store = CassandraStore(cluster.connect(), cfg["CASSANDRA_KEYSPACE"], 3600, cfg["RAW_CLICK_SHARDS"])
    for ad in ads:
        store.put_ad(ad)
    cluster.shutdown()
    airflow = AirflowAPI.from_env()
    airflow.set_paused("rollup_clicks_minute", False)
    wait_for_caught_up_rollup()

    sent: list[tuple[str, datetime, float]] = []  # (ad, minute, send time)
    http = requests.Session()
    base = f"http://127.0.0.1:{os.environ['CLICK_API_PORT']}/click"
    began = time.time()
    # The warehouse is polled all along, from another thread: a cell's billable count is noted each
    # time it changes, and a minute is visible from the first poll that shows all of its clicks.
    observed: dict[tuple[str, datetime], list[tuple[float, int]]] = defaultdict(list)
    stop = threading.Event()
    url = f"{os.environ['WAREHOUSE_URL']}/sql"
    query = "SELECT ad_id, minute_at, billable_clicks FROM fct_clicks_minute WHERE ad_id LIKE ? AND minute_at >= ?"
    first_minute = datetime.fromtimestamp(began, tz=timezone.utc).replace(second=0, microsecond=0, tzinfo=None)

    def poll() -> None:
        while not stop.is_set():
            try:  # a new connection each poll: a kept-alive one can race the server's keep-alive timeout
                rows = requests.post(url, json={"sql": query, "params": [f"fresh-{run_tag}-%", first_minute.isoformat()]},
                                     timeout=30).json()["rows"]
            except requests.RequestException as error:
                print(f"  poll failed ({error}); polling again", flush=True)
                stop.wait(POLL_S)
                continue
            now = time.time()
            for ad_id, minute_at, billable in rows:
                seen = observed[(ad_id, datetime.fromisoformat(minute_at))]
                if not seen or seen[-1][1] != billable:
                    seen.append((now, billable))
            stop.wait(POLL_S)

    poller = threading.Thread(target=poll, name="warehouse-poller", daemon=True)
    poller.start()
    deadline = began + args.seconds
    print(f"sending {args.rate} clicks/s for {args.seconds}s while the scheduler runs the minute DAG ...", flush=True)
    n = 0
    while time.time() < deadline:
        now = time.time()
        if now % 60 > 59.7 or now % 60 < 0.3:  # keep clear of minute edges: the server stamps the minute
            time.sleep(0.05)
            continue
        ad = ads[n % len(ads)]
        token = mint(Impression(new_impression_id(), ad.ad_id, int(now), cfg["SIGNING_KEY_ID"]), cfg["SIGNING_KEYS"])
        response = http.get(base, params={"t": token}, allow_redirects=False, timeout=5,
                            headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0"})
        if response.status_code != 302:
            raise SystemExit(f"click answered {response.status_code}")
        moment = datetime.fromtimestamp(now, tz=timezone.utc).replace(second=0, microsecond=0, tzinfo=None)
        sent.append((ad.ad_id, moment, now))
        n += 1
        time.sleep(max(0.0, n / args.rate - (time.time() - began)))

    expected = Counter((ad_id, minute) for ad_id, minute, _ in sent)

    def visible_at() -> dict[tuple[str, datetime], float]:
        found = {}
        for key, count in expected.items():
            complete = [at for at, billable in list(observed.get(key, ())) if billable >= count]
            if complete:
                found[key] = complete[0]
        return found

    print("waiting until every minute is visible in the warehouse ...", flush=True)
    give_up = time.time() + 600
    while len(visible_at()) < len(expected) and time.time() < give_up:
        time.sleep(POLL_S)
    stop.set()
    poller.join()
    airflow.set_paused("rollup_clicks_minute", True)
    visible = visible_at()
    if len(visible) < len(expected):
        raise SystemExit(f"{len(expected) - len(visible)} (ad, minute) cells never became complete")
    delays = [visible[(ad_id, minute)] - at for ad_id, minute, at in sent]
    return {"clicks": len(sent), "rate_per_s": args.rate, "seconds": args.seconds,
            "delay_p50_s": round(statistics.median(delays), 1), "delay_p99_s": round(percentile(delays, 99), 1),
            "delay_max_s": round(max(delays), 1), "poll_interval_s": POLL_S, "schedule": "every minute",
            "lateness_s": int(os.environ.get("ROLLUP_LATENESS_S", "20")), "target_p99_s": 180}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    b = sub.add_parser("batch")
    b.add_argument("--clicks", type=int, default=3_000_000)
    b.add_argument("--minutes", type=int, default=5)
    b.add_argument("--ads", type=int, default=10_000_000)
    b.add_argument("--shards", type=int, default=int(os.environ.get("RAW_CLICK_SHARDS", "16")))
    f = sub.add_parser("freshness")
    f.add_argument("--rate", type=float, default=20)
    f.add_argument("--seconds", type=int, default=300)
    args = parser.parse_args(argv)
    figures = batch(args) if args.kind == "batch" else freshness(args)
    command = "python -m infra.bench.bench_rollup " + " ".join(argv if argv is not None else sys.argv[1:])
    path = record(args.kind, command, figures)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"  {key.ljust(width)}  {value}")
    print(f"recorded in {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
