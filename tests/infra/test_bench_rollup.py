"""The rollup benchmark's choice of window (no services)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from click_api.windows import Windows, oldest_held
from infra.bench.bench_rollup import batch_window, caught_up


@pytest.mark.parametrize("now", [
    datetime(2026, 11, 28, 19, 3, 27, 123456, tzinfo=timezone.utc),
    datetime(2026, 11, 28, 0, 0, tzinfo=timezone.utc),
    datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
])
def test_the_batch_window_is_whole_aligned_minutes_that_the_job_still_accepts(now):
    start, end = batch_window(now, 5)

    assert end - start == timedelta(minutes=5)
    assert (start.second, start.microsecond, start.minute % 5) == (0, 0, 0)
    assert start >= oldest_held(now, Windows().raw_click_ttl)
    assert now - timedelta(hours=2, minutes=5) <= start and end <= now - timedelta(hours=1, minutes=55)


NOW = datetime(2026, 11, 28, 19, 3, 27, tzinfo=timezone.utc)


@pytest.mark.parametrize(("watermark", "expected"), [
    (None, False),
    (datetime(2026, 11, 28, 17, 14, tzinfo=timezone.utc), False),
    (datetime(2026, 11, 28, 19, 0, tzinfo=timezone.utc), False),
    (datetime(2026, 11, 28, 19, 1, tzinfo=timezone.utc), True),
    (datetime(2026, 11, 28, 19, 3, tzinfo=timezone.utc), True),
])
def test_the_freshness_run_starts_once_the_rollup_runs_on_schedule(watermark, expected):
    assert caught_up(watermark, NOW) is expected
