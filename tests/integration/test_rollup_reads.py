"""How the minute rollup reads Cassandra: Spark's physical plan, from the job's own --explain."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan() -> str:
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    job = subprocess.run(
        [sys.executable, "-m", "spark_jobs.fct_clicks_minute", "--start", (end - timedelta(minutes=5)).isoformat(),
         "--end", end.isoformat(), "--explain", "--master", "local[2]"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return job.stdout


def reads_of(plan: str, table: str) -> list[str]:
    """The plan's lines that read ``table`` of the rollup's keyspace."""
    name = re.compile(rf"\b{os.environ.get('CASSANDRA_KEYSPACE', 'clickagg')}\.{table}\b")
    return [line.strip(" +-:") for line in plan.splitlines() if name.search(line)]


def test_raw_clicks_are_read_one_minute_and_shard_partition_at_a_time(plan):
    reads = reads_of(plan, "raw_clicks")

    assert reads, plan
    assert all(re.match(r"Cassandra Direct Join \[minute = minute#\d+, shard = shard#\d+\] ", r) for r in reads), reads


def test_earlier_clicks_are_read_one_impression_partition_at_a_time(plan):
    reads = reads_of(plan, "clicks_by_impression")

    assert len(reads) == 1, plan
    assert re.match(r"Cassandra Direct Join \[impression_id = impression_id#\d+\] ", reads[0]), reads


def test_explain_writes_nothing(plan):
    assert "fct_clicks_minute {" not in plan  # the summary line of a run that wrote its output
