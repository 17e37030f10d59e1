import os
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from click_api import create_app
from click_api.spool import Spool
from click_api.tokens import MAX_ID_LENGTH, Impression, mint, new_impression_id, verify
from click_api.wiring import make_click_service
from tests.conftest import unit_config

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
BROWSER = {"User-Agent": CHROME}


def token_for(app, ad_id="ad-1", user_id=None):
    impression = Impression(new_impression_id(), ad_id, int(time.time()), "k1", user_id)
    return mint(impression, app.config["SIGNING_KEYS"])


def click_ids(location: str) -> list[str]:
    return parse_qs(urlsplit(location).query).get("clickagg_cid", [])


def clicks_total(client, outcome: str) -> float:
    body = client.get("/metrics").get_data(as_text=True)
    match = re.search(rf'^clickagg_clicks_total{{outcome="{outcome}"}} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_click_redirects_to_the_target_and_is_not_cached(client, app, store):
    response = client.get("/click", query_string={"t": token_for(app)}, headers=BROWSER)

    assert response.status_code == 302
    assert response.headers["Cache-Control"] == "no-store"
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "shop.example.com", "/landing")
    [click] = store.clicks.values()
    assert parse_qs(location.query) == {"src": ["ad"], "clickagg_cid": [click.click_id]}
    assert click.status == "valid"


def test_extra_query_parameters_cannot_change_the_destination(client, app, store):
    query = {"t": token_for(app), "url": "https://evil.example/", "next": "https://evil.example/", "clickagg_cid": "x"}

    response = client.get("/click", query_string=query, headers=BROWSER)

    location = response.headers["Location"]
    assert urlsplit(location).netloc == "shop.example.com"
    assert "evil.example" not in location
    assert click_ids(location) == list(store.clicks)


def test_bad_token_is_400_json_when_json_is_accepted(client, store):
    response = client.get("/click?t=not-a-token", headers={**BROWSER, "Accept": "application/json"})

    assert response.status_code == 400
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["status"] == 400
    assert "malformed" in body["error"]
    assert store.clicks == {}


def test_bad_token_is_an_html_page_that_does_not_reflect_the_token(client):
    response = client.get("/click", query_string={"t": "<script>alert(1)</script>"}, headers=BROWSER)

    assert response.status_code == 400
    assert response.content_type == "text/html; charset=utf-8"
    body = response.get_data(as_text=True)
    assert "<h1>400</h1>" in body
    assert "<script>" not in body


def test_non_ascii_token_is_400(client):
    assert client.get("/click?t=v1.k1.e30.%C3%A9", headers=BROWSER).status_code == 400


def test_missing_token_is_400(client):
    assert client.get("/click", headers=BROWSER).status_code == 400


def test_unknown_ad_is_404(client, app, store):
    response = client.get(
        "/click", query_string={"t": token_for(app, "ad-gone")}, headers={**BROWSER, "Accept": "application/json"}
    )

    assert response.status_code == 404
    assert response.get_json() == {"error": "this ad does not exist", "status": 404}
    assert store.clicks == {}


def test_paused_ad_is_410(client, app, store):
    response = client.get("/click", query_string={"t": token_for(app, "ad-paused")}, headers=BROWSER)

    assert response.status_code == 410
    assert "no longer running" in response.get_data(as_text=True)
    assert store.clicks == {}


def test_head_click_redirects_and_is_stored_invalid(client, app, store):
    response = client.head("/click", query_string={"t": token_for(app)}, headers=BROWSER)

    assert response.status_code == 302
    [click] = store.clicks.values()
    assert (click.status, click.reason) == ("invalid", "head_request")


def test_prefetch_header_reaches_the_labelling(client, app, store):
    client.get("/click", query_string={"t": token_for(app)}, headers={**BROWSER, "Sec-Purpose": "prefetch"})

    [click] = store.clicks.values()
    assert (click.status, click.reason) == ("invalid", "prefetch")


def test_empty_user_agent_is_stored_as_bot(client, app, store):
    client.get("/click", query_string={"t": token_for(app)}, headers={"User-Agent": ""})

    [click] = store.clicks.values()
    assert (click.status, click.reason) == ("invalid", "bot_user_agent")


def test_referrer_and_user_reach_the_stored_click(client, app, store):
    client.get(
        "/click", query_string={"t": token_for(app, user_id="u-1")}, headers={**BROWSER, "Referer": "https://news.example/"}
    )

    [click] = store.clicks.values()
    assert (click.referrer, click.user_id) == ("https://news.example/", "u-1")


def test_impressions_mints_a_click_url_whose_token_verifies(client, app):
    response = client.post("/impressions", json={"ad_id": "ad-2", "user_id": "u-9"})

    assert response.status_code == 201
    body = response.get_json()
    url = urlsplit(body["click_url"])
    assert (url.scheme, url.netloc, url.path) == ("http", "clicks.test", "/click")
    impression = verify(parse_qs(url.query)["t"][0], app.config["SIGNING_KEYS"])
    assert (impression.ad_id, impression.user_id, impression.key_id) == ("ad-2", "u-9", "k1")
    assert impression.impression_id == body["impression_id"]
    assert abs(impression.issued_at - time.time()) < 60


def test_minted_click_url_redirects(client, store):
    url = client.post("/impressions", json={"ad_id": "ad-2"}).get_json()["click_url"]

    response = client.get(url.removeprefix("http://clicks.test"), headers=BROWSER)

    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).netloc == "other.example.org"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "not json", "content_type": "application/json"},
        {"json": ["ad-1"]},
        {"json": {}},
        {"json": {"ad_id": ""}},
        {"json": {"ad_id": 1}},
        {"json": {"ad_id": "ad-1", "user_id": 5}},
    ],
    ids=["not-json", "list", "no-ad", "empty-ad", "numeric-ad", "numeric-user"],
)
def test_impressions_rejects_bad_bodies_with_400(client, kwargs):
    response = client.post("/impressions", headers={"Accept": "application/json"}, **kwargs)

    assert response.status_code == 400
    assert response.get_json()["status"] == 400


def test_impressions_for_an_unknown_ad_is_404_with_the_id_escaped(client):
    response = client.post("/impressions", json={"ad_id": "<script>x</script>"})

    assert response.status_code == 404
    body = response.get_data(as_text=True)
    assert "&lt;script&gt;x&lt;/script&gt;" in body
    assert "<script>" not in body


@pytest.fixture
def guarded_client(tmp_path, store, deduper):
    cfg = unit_config(tmp_path, MINT_TOKEN="mint-secret")
    services = make_click_service(cfg, store, deduper, Spool(cfg["SPOOL_DIR"]))
    return create_app(cfg, services=services).test_client()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "mint-secre"}])
def test_impressions_needs_the_mint_token_when_one_is_set(guarded_client, headers):
    response = guarded_client.post("/impressions", json={"ad_id": "ad-1"}, headers=headers)

    assert response.status_code == 401


def test_impressions_accepts_the_right_mint_token(guarded_client):
    response = guarded_client.post(
        "/impressions", json={"ad_id": "ad-1"}, headers={"Authorization": "Bearer mint-secret"}
    )

    assert response.status_code == 201


def test_impressions_never_hands_out_a_url_that_click_rejects(client):
    longest = client.post("/impressions", json={"ad_id": "ad-1", "user_id": "u" * MAX_ID_LENGTH})
    too_long = client.post("/impressions", json={"ad_id": "ad-1", "user_id": "u" * (MAX_ID_LENGTH + 1)})

    assert longest.status_code == 201
    url = longest.get_json()["click_url"]
    assert client.get(url.removeprefix("http://clicks.test"), headers=BROWSER).status_code == 302
    assert too_long.status_code == 400


def test_healthz(client):
    response = client.get("/healthz")

    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_reports_every_service_ok(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {
        "ready": True, "checks": {"cassandra": "ok", "redis": "ok"}, "spool_depth": 0, "worker": os.getpid(),
    }


def test_readyz_reports_cassandra_and_redis_down(client, store, deduper):
    store.down = True
    deduper.down = True

    body = client.get("/readyz").get_json()

    assert body["checks"] == {"cassandra": "down: ConnectionError", "redis": "down: ConnectionError"}
    assert body["ready"] is True  # clicks still go to the spool


def test_readyz_counts_spooled_clicks(client, app, store):
    client.get("/click", query_string={"t": token_for(app)}, headers=BROWSER)  # caches the ad
    store.down = True
    response = client.get("/click", query_string={"t": token_for(app)}, headers=BROWSER)

    assert response.status_code == 302
    assert client.get("/readyz").get_json()["spool_depth"] == 1


def test_readyz_is_503_when_cassandra_is_down_and_there_is_no_spool(tmp_path, store, deduper):
    cfg = unit_config(tmp_path)
    client = create_app(cfg, services=make_click_service(cfg, store, deduper, None)).test_client()
    store.down = True

    response = client.get("/readyz")

    assert (response.status_code, response.get_json()["ready"]) == (503, False)


def test_metrics_count_clicks_by_outcome(client, app):
    before = clicks_total(client, "valid")

    client.get("/click", query_string={"t": token_for(app)}, headers=BROWSER)

    assert clicks_total(client, "valid") == before + 1


def test_metrics_count_rejected_tokens_by_reason(client):
    before = clicks_total(client, "bad_signature")

    client.get("/click", query_string={"t": "v1.k1.e30.forged"}, headers=BROWSER)

    assert clicks_total(client, "bad_signature") == before + 1
