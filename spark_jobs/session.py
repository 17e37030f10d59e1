"""SparkSession construction and the arguments every job shares."""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from click_api.windows import Windows

REPO = Path(__file__).resolve().parents[1]


def parse_utc(text: str) -> datetime:
    """Parse an ISO-8601 instant; naive values are taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _seconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {value}")
    return value


def window_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--start", required=True, type=parse_utc, help="interval start (inclusive), ISO-8601 UTC")
    parser.add_argument("--end", required=True, type=parse_utc, help="interval end (exclusive), ISO-8601 UTC")
    parser.add_argument("--clock-skew-s", type=_seconds, default=Windows.from_env(os.environ).clock_skew,
                        help="how far the minting server's clock may run ahead of the click server's "
                             "(CLICK_CLOCK_SKEW_S)")
    return parser


# The jars under CLICKAGG_SPARK_JARS that only s3a needs. spark-submit copies every --jars file into
# each run's work folder, and the AWS bundle alone is 280 MB: the minute rollup, which never
# touches S3, would copy it once a minute.
S3_JAR_PREFIXES = ("hadoop-aws-", "aws-java-sdk-bundle-")


def spark_jars(environ: Mapping[str, str], s3: bool) -> str:
    """spark-submit's ``--jars``: the jars under CLICKAGG_SPARK_JARS a job needs, comma-separated
    (empty when there are none). The Cassandra connector's always (the session loads its SQL
    extensions), the S3 ones only when ``s3``: the job reads or writes the S3 dumps."""
    jars_dir = Path(environ.get("CLICKAGG_SPARK_JARS", str(REPO / ".local" / "spark" / "jars")))
    return ",".join(str(p) for p in sorted(jars_dir.glob("*.jar")) if s3 or not p.name.startswith(S3_JAR_PREFIXES))


def submit_options(environ: Mapping[str, str], s3: bool) -> dict:
    """The SparkSubmitOperator arguments every DAG's Spark task shares (see the README's table)."""
    return {
        "jars": spark_jars(environ, s3) or None,
        "driver_memory": environ.get("SPARK_DRIVER_MEMORY", "2g"),
        "conf": {"spark.sql.shuffle.partitions": environ.get("SPARK_SHUFFLE_PARTITIONS", "4")},
        "env_vars": {"PYTHONPATH": str(REPO)},
        "conn_id": "spark_default",
    }


def build_session(app_name: str, environ: Mapping[str, str], master: str | None = None):
    """A SparkSession wired to Cassandra and S3 from the environment (see the README's table)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    jars_dir = environ.get("CLICKAGG_SPARK_JARS", "")
    jars = sorted(glob.glob(os.path.join(jars_dir, "*.jar"))) if jars_dir else []
    settings = {
        "spark.jars": ",".join(jars),
        "spark.sql.extensions": "com.datastax.spark.connector.CassandraSparkExtensions",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": environ.get("SPARK_SHUFFLE_PARTITIONS", "4"),
        "spark.sql.adaptive.enabled": "true",
        # The jobs cache a DataFrame once and read it two or three times within minutes (the
        # window's clicks, the counted cells). Compressing the cached columns cost more CPU than
        # it saved: on the 3M-click benchmarks, the rollup job took about 12% and the recompute
        # about 15% less time without it (docs/benchmarks.md).
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        "spark.ui.enabled": environ.get("SPARK_UI_ENABLED", "false"),
        "spark.ui.showConsoleProgress": "false",
        "spark.cassandra.connection.host": environ.get("CASSANDRA_HOST", "127.0.0.1"),
        "spark.cassandra.connection.port": environ.get("CASSANDRA_PORT", "9042"),
        "spark.cassandra.connection.localDC": environ.get("CASSANDRA_LOCAL_DC", "datacenter1"),
        "spark.cassandra.input.consistency.level": "LOCAL_QUORUM",
        # Partition reads in flight per task in the direct joins. The connector's default, 512, held
        # so many result pages that dumping a 3M-click hour ran a 2 GB driver out of memory.
        "spark.cassandra.concurrent.reads": environ.get("SPARK_CASSANDRA_CONCURRENT_READS", "32"),
        "spark.hadoop.fs.s3a.endpoint": environ.get("S3_ENDPOINT", ""),
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(environ.get("S3_ENDPOINT", "").startswith("https")).lower(),
        "spark.hadoop.fs.s3a.endpoint.region": environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.access.key": environ.get("AWS_ACCESS_KEY_ID", ""),
        "spark.hadoop.fs.s3a.secret.key": environ.get("AWS_SECRET_ACCESS_KEY", ""),
    }
    if master:
        # Only when run without spark-submit (tests, a plain python call): spark-submit sets the master.
        settings["spark.master"] = master
    for key, value in settings.items():
        if value != "":
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(environ.get("SPARK_LOG_LEVEL", "WARN"))
    return spark
