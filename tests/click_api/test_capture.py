from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from click_api.events import RequestInfo
from click_api.spool import Spool, decode
from click_api.tokens import Impression, mint, new_impression_id
from click_api.wiring import make_click_service
from tests.conftest import unit_config

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
NOW = datetime(2024, 5, 1, 12, 0, 0, 123_456, tzinfo=timezone.utc)


class CountingDeduper:
    """Wraps a deduper and records which impressions it was asked about."""

    def __init__(self, inner):
        self.inner = inner
        self.asked: list[str] = []

    def first_click(self, impression_id):
        self.asked.append(impression_id)
        return self.inner.first_click(impression_id)

    def forget(self, impression_id):
        self.inner.forget(impression_id)


class BrokenSpool:
    def append(self, click):
        raise OSError("no space left on device")


@pytest.fixture
def cfg(tmp_path):
    return unit_config(tmp_path)


@pytest.fixture
def spool(cfg):
    return Spool(cfg["SPOOL_DIR"])


@pytest.fixture
def service(cfg, store, deduper, spool):
    return make_click_service(cfg, store, deduper, spool).clicks


def token_for(cfg, ad_id="ad-1", age_s=10, key_id="k1", impression_id=None, user_id=None):
    impression = Impression(
        impression_id or new_impression_id(), ad_id, int(NOW.timestamp()) - age_s, key_id, user_id
    )
    return mint(impression, cfg["SIGNING_KEYS"])


def browser(method="GET", user_agent=CHROME, headers=None):
    return RequestInfo(method, user_agent, "203.0.113.9", "https://news.example/", headers or {})


def test_valid_click_redirects_to_the_target_with_the_click_id(service, store, cfg):
    outcome = service.handle(token_for(cfg, user_id="u-1"), browser(), NOW)

    assert outcome.status_code == 302
    assert outcome.spooled is False
    location = urlsplit(outcome.location)
    assert (location.netloc, location.path) == ("shop.example.com", "/landing")
    assert parse_qs(location.query) == {"src": ["ad"], "clickagg_cid": [outcome.click.click_id]}
    assert list(store.clicks) == [outcome.click.click_id]
    stored = store.clicks[outcome.click.click_id]
    assert (stored.status, stored.reason, stored.ad_id, stored.advertiser_id) == ("valid", None, "ad-1", "adv-1")
    assert stored.user_id == "u-1"
    assert outcome.reason == "valid"


def test_second_click_of_an_impression_is_stored_as_duplicate(service, store, cfg):
    token = token_for(cfg)

    first = service.handle(token, browser(), NOW)
    second = service.handle(token, browser(), NOW)

    assert second.status_code == 302
    assert second.click.click_id != first.click.click_id
    assert [store.clicks[c].status for c in (first.click.click_id, second.click.click_id)] == ["valid", "duplicate"]


def test_click_with_redis_down_is_stored_valid(service, store, deduper, cfg):
    deduper.down = True

    outcome = service.handle(token_for(cfg), browser(), NOW)

    assert outcome.status_code == 302
    assert store.clicks[outcome.click.click_id].status == "valid"


def test_repeat_with_redis_down_is_found_duplicate_in_storage(service, store, deduper, cfg):
    token = token_for(cfg)
    service.handle(token, browser(), NOW)
    deduper.down = True

    outcome = service.handle(token, browser(), NOW)

    assert store.clicks[outcome.click.click_id].status == "duplicate"


def test_token_older_than_its_lifetime_is_stored_expired(service, store, cfg):
    outcome = service.handle(token_for(cfg, age_s=cfg["WINDOWS"].token_lifetime + 1), browser(), NOW)

    assert outcome.status_code == 302
    assert (store.clicks[outcome.click.click_id].status, outcome.reason) == ("expired", "expired")


def test_expired_click_does_not_claim_the_impression(service, store, deduper, cfg):
    impression_id = new_impression_id()

    service.handle(token_for(cfg, age_s=cfg["WINDOWS"].token_lifetime + 1, impression_id=impression_id), browser(), NOW)

    assert impression_id not in deduper.seen


def test_head_request_is_stored_invalid(service, store, cfg):
    outcome = service.handle(token_for(cfg), browser(method="HEAD"), NOW)

    stored = store.clicks[outcome.click.click_id]
    assert (outcome.status_code, stored.status, stored.reason) == (302, "invalid", "head_request")


def test_prefetch_is_stored_invalid(service, store, cfg):
    outcome = service.handle(token_for(cfg), browser(headers={"sec-purpose": "prefetch"}), NOW)

    assert (store.clicks[outcome.click.click_id].status, outcome.reason) == ("invalid", "prefetch")


def test_bot_click_is_invalid_and_does_not_claim_the_impression(cfg, store, deduper, spool):
    counting = CountingDeduper(deduper)
    service = make_click_service(cfg, store, counting, spool).clicks

    outcome = service.handle(token_for(cfg), browser(user_agent="Googlebot/2.1 (+http://www.google.com/bot.html)"), NOW)

    stored = store.clicks[outcome.click.click_id]
    assert (stored.status, stored.reason) == ("invalid", "bot_user_agent")
    assert counting.asked == []


def test_real_click_after_a_bot_preview_is_valid(service, store, cfg):
    token = token_for(cfg)
    service.handle(token, browser(user_agent="Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"), NOW)

    outcome = service.handle(token, browser(), NOW)

    assert store.clicks[outcome.click.click_id].status == "valid"


def test_unknown_ad_is_404_and_nothing_is_stored(service, store, cfg):
    outcome = service.handle(token_for(cfg, ad_id="ad-missing"), browser(), NOW)

    assert (outcome.status_code, outcome.reason, outcome.location) == (404, "unknown_ad", None)
    assert store.clicks == {}


def test_paused_ad_is_410_and_nothing_is_stored(service, store, cfg):
    outcome = service.handle(token_for(cfg, ad_id="ad-paused"), browser(), NOW)

    assert (outcome.status_code, outcome.reason, outcome.location) == (410, "paused_ad", None)
    assert store.clicks == {}


def test_forged_token_is_400_and_nothing_is_stored(service, store, deduper, cfg):
    forged = mint(Impression(new_impression_id(), "ad-1", int(NOW.timestamp()), "k1"), {"k1": b"guessed"})

    outcome = service.handle(forged, browser(), NOW)

    assert (outcome.status_code, outcome.reason) == (400, "bad_signature")
    assert outcome.error
    assert store.clicks == {}
    assert deduper.seen == set()


def test_missing_token_is_400(service, store):
    outcome = service.handle(None, browser(), NOW)

    assert (outcome.status_code, outcome.reason) == (400, "missing")
    assert store.clicks == {}


def test_click_is_spooled_when_the_store_is_down(service, store, spool, cfg):
    service.handle(token_for(cfg), browser(), NOW)  # the ad is now cached
    store.down = True

    outcome = service.handle(token_for(cfg), browser(), NOW)

    assert (outcome.status_code, outcome.spooled) == (302, True)
    assert urlsplit(outcome.location).netloc == "shop.example.com"
    lines = [line for path in spool.directory.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert [decode(line) for line in lines] == [outcome.click]
    assert outcome.click.status == "valid"


def test_click_is_503_and_the_impression_released_when_store_and_spool_fail(cfg, store, deduper):
    service = make_click_service(cfg, store, deduper, BrokenSpool()).clicks
    service.handle(token_for(cfg), browser(), NOW)  # the ad is now cached
    token = token_for(cfg)
    store.down = True

    failed = service.handle(token, browser(), NOW)
    store.down = False
    retried = service.handle(token, browser(), NOW)

    assert (failed.status_code, failed.location, failed.reason) == (503, None, "unavailable")
    assert retried.status_code == 302
    assert store.clicks[retried.click.click_id].status == "valid"


def test_click_is_503_when_the_store_fails_and_there_is_no_spool(cfg, store, deduper):
    service = make_click_service(cfg, store, deduper, None).clicks
    service.handle(token_for(cfg), browser(), NOW)
    store.down = True

    assert service.handle(token_for(cfg), browser(), NOW).status_code == 503


def test_ad_is_read_once_for_many_clicks(service, store, cfg):
    outcomes = [service.handle(token_for(cfg), browser(), NOW) for _ in range(3)]

    assert [o.status_code for o in outcomes] == [302, 302, 302]
    assert store.ad_reads == 1


def test_unknown_ad_is_remembered_too(service, store, cfg):
    service.handle(token_for(cfg, ad_id="ad-missing"), browser(), NOW)
    service.handle(token_for(cfg, ad_id="ad-missing"), browser(), NOW)

    assert store.ad_reads == 1


def test_store_down_before_the_ad_is_known_answers_503_without_claiming(service, store, deduper, spool, cfg, caplog):
    store.down = True

    outcome = service.handle(token_for(cfg), browser(), NOW)

    assert (outcome.status_code, outcome.reason, outcome.location) == (503, "unavailable", None)
    assert deduper.seen == set()
    assert spool.depth() == 0
    assert "cannot be looked up" in caplog.text and "answering 503" in caplog.text


def test_expired_cache_entry_is_used_while_the_store_is_down(tmp_path, store, deduper):
    cfg = unit_config(tmp_path, AD_CACHE_TTL_S=0)
    spool = Spool(cfg["SPOOL_DIR"])
    service = make_click_service(cfg, store, deduper, spool).clicks
    service.handle(token_for(cfg), browser(), NOW)
    store.down = True

    outcome = service.handle(token_for(cfg), browser(), NOW)

    assert (outcome.status_code, outcome.spooled) == (302, True)
    assert urlsplit(outcome.location).netloc == "shop.example.com"
    assert spool.depth() == 1


class DictAdMirror:
    def __init__(self):
        self.ads = {}

    def put(self, ad):
        self.ads[ad.ad_id] = ad

    def get(self, ad_id):
        return self.ads.get(ad_id)


def test_ads_read_from_the_store_are_copied_to_the_mirror(cfg, store, deduper, spool):
    mirror = DictAdMirror()
    service = make_click_service(cfg, store, deduper, spool, mirror).clicks

    service.handle(token_for(cfg, ad_id="ad-2"), browser(), NOW)

    assert mirror.ads == {"ad-2": store.ads["ad-2"]}


def test_mirrored_ad_redirects_while_the_store_is_down(cfg, store, deduper, spool):
    mirror = DictAdMirror()
    mirror.put(store.ads["ad-2"])
    service = make_click_service(cfg, store, deduper, spool, mirror).clicks
    store.down = True

    outcome = service.handle(token_for(cfg, ad_id="ad-2"), browser(), NOW)

    assert (outcome.status_code, outcome.spooled) == (302, True)
    assert urlsplit(outcome.location).netloc == "other.example.org"
    assert spool.depth() == 1
