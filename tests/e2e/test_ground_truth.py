"""A load-generator run, rolled up by an Airflow DAG run: the warehouse's per-(ad, minute) counts are the ground truth's."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from click_api import loadgen
from click_api.loadgen import DUPLICATE, INVALID, VALID
from tests.e2e.conftest import run_rollup
from tests.services import warehouse_sql

pytestmark = pytest.mark.e2e

# What each expected label adds to in the warehouse (the load generator's bots send a crawler's user agent).
COLUMN_OF = {VALID: "billable_clicks", DUPLICATE: "duplicate_clicks", INVALID: "invalid_bot_clicks"}
COLUMNS = tuple(COLUMN_OF.values())


def minute_of(seconds: float) -> datetime:
    return datetime.fromtimestamp(loadgen.minute_start(seconds), tz=timezone.utc)


def candidate_minutes(click: loadgen.SentClick) -> tuple[datetime, ...]:
    """The minutes the server's click time can fall in: it lies in the client's [sent, answered] window."""
    low, high = minute_of(click.sent_at - 0.001), minute_of(click.answered_at)
    return (low,) if low == high else (low, high)


def warehouse_cells(ad_ids: list[str]) -> Counter:
    rows = warehouse_sql(
        f"SELECT ad_id, minute_at, {', '.join(COLUMNS)} FROM fct_clicks_minute "
        f"WHERE ad_id IN ({', '.join('?' * len(ad_ids))})",
        ad_ids,
    )
    cells: Counter = Counter()
    for ad_id, minute, *counts in rows:
        at = datetime.fromisoformat(minute).replace(tzinfo=timezone.utc)
        for column, count in zip(COLUMNS, counts):
            cells[(ad_id, at, column)] += count
    return cells


def test_the_warehouse_counts_per_ad_and_minute_are_the_load_generators_ground_truth(airflow, tmp_path):
    path = tmp_path / "truth.jsonl"
    # About 80 s of clicks at 5/s, so the run spans minute boundaries and several minutes per ad.
    code = loadgen.main([
        "--clicks", "400", "--rate", "5", "--ads", "12", "--advertisers", "3", "--duplicates", "0.10",
        "--forged", "0.05", "--bots", "0.05", "--concurrency", "8", "--out", str(path), "--quiet",
    ])
    assert code == 0
    truth = loadgen.read_ground_truth(path)
    redirected = [c for c in truth.clicks if c.http_status == 302]
    assert Counter(c.expected for c in redirected) == {VALID: 320, DUPLICATE: 40, INVALID: 20}

    start = minute_of(min(c.sent_at for c in truth.clicks))
    end = minute_of(max(c.answered_at for c in truth.clicks)) + timedelta(minutes=1)
    run_rollup(airflow, start, end)
    cells = warehouse_cells([ad["ad_id"] for ad in truth.run["ads"]])

    # Clicks whose window lies in one minute are placed exactly; the few straddling a minute's
    # boundary must each account for one count in one of their two minutes, and nothing else may remain.
    remaining = Counter(cells)
    straddling = []
    for click in redirected:
        minutes = candidate_minutes(click)
        if len(minutes) == 1:
            remaining[(click.ad_id, minutes[0], COLUMN_OF[click.expected])] -= 1
        else:
            straddling.append(click)
    for click in sorted(straddling, key=candidate_minutes):
        cell = next((key for m in candidate_minutes(click)
                     if remaining[key := (click.ad_id, m, COLUMN_OF[click.expected])] > 0), None)
        assert cell is not None, f"click {click.click_id} is missing from both of its minutes"
        remaining[cell] -= 1
    assert {cell: n for cell, n in remaining.items() if n} == {}
    assert len({(ad, minute) for ad, minute, _ in cells}) > len(truth.run["ads"]), "expected several minutes per ad"
    assert sum(n for (_, _, column), n in cells.items() if column == "billable_clicks") == 320
