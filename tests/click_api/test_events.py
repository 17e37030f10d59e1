from datetime import datetime, timedelta, timezone

import pytest

from click_api.events import (
    REASON_BOT,
    REASON_HEAD,
    REASON_PREFETCH,
    RequestInfo,
    build_click,
    fingerprint,
    invalid_reason,
    is_expired,
    minute_of,
    shard_of,
)
from click_api.tokens import Impression

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
NOW = datetime(2024, 5, 1, 12, 34, 56, 789_654, tzinfo=timezone.utc)
IMPRESSION = Impression("0123456789abcdef0123456789abcdef", "ad-1", int(NOW.timestamp()) - 30, "k1", "user-7")


def browser_request(method="GET", user_agent=CHROME, headers=None, referrer=None, client_ip="203.0.113.9"):
    return RequestInfo(method, user_agent, client_ip, referrer, headers or {})


def test_ordinary_browser_click_has_no_invalid_reason():
    assert invalid_reason(browser_request()) is None


def test_head_request_is_invalid():
    assert invalid_reason(browser_request(method="HEAD")) == REASON_HEAD


@pytest.mark.parametrize(
    "headers",
    [
        {"purpose": "prefetch"},
        {"sec-purpose": "prefetch"},
        {"sec-purpose": "prefetch;prerender"},
        {"purpose": " Prefetch "},
        {"x-purpose": "preview"},
        {"x-moz": "prefetch"},
    ],
)
def test_prefetch_headers_are_invalid(headers):
    assert invalid_reason(browser_request(headers=headers)) == REASON_PREFETCH


def test_unrelated_purpose_value_is_not_a_prefetch():
    assert invalid_reason(browser_request(headers={"purpose": "navigate"})) is None


@pytest.mark.parametrize(
    "user_agent",
    [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "",
        "   ",
    ],
    ids=["googlebot", "slackbot", "facebook", "empty", "blank"],
)
def test_bot_user_agents_are_invalid(user_agent):
    assert invalid_reason(browser_request(user_agent=user_agent)) == REASON_BOT


def test_head_is_reported_before_bot():
    assert invalid_reason(browser_request(method="HEAD", user_agent="")) == REASON_HEAD


def test_token_is_not_expired_at_exactly_its_lifetime():
    now = datetime.fromtimestamp(IMPRESSION.issued_at + 3600, tz=timezone.utc)

    assert is_expired(IMPRESSION, now, token_lifetime=3600) is False


def test_token_is_expired_one_second_after_its_lifetime():
    now = datetime.fromtimestamp(IMPRESSION.issued_at + 3601, tz=timezone.utc)

    assert is_expired(IMPRESSION, now, token_lifetime=3600) is True


def test_token_issued_just_now_is_not_expired():
    now = datetime.fromtimestamp(IMPRESSION.issued_at, tz=timezone.utc)

    assert is_expired(IMPRESSION, now, token_lifetime=1) is False


def test_fingerprint_is_stable_and_hides_the_ip():
    first = fingerprint("203.0.113.9", CHROME, b"salt")

    assert first == fingerprint("203.0.113.9", CHROME, b"salt")
    assert "203.0.113.9" not in first
    assert len(first) == 32 and int(first, 16) >= 0


def test_fingerprint_depends_on_ip_user_agent_and_salt():
    base = fingerprint("203.0.113.9", CHROME, b"salt")

    assert fingerprint("203.0.113.10", CHROME, b"salt") != base
    assert fingerprint("203.0.113.9", CHROME + " x", b"salt") != base
    assert fingerprint("203.0.113.9", CHROME, b"pepper") != base


@pytest.mark.parametrize(("shards", "expected"), [
    (1, [0, 0, 0, 0, 0, 0]),
    (7, [0, 1, 1, 2, 3, 5]),
    (16, [0, 1, 15, 0, 15, 8]),
])
def test_shard_comes_from_the_impression_id_alone(shards, expected):
    # The shard is part of raw_clicks' partition key: every process (a worker, the spool replayer,
    # a later release) must put an impression's clicks in the same partition, so the values are pinned.
    impression_ids = [f"{n:08x}" + "0" * 24 for n in (0, 1, 15, 16, 0xFFFFFFFF, 0x12345678)]

    assert [shard_of(i, shards) for i in impression_ids] == expected


def test_shard_spreads_impressions_over_every_shard():
    impression_ids = [f"{n:08x}" + "f" * 24 for n in range(64)]

    assert {shard_of(i, 16) for i in impression_ids} == set(range(16))


def test_minute_of_truncates_seconds_and_microseconds():
    assert minute_of(NOW) == datetime(2024, 5, 1, 12, 34, tzinfo=timezone.utc)


def test_build_click_fills_every_field():
    request = browser_request(referrer="https://news.example/article")

    click = build_click(IMPRESSION, "adv-1", request, NOW, "valid", None, b"salt", click_id="c" * 32)

    assert click.click_id == "c" * 32
    assert (click.impression_id, click.ad_id, click.advertiser_id) == (IMPRESSION.impression_id, "ad-1", "adv-1")
    assert click.clicked_at == datetime(2024, 5, 1, 12, 34, 56, 789_000, tzinfo=timezone.utc)
    assert click.issued_at == datetime(2024, 5, 1, 12, 34, 26, tzinfo=timezone.utc)
    assert click.user_id == "user-7"
    assert click.fingerprint == fingerprint("203.0.113.9", CHROME, b"salt")
    assert click.referrer == "https://news.example/article"
    assert (click.status, click.reason) == ("valid", None)
    assert click.minute == datetime(2024, 5, 1, 12, 34, tzinfo=timezone.utc)


def test_build_click_truncates_a_long_referrer_to_1024_characters():
    referrer = "https://news.example/" + "a" * 2000

    click = build_click(IMPRESSION, "adv-1", browser_request(referrer=referrer), NOW, "valid", None, b"salt")

    assert click.referrer == referrer[:1024]


@pytest.mark.parametrize("referrer", [None, ""])
def test_build_click_stores_no_referrer_as_none(referrer):
    click = build_click(IMPRESSION, "adv-1", browser_request(referrer=referrer), NOW, "valid", None, b"salt")

    assert click.referrer is None


def test_build_click_generates_distinct_click_ids():
    clicks = [build_click(IMPRESSION, "adv-1", browser_request(), NOW, "valid", None, b"salt") for _ in range(3)]

    assert len({c.click_id for c in clicks}) == 3


def test_build_click_keeps_the_label_it_is_given():
    click = build_click(IMPRESSION, "adv-1", browser_request(), NOW + timedelta(hours=2), "invalid", REASON_BOT, b"s")

    assert (click.status, click.reason) == ("invalid", REASON_BOT)
