"""The click endpoint under gunicorn against the real Cassandra and Redis."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from click_api.storage import Ad
from tests.integration.conftest import stored_clicks
from tests.services import click_base_url, infra, unique, wait_click_workers_reach_cassandra, wait_for

pytestmark = pytest.mark.integration


def test_valid_click_is_stored_once_and_redirected(http, ad, click_link, cassandra, cfg):
    url, impression_id = click_link(ad.ad_id, user_id="user-42")

    response = http.get(url, allow_redirects=False, headers={"Referer": "https://news.example/"})

    assert response.status_code == 302
    assert response.headers["Cache-Control"] == "no-store"
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "landing.example.com", urlsplit(ad.target_url).path)
    click_id = parse_qs(location.query)["clickagg_cid"][0]
    rows = stored_clicks(cassandra, cfg, impression_id)
    assert [(r.click_id, r.status, r.ad_id, r.advertiser_id, r.user_id, r.referrer) for r in rows] == [
        (click_id, "valid", ad.ad_id, ad.advertiser_id, "user-42", "https://news.example/")
    ]


def test_a_click_without_referrer_user_or_reason_writes_no_tombstones(http, ad, click_link, cassandra, cfg):
    url, impression_id = click_link(ad.ad_id)
    assert http.get(url, allow_redirects=False).status_code == 302
    [row] = stored_clicks(cassandra, cfg, impression_id)
    assert (row.user_id, row.referrer, row.reason) == (None, None, None)

    # Cassandra's own trace of a read of that row says how many tombstone cells it stepped over.
    result = cassandra.execute(
        f"SELECT * FROM {cfg['CASSANDRA_KEYSPACE']}.raw_clicks WHERE minute = %s AND shard = %s AND impression_id = %s",
        (row.minute, row.shard, impression_id), trace=True,
    )
    events = [event.description for event in result.get_query_trace(max_wait_sec=10).events]
    read = [e for e in events if "tombstone cells" in e]
    assert read and all(e.endswith("and 0 tombstone cells") for e in read), read


def test_repeat_click_is_redirected_and_stored_as_duplicate(http, ad, click_link, cassandra, cfg):
    url, impression_id = click_link(ad.ad_id)

    first = http.get(url, allow_redirects=False)
    second = http.get(url, allow_redirects=False)

    assert (first.status_code, second.status_code) == (302, 302)
    assert [r.status for r in stored_clicks(cassandra, cfg, impression_id)] == ["valid", "duplicate"]


def test_repeat_click_is_a_duplicate_even_with_redis_stopped(http, ad, click_link, cassandra, cfg):
    url, impression_id = click_link(ad.ad_id)
    assert http.get(url, allow_redirects=False).status_code == 302
    infra("redis", "stop")
    try:
        again = http.get(url, allow_redirects=False)
        other_url, other_impression = click_link(ad.ad_id)
        fresh = http.get(other_url, allow_redirects=False)
    finally:
        infra("redis", "start")

    assert (again.status_code, fresh.status_code) == (302, 302)
    assert [r.status for r in stored_clicks(cassandra, cfg, impression_id)] == ["valid", "duplicate"]
    assert [r.status for r in stored_clicks(cassandra, cfg, other_impression)] == ["valid"]


def test_expired_token_is_redirected_and_stored_as_expired(http, ad, click_link, cassandra, cfg):
    issued = int(time.time()) - cfg["WINDOWS"].token_lifetime - 60
    url, impression_id = click_link(ad.ad_id, issued_at=issued)

    response = http.get(url, allow_redirects=False)

    assert response.status_code == 302
    assert [r.status for r in stored_clicks(cassandra, cfg, impression_id)] == ["expired"]


def test_bot_click_is_redirected_and_labelled(http, ad, click_link, cassandra, cfg):
    url, impression_id = click_link(ad.ad_id)

    response = http.get(url, allow_redirects=False, headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"})

    assert response.status_code == 302
    assert [(r.status, r.reason) for r in stored_clicks(cassandra, cfg, impression_id)] == [
        ("invalid", "bot_user_agent")
    ]


@pytest.mark.parametrize(
    "mangle, status",
    [
        (lambda t: t[:-5], 400),  # truncated
        (lambda t: t.replace("v1.k1.", "v1.nokey."), 400),  # unknown key
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), 400),  # forged signature
        (lambda t: "garbage", 400),
    ],
)
def test_bad_tokens_get_400_and_store_nothing(http, ad, click_link, cassandra, cfg, mangle, status):
    url, impression_id = click_link(ad.ad_id)
    token = url.split("t=", 1)[1]

    response = http.get(f"{click_base_url()}/click", params={"t": mangle(token)}, headers={"Accept": "application/json"},
                        allow_redirects=False)

    assert response.status_code == status
    assert response.json()["error"]
    assert stored_clicks(cassandra, cfg, impression_id) == []


def test_unknown_and_paused_ads_store_nothing(http, store, ad, click_link, cassandra, cfg):
    paused = Ad(unique("it-paused"), ad.advertiser_id, ad.target_url, status="paused")
    store.put_ad(paused)
    unknown_url, unknown_impression = click_link(unique("no-such-ad"))
    paused_url, paused_impression = click_link(paused.ad_id)

    assert http.get(unknown_url, allow_redirects=False).status_code == 404
    assert http.get(paused_url, allow_redirects=False).status_code == 410
    assert stored_clicks(cassandra, cfg, unknown_impression) == []
    assert stored_clicks(cassandra, cfg, paused_impression) == []


def test_destination_cannot_be_injected(http, ad, click_link):
    url, _ = click_link(ad.ad_id)

    response = http.get(url + "&url=https://evil.example/&clickagg_cid=forged&redirect=https://evil.example/",
                        allow_redirects=False)

    location = urlsplit(response.headers["Location"])
    assert location.netloc == "landing.example.com"
    assert parse_qs(location.query)["clickagg_cid"] != ["forged"]
    assert len(parse_qs(location.query)["clickagg_cid"]) == 1


def test_cassandra_outage_spools_clicks_and_replays_each_exactly_once(http, ad, click_link, cassandra, cfg):
    warm_url, _ = click_link(ad.ad_id)
    assert http.get(warm_url, allow_redirects=False).status_code == 302  # the ad reaches the Redis mirror
    infra("cassandra", "stop")
    links = [click_link(ad.ad_id, user_id=f"u{i}") for i in range(20)]
    try:
        responses = [http.get(url, allow_redirects=False) for url, _ in links]
        readiness = http.get(f"{click_base_url()}/readyz").json()
    finally:
        infra("cassandra", "start")

    assert [r.status_code for r in responses] == [302] * 20
    assert readiness["checks"]["cassandra"].startswith("down")
    assert readiness["spool_depth"] == 20

    wait_for(lambda: http.get(f"{click_base_url()}/readyz").json()["spool_depth"] == 0, 120, "the spool to drain")
    wait_for(lambda: _answers(cassandra), 60, "this test's Cassandra session to reconnect")
    wait_click_workers_reach_cassandra(60)  # the tests after this one expect a whole service
    for (_, impression_id), response in zip(links, responses, strict=True):
        rows = stored_clicks(cassandra, cfg, impression_id)
        click_id = parse_qs(urlsplit(response.headers["Location"]).query)["clickagg_cid"][0]
        assert [(r.click_id, r.status) for r in rows] == [(click_id, "valid")]


def _answers(cassandra) -> bool:
    try:
        cassandra.execute("SELECT release_version FROM system.local")
        return True
    except Exception:
        return False
