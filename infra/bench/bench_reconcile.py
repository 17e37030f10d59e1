"""Reconciliation benchmark: dump one hour of raw clicks to S3 and reconcile it, at a given scale.

    python -m infra.bench.bench_reconcile [--clicks 3000000] [--ads 100000] [--earlier-clicks N] [--keep]

Writes ``--clicks`` raw clicks for one past hour into a keyspace of its own
(``clickagg_bench_reconcile``, truncated first) with Spark's Cassandra writer, and the dumps of the
duplicate horizon's earlier hours (``--earlier-clicks`` each, default the same: a steady stream,
1% of the hour's clicks repeating the previous hour's impressions) straight to S3, under a prefix
of their own (``bench/raw_clicks`` in S3_BUCKET). Then, with spark-submit exactly as the DAG does:

  1. the dump job for an empty hour and for the full hour: the empty one measures the fixed cost
     (JVM, session, S3 round trips, the hour's 960 partition reads), the difference the rate per row;
  2. the recompute job for an empty hour (with empty earlier hours) and for the full hour, likewise;
  3. the warehouse's compare-and-repair (warehouse/reconcile.py, as the service runs it) on a
     DuckDB file of its own: first against an empty hour (every cell repaired, the worst case),
     then again (nothing differs, the usual case).

Extrapolates each linearly to 36M clicks (one peak hour: 600k clicks a minute), prints a table,
writes docs/benchmarks/reconcile-<UTC time>.json, and removes its dumps and clicks unless --keep.
Run it with the services of `make up` and nothing else heavy on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from infra.bench.machine import machine_info, services_status

REPO = Path(__file__).resolve().parents[2]
KEYSPACE = "clickagg_bench_reconcile"
ROOT = "bench/raw_clicks"
PEAK_CLICKS = 36_000_000
TARGET_S = 300
HOUR = timedelta(hours=1)


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


# Writing the clicks (run in a process of its own, so no idle JVM stays behind)


def generate_clicks(spark, clicks: int, ads: int, hour: datetime, shards: int, previous_hour: datetime | None = None):
    """Raw clicks spread over the hour: uniform over ``ads``, 3% repeats of the previous click's
    impression (labelled duplicate), 2% bots, 1% expired, and, when ``previous_hour`` is given, 1%
    repeats (labelled valid, as with Redis flushed) of impressions first clicked in that hour."""
    from pyspark.sql import functions as F

    def hexid(kind: str, at: datetime, column) -> F.Column:
        return F.md5(F.concat(F.lit(f"{kind}{at:%Y%m%d%H}-"), column.cast("string")))

    u = F.col("u")
    is_repeat, is_bot, is_expired = u < 0.03, (u >= 0.03) & (u < 0.05), (u >= 0.05) & (u < 0.06)
    is_old_repeat = (u >= 0.06) & (u < 0.07) & F.lit(previous_hour is not None)
    impression = (
        F.when(is_repeat, hexid("imp", hour, F.col("id") - 1))
        .when(is_old_repeat, hexid("imp", previous_hour or hour, F.col("id")))
        .otherwise(hexid("imp", hour, F.col("id")))
    )
    start_ms = int(hour.timestamp() * 1000)
    return (
        spark.range(clicks, numPartitions=8)
        .withColumn("u", F.rand(11))
        .withColumn("ad", (F.rand(7) * ads).cast("long"))
        .withColumn("clicked_at", F.timestamp_millis(F.lit(start_ms) + (F.rand(13) * 3_600_000).cast("long")))
        .withColumn("impression_id", impression)
        .withColumn("minute", F.date_trunc("minute", "clicked_at"))
        .withColumn("shard", (F.conv(F.substring("impression_id", 1, 8), 16, 10).cast("long") % shards).cast("short"))
        .withColumn("click_id", hexid("clk", hour, F.col("id")))
        .withColumn("ad_id", F.concat(F.lit("bench-ad-"), F.col("ad").cast("string")))
        .withColumn("advertiser_id", F.concat(F.lit("bench-adv-"), (F.col("ad") % 5000).cast("string")))
        .withColumn("issued_at", F.col("clicked_at") - F.when(is_old_repeat, F.expr("INTERVAL 70 MINUTES"))
                    .otherwise(F.expr("INTERVAL 30 SECONDS")))
        .withColumn("stored_at", F.col("clicked_at") + F.expr("INTERVAL 1 SECONDS"))
        .withColumn("user_id", F.concat(F.lit("user-"), (F.col("id") % (clicks // 3 + 1)).cast("string")))
        .withColumn("fingerprint", F.substring(F.sha2(F.col("user_id"), 256), 1, 32))
        .withColumn("referrer", F.lit(None).cast("string"))
        .withColumn("status", F.when(is_repeat, "duplicate").when(is_bot, "invalid").when(is_expired, "expired")
                    .otherwise("valid"))
        .withColumn("reason", F.when(is_bot, "bot_user_agent"))
        .drop("id", "u", "ad")
    )


def generate(args) -> int:
    """Truncate the bench keyspace and write the hour's clicks to raw_clicks."""
    from click_api.storage import connect, migrate
    from spark_jobs.session import build_session

    cluster = connect([os.environ.get("CASSANDRA_HOST", "127.0.0.1")], int(os.environ["CASSANDRA_PORT"]))
    session = cluster.connect()
    migrate(session, KEYSPACE)
    for table in ("raw_clicks", "clicks_by_impression"):
        session.execute(f"TRUNCATE {KEYSPACE}.{table}", timeout=120)
    cluster.shutdown()
    if not args.clicks:
        return 0
    spark = build_session("bench-reconcile-generate", os.environ, os.environ.get("SPARK_MASTER", "local[2]"))
    try:
        previous = args.hour - HOUR if args.earlier_clicks else None
        clicks = generate_clicks(spark, args.clicks, args.ads, args.hour, args.shards, previous).cache()
        cassandra = "org.apache.spark.sql.cassandra"
        # Rows of one raw_clicks partition side by side, so the writer sends them as one unlogged
        # batch per partition. Absent values are left unwritten, as the click service does (a null
        # would be a tombstone). Only raw_clicks: the dump reads nothing else.
        output = {"spark.cassandra.output.concurrent.writes": "128", "spark.cassandra.output.batch.size.rows": "64",
                  "spark.cassandra.output.batch.grouping.key": "partition", "spark.cassandra.output.ignoreNulls": "true"}
        (clicks.repartition(8, "minute", "shard").sortWithinPartitions("minute", "shard")
         .write.format(cassandra).options(keyspace=KEYSPACE, table="raw_clicks", **output).mode("append").save())
        if args.earlier_clicks:
            write_earlier_dumps(spark, args)
    finally:
        spark.stop()
    return 0


def write_earlier_dumps(spark, args) -> None:
    """The dumps of the horizon's hours before the bench hour, as a steady stream leaves them:
    ``--earlier-clicks`` rows each, written straight to S3 with the dump job's writer and manifest."""
    from spark_jobs import dump_raw_clicks, raw_dumps

    store = raw_dumps.DumpStore(raw_dumps.s3_client(os.environ), os.environ.get("S3_BUCKET", "clickagg-raw"), ROOT)
    for hour in raw_dumps.horizon_hours(args.hour, args.horizon_s):
        run_id = dump_raw_clicks.new_run_id()
        prefix = raw_dumps.run_prefix(ROOT, hour, run_id)
        rows = generate_clicks(spark, args.earlier_clicks, args.ads, hour, args.shards).select(*dump_raw_clicks.DUMP_COLUMNS)
        stats = dump_raw_clicks.write(rows, store.url(prefix, "s3a"))
        store.publish(raw_dumps.build_manifest(ROOT, hour, run_id, store.list_objects(prefix), stats,
                                               dump_raw_clicks.DUMP_COLUMNS, datetime.now(timezone.utc)))


# Timing the jobs


def spark_submit(script: str, args: list[str]) -> tuple[float, dict | None]:
    """Run a job as the DAG does; return its wall seconds and the JSON summary it printed."""
    from spark_jobs.session import spark_jars

    jars = spark_jars(os.environ, s3=True)
    command = [
        str(Path(os.environ.get("VENV", REPO / ".venv")) / "bin" / "spark-submit"),
        "--master", os.environ.get("SPARK_MASTER", "local[2]"), "--jars", jars,
        "--driver-memory", os.environ.get("SPARK_DRIVER_MEMORY", "2g"),
        "--conf", f"spark.sql.shuffle.partitions={os.environ.get('SPARK_SHUFFLE_PARTITIONS', '4')}",
        str(REPO / "spark_jobs" / script), *args,
    ]
    started = time.monotonic()
    job = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if job.returncode != 0:
        sys.stderr.write(job.stderr[-5000:])
        raise SystemExit(f"{script} failed (exit {job.returncode})")
    summaries = [json.loads(m) for m in re.findall(r"^\w+ (\{.*\})$", job.stdout, flags=re.M)]
    return seconds, (summaries[-1] if summaries else None)


def dump(start: datetime, end: datetime, shards: int) -> tuple[float, dict | None]:
    return spark_submit("dump_raw_clicks.py", ["--start", start.isoformat(), "--end", end.isoformat(),
                                               "--keyspace", KEYSPACE, "--root", ROOT, "--shards", str(shards)])


def recompute(hour: datetime, output: Path, horizon_s: int) -> tuple[float, dict | None]:
    return spark_submit("reconcile_clicks.py", ["--start", hour.isoformat(), "--end", (hour + HOUR).isoformat(),
                                                "--root", ROOT, "--output", str(output), "--horizon-s", str(horizon_s)])


def extrapolate(rows: int, seconds: float, fixed_s: float) -> dict:
    """Linear in the rows beyond the fixed cost measured on an empty hour."""
    variable = max(seconds - fixed_s, 1e-3)
    rate = rows / variable
    return {"seconds": round(seconds, 2), "fixed_s": round(fixed_s, 2), "rows_per_s": round(rate),
            "rows_per_s_wall": round(rows / seconds), "extrapolated_36m_s": round(fixed_s + PEAK_CLICKS / rate, 1)}


def run(args) -> dict:
    from spark_jobs import raw_dumps
    from warehouse import connect, reconcile, schema
    from warehouse.batch import BatchThread
    from warehouse.server import config_from_env

    hour = args.hour
    store = raw_dumps.DumpStore(raw_dumps.s3_client(os.environ), os.environ.get("S3_BUCKET", "clickagg-raw"), ROOT)
    work = REPO / ".local" / "bench" / "reconcile"
    work.mkdir(parents=True, exist_ok=True)

    step(f"writing {args.clicks:,} raw clicks for {hour:%Y-%m-%d %H}:00 UTC into {KEYSPACE} (Spark's Cassandra writer), "
         f"and {args.earlier_clicks:,} an hour straight to S3 as the dumps of the hours before it")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "infra.bench.bench_reconcile", "generate", "--clicks", str(args.clicks),
                    "--earlier-clicks", str(args.earlier_clicks), "--ads", str(args.ads), "--hour", hour.isoformat(),
                    "--shards", str(args.shards), "--horizon-s", str(args.horizon_s)],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    generate_s = time.monotonic() - started
    print(f"    {generate_s:.1f}s", flush=True)

    # The fixed costs (JVM, session, S3 round trips, the 960 partition reads of an hour) are
    # measured on an empty hour with empty earlier hours, away from the bench hour.
    empty = hour - 8 * HOUR
    step("dumping the empty hour's earlier hours (untimed), then the empty hour and the full hour")
    dump(raw_dumps.horizon_hours(empty, args.horizon_s)[0], empty, args.shards)
    empty_dump_s, _ = dump(empty, empty + HOUR, args.shards)
    dump_s, dump_summary = dump(hour, hour + HOUR, args.shards)
    rows = dump_summary["rows"]
    print(f"    empty {empty_dump_s:.1f}s, full {dump_s:.1f}s for {rows:,} rows ({dump_summary['bytes'] / 2**20:.0f} MiB)")

    step("recomputing the empty hour (fixed cost), then the full hour")
    empty_recompute_s, _ = recompute(empty, work / "empty", args.horizon_s)
    recompute_s, summary = recompute(hour, work / "full", args.horizon_s)
    print(f"    empty {empty_recompute_s:.1f}s, full {recompute_s:.1f}s (earlier hours: {summary['earlier_rows']:,} rows)")

    step("comparing and repairing in a DuckDB warehouse of its own: an empty hour (all repaired), then again")
    db = work / "reconcile.duckdb"
    db.unlink(missing_ok=True)
    # As the service runs it: DuckDB threads as configured, on a thread at the batch work's priority.
    service = config_from_env()
    con = connect(str(db), threads=service["THREADS"])
    schema.migrate(con)
    minute_files, user_files = f"{work}/full/minute/*.parquet", f"{work}/full/users/*.parquet"
    batch = BatchThread(service["BATCH_NICE"])
    try:
        started = time.monotonic()
        repair = batch.run(reconcile.reconcile_hour, con, hour, minute_files, user_files, 1.0, summary)
        repair_s = time.monotonic() - started
        # As a later recomputation of the same hour (another context), so the stored report of the
        # first call does not answer for it: the compare runs and finds nothing to repair.
        started = time.monotonic()
        again = batch.run(reconcile.reconcile_hour, con, hour, minute_files, user_files, 1.0, {**summary, "pass": 2})
        compare_s = time.monotonic() - started
    finally:
        batch.shutdown()
        con.close()
    print(f"    repair {repair_s:.2f}s ({repair.cells_differed:,} cells), compare only {compare_s:.2f}s ({again.status})")

    if not args.keep:
        step("removing the bench dumps and clicks")
        for first in (empty, hour):
            for h in [*raw_dumps.horizon_hours(first, args.horizon_s), first]:
                store.delete_hour(h)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "infra.bench.bench_reconcile", "generate", "--clicks", "0",
                        "--earlier-clicks", "0"],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    dump_fig = extrapolate(rows, dump_s, empty_dump_s)
    recompute_fig = extrapolate(rows, recompute_s, empty_recompute_s)
    repair_fig = extrapolate(rows, repair_s, 0.0)
    compare_fig = extrapolate(rows, compare_s, 0.0)
    reconcile_36m = recompute_fig["extrapolated_36m_s"] + repair_fig["extrapolated_36m_s"]
    return {
        "hour": hour.isoformat(), "clicks": rows, "ads": args.ads, "shards": args.shards,
        "earlier_hours_clicks": summary["earlier_rows"], "late_clicks": summary["late_clicks"],
        "dump_bytes": dump_summary["bytes"], "dump_files": dump_summary["files"],
        "minute_cells": repair.cells_compared, "billable_clicks": repair.detail["billable_total"],
        "generate_s": round(generate_s, 1),
        "dump": dump_fig,
        "recompute": recompute_fig,
        "warehouse_repair_all": repair_fig,
        "warehouse_compare_only": compare_fig,
        "reconcile": {
            "seconds": round(recompute_s + repair_s, 2),
            "rows_per_s_wall": round(rows / (recompute_s + repair_s)),
            "extrapolated_36m_s": round(reconcile_36m, 1),
            "extrapolated_36m_compare_only_s": round(recompute_fig["extrapolated_36m_s"] + compare_fig["extrapolated_36m_s"], 1),
        },
        "target_36m_s": TARGET_S,
        "meets_target": {"dump": dump_fig["extrapolated_36m_s"] <= TARGET_S, "reconcile": reconcile_36m <= TARGET_S},
        "recompute_summary": summary,
    }


def print_table(figures: dict) -> None:
    rows = [
        ("dump (Cassandra -> S3)", figures["dump"]),
        ("recompute (S3 -> Parquet)", figures["recompute"]),
        ("warehouse repair (all cells)", figures["warehouse_repair_all"]),
        ("warehouse compare (no drift)", figures["warehouse_compare_only"]),
    ]
    print(f"\n{figures['clicks']:,} clicks, {figures['minute_cells']:,} (minute, ad) cells, "
          f"dump {figures['dump_bytes'] / 2**20:.0f} MiB in {figures['dump_files']} files")
    print(f"{'step':<30} {'seconds':>8} {'fixed s':>8} {'rows/s':>11} {'rows/s wall':>12} {'36M s':>8}")
    for name, fig in rows:
        print(f"{name:<30} {fig['seconds']:>8.1f} {fig['fixed_s']:>8.1f} {fig['rows_per_s']:>11,} "
              f"{fig['rows_per_s_wall']:>12,} {fig['extrapolated_36m_s']:>8.1f}")
    rec = figures["reconcile"]
    print(f"{'reconcile = recompute + repair':<30} {rec['seconds']:>8.1f} {'':>8} {'':>11} {rec['rows_per_s_wall']:>12,} "
          f"{rec['extrapolated_36m_s']:>8.1f}")
    print(f"target for 36M clicks: under {TARGET_S}s each; met: {figures['meets_target']}")
    if "load_average_before_after" in figures:
        print(f"load average 1/5/15 min, before then after: {figures['load_average_before_after']}")


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.session import parse_utc

    parser = argparse.ArgumentParser(prog="python -m infra.bench.bench_reconcile", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", choices=["run", "generate"], default="run",
                        help="generate: only (re)write the bench keyspace (used by run, in a process of its own)")
    parser.add_argument("--clicks", type=int, default=100_000)
    parser.add_argument("--ads", type=int, default=0, help="distinct ads (default: clicks / 30)")
    parser.add_argument("--hour", type=parse_utc, help="the hour to use (default: the hour a day ago)")
    parser.add_argument("--earlier-clicks", type=int, default=-1,
                        help="clicks in each earlier hour of the horizon, dumped straight to S3 (default: --clicks)")
    parser.add_argument("--horizon-s", type=int, default=int(os.environ.get("RECONCILE_DUPLICATE_HORIZON_S", "10800")))
    parser.add_argument("--shards", type=int, default=int(os.environ.get("RAW_CLICK_SHARDS", "16")))
    parser.add_argument("--keep", action="store_true", help="keep the dumps, the DuckDB file and the clicks")
    args = parser.parse_args(argv)
    args.ads = args.ads or max(args.clicks // 30, 1)
    args.earlier_clicks = args.clicks if args.earlier_clicks < 0 else args.earlier_clicks
    args.hour = raw_hour(args.hour)
    if args.action == "generate":
        return generate(args)

    # Other work on the machine skews every figure: the load averages bracket the run.
    load_before = os.getloadavg()
    figures = run(args)
    figures["load_average_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    print_table(figures)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = REPO / "docs" / "benchmarks" / f"reconcile-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "make bench-reconcile CLICKS=" + str(args.clicks)
    body = {"benchmark": "reconcile", "at": stamp, "command": command, "argv": sys.argv[1:], "machine": machine_info(),
            "services_running": services_status(), "figures": figures}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(f"written to {path.relative_to(REPO)}")
    return 0


def raw_hour(hour: datetime | None) -> datetime:
    hour = hour or datetime.now(timezone.utc) - timedelta(days=1)
    return hour.replace(minute=0, second=0, microsecond=0)


if __name__ == "__main__":
    sys.exit(main())
