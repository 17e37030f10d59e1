"""A load-generator run's ground truth matches what is stored, click for click."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timezone

import pytest

from click_api import loadgen
from click_api.loadgen import DUPLICATE, INVALID, REJECTED, VALID
from tests.integration.conftest import stored_clicks

pytestmark = pytest.mark.integration


def test_ground_truth_matches_what_is_stored_click_for_click(cfg, cassandra, tmp_path):
    path = tmp_path / "truth.jsonl"

    code = loadgen.main([
        "--clicks", "300", "--ads", "20", "--advertisers", "3", "--duplicates", "0.10", "--forged", "0.05",
        "--bots", "0.05", "--concurrency", "16", "--out", str(path), "--quiet",
    ])

    assert code == 0
    truth = loadgen.read_ground_truth(path)
    assert Counter(c.expected for c in truth.clicks) == {VALID: 240, DUPLICATE: 30, REJECTED: 15, INVALID: 15}
    assert Counter(c.http_status for c in truth.clicks) == {302: 285, 400: 15}
    advertiser_of = {ad["ad_id"]: ad["advertiser_id"] for ad in truth.run["ads"]}

    by_impression = defaultdict(list)
    for click in truth.clicks:
        by_impression[click.impression_id].append(click)
    clicked_at = {}
    for impression_id, sent in by_impression.items():
        rows = stored_clicks(cassandra, cfg, impression_id)
        assert sorted((r.click_id, r.status, r.ad_id, r.advertiser_id) for r in rows) == sorted(
            (c.click_id, c.expected, c.ad_id, advertiser_of[c.ad_id]) for c in sent if c.expected != REJECTED
        ), f"impression {impression_id}"
        for row in rows:
            assert row.reason == ("bot_user_agent" if row.status == INVALID else None)
            clicked_at[row.click_id] = row.clicked_at.replace(tzinfo=timezone.utc)

    # The server's click time lies in the client's [send, answer] window (Cassandra keeps milliseconds).
    for click in truth.clicks:
        if click.expected != REJECTED:
            assert click.sent_at - 0.001 <= clicked_at[click.click_id].timestamp() <= click.answered_at

    # So the client's per-(ad, minute) billable counts are the server's, for every click it could place.
    by_server_minute, _ = loadgen.billable_by_ad_minute(truth.clicks, clicked_at)
    summary = truth.summary
    for row in summary["billable_by_ad_minute"]:
        assert by_server_minute[(row["ad_id"], row["minute"])] >= row["clicks"]
    placed = sum(row["clicks"] for row in summary["billable_by_ad_minute"])
    assert sum(by_server_minute.values()) == placed + summary["billable_minute_unplaced"] == 240
    assert summary["billable_by_ad"] == dict(sorted(Counter(c.ad_id for c in truth.clicks if c.expected == VALID).items()))
