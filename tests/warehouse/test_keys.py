"""Advertisers' API keys: issued, listed and revoked through the service and its CLI; only hashes stored."""

from __future__ import annotations

from datetime import datetime

import pytest

from warehouse import api, connect, keys_cli, schema
from warehouse.server import create_app

TOKEN = "admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
QUERY = {"granularity": "minute", "from": "2026-01-01T10:00", "to": "2026-01-01T11:00"}


@pytest.fixture
def make_app(tmp_path):
    path = str(tmp_path / "w.duckdb")
    con = connect(path)
    schema.migrate(con)
    minute = datetime(2026, 1, 1, 10, 5)
    con.execute("INSERT INTO dim_ads VALUES ('ad-1', 'adv-1', ?, ?)", [minute, minute])
    con.execute("INSERT INTO fct_clicks_minute VALUES (?, 'ad-1', 'adv-1', 4, 1, 0, 0, 0, 0, 0, 3, ?)", [minute, minute])
    con.close()
    apps = []

    def make(**config):
        app = create_app({"WAREHOUSE_PATH": path, "ADMIN_TOKEN": TOKEN, "THREADS": 1, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["warehouse"].close()


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def create(client, advertiser_id="adv-1") -> dict:
    response = client.post("/internal/api-keys", json={"advertiser_id": advertiser_id}, headers=ADMIN)
    assert response.status_code == 201
    return response.get_json()


def read(client, key: str):
    return client.get("/v1/ads/ad-1/series", query_string=QUERY, headers={"Authorization": f"Bearer {key}"})


# Issuing and storing


def test_a_new_key_reads_its_advertisers_ad(client):
    key = create(client)

    response = read(client, key["api_key"])

    assert response.status_code == 200
    assert response.get_json()["rows"] == [["2026-01-01T10:05:00+00:00", 4, 1, 0, 0, 3]]
    assert key["advertiser_id"] == "adv-1" and key["revoked_at"] is None
    assert api.KEY_PATTERN.match(key["api_key"]).group(1) == key["key_id"]


def test_only_a_salted_hash_of_the_secret_is_stored(client):
    first, second = create(client), create(client)

    stored = dict(client.application.extensions["warehouse"].execute(
        "SELECT key_id, key_hash FROM dim_api_keys").fetchall())

    for key in (first, second):
        secret = key["api_key"].split("_", 2)[2]
        assert secret not in stored[key["key_id"]]
        assert stored[key["key_id"]].startswith("sha256$")
        assert api.secret_matches(secret, stored[key["key_id"]])
        assert not api.secret_matches(secret + "x", stored[key["key_id"]])
    assert stored[first["key_id"]].split("$")[1] != stored[second["key_id"]].split("$")[1]  # distinct salts


def test_a_listing_never_shows_a_secret_or_hash(client):
    first, other = create(client, "adv-1"), create(client, "adv-2")

    everything = client.get("/internal/api-keys", headers=ADMIN).get_json()["keys"]
    one = client.get("/internal/api-keys", query_string={"advertiser_id": "adv-2"}, headers=ADMIN).get_json()["keys"]

    assert {k["key_id"] for k in everything} == {first["key_id"], other["key_id"]}
    assert [k["key_id"] for k in one] == [other["key_id"]]
    assert all(set(k) == {"key_id", "advertiser_id", "created_at", "revoked_at"} for k in everything)


@pytest.mark.parametrize("body", [{}, {"advertiser_id": ""}, {"advertiser_id": 7}, {"advertiser_id": "x" * 201}],
                         ids=["missing", "empty", "number", "too-long"])
def test_a_key_needs_an_advertiser(client, body):
    response = client.post("/internal/api-keys", json=body, headers=ADMIN)

    assert response.status_code == 400
    assert "advertiser_id" in response.get_json()["error"]


@pytest.mark.parametrize(("method", "path"), [("post", "/internal/api-keys"), ("get", "/internal/api-keys"),
                                              ("post", "/internal/api-keys/abc/revoke"),
                                              ("post", "/internal/compactions/clicks-minute")])
def test_key_management_needs_the_admin_token(client, method, path):
    response = getattr(client, method)(path, json={"advertiser_id": "adv-1"}, headers={"Authorization": "Bearer no"})

    assert response.status_code == 401
    assert "WAREHOUSE_ADMIN_TOKEN" in response.get_json()["error"]


# Revocation


def test_a_revoked_key_is_refused_at_once_even_with_a_long_cache(make_app):
    client = make_app(API_KEY_CACHE_TTL_S=3600).test_client()
    key = create(client)
    assert read(client, key["api_key"]).status_code == 200  # now cached

    revoked = client.post(f"/internal/api-keys/{key['key_id']}/revoke", headers=ADMIN)
    response = read(client, key["api_key"])

    assert revoked.status_code == 200
    assert revoked.get_json()["revoked_at"] is not None
    assert response.status_code == 401
    assert response.get_json()["error"] == f"this API key was revoked at {revoked.get_json()['revoked_at']}; ask for a new one"


def test_revoking_twice_keeps_the_first_time(client):
    key = create(client)

    first = client.post(f"/internal/api-keys/{key['key_id']}/revoke", headers=ADMIN).get_json()
    second = client.post(f"/internal/api-keys/{key['key_id']}/revoke", headers=ADMIN).get_json()

    assert second["revoked_at"] == first["revoked_at"]


def test_revoking_an_unknown_key_is_a_404(client):
    response = client.post("/internal/api-keys/0000000000000000/revoke", headers=ADMIN)

    assert response.status_code == 404
    assert "no API key '0000000000000000'" in response.get_json()["error"]


def test_the_key_cache_holds_a_key_for_its_ttl_only(make_app):
    app = make_app()
    now = [1000.0]
    app.extensions["api_key_cache"] = api.KeyCache(5.0, clock=lambda: now[0])
    client = app.test_client()
    key = create(client)
    assert read(client, key["api_key"]).status_code == 200
    # A change that bypasses the service's revoke endpoint is only seen when the cache entry expires.
    app.extensions["warehouse"].execute("UPDATE dim_api_keys SET revoked_at = now()::TIMESTAMP")

    now[0] += 4.9
    cached = read(client, key["api_key"]).status_code
    now[0] += 0.2
    expired = read(client, key["api_key"]).status_code

    assert (cached, expired) == (200, 401)


# The CLI, talking to the service through Flask's test client


class FlaskTransport:
    """Stands in for ``requests.request``: sends the CLI's calls to the Flask test client."""

    def __init__(self, client):
        self.client, self.calls = client, []

    def __call__(self, method, url, json=None, params=None, headers=None, timeout=None):
        path = url.removeprefix("http://warehouse.test")
        self.calls.append((method, path))
        response = self.client.open(path, method=method, json=json, query_string=params, headers=headers)
        return FakeResponse(response.status_code, response.get_json())


class FakeResponse:
    def __init__(self, status_code: int, body):
        self.status_code, self.body, self.text = status_code, body, str(body)

    def json(self):
        return self.body


@pytest.fixture
def cli(client, monkeypatch, capsys):
    import requests

    transport = FlaskTransport(client)
    monkeypatch.setattr(requests, "request", transport)
    monkeypatch.setenv("WAREHOUSE_URL", "http://warehouse.test")
    monkeypatch.setenv("WAREHOUSE_ADMIN_TOKEN", TOKEN)

    def run(*argv):
        code = keys_cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.transport = transport
    return run


def test_the_cli_creates_a_key_that_works_and_says_it_is_shown_once(cli, client):
    code, out, err = cli("keys", "create", "--advertiser-id", "adv-1")

    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert code == 0
    assert fields["advertiser_id"].strip() == "adv-1"
    assert read(client, fields["api_key"].strip()).status_code == 200
    assert "cannot be shown again" in err


def test_the_cli_lists_and_revokes(cli, client):
    key = create(client)

    code_list, listing, _ = cli("keys", "list", "--advertiser-id", "adv-1")
    code_revoke, revoked, _ = cli("keys", "revoke", "--key-id", key["key_id"])

    assert (code_list, code_revoke) == (0, 0)
    assert listing.splitlines()[0].split(" | ")[:2] == ["key_id          ", "advertiser_id"]
    assert key["key_id"] in listing.splitlines()[2]
    assert revoked.startswith(f"revoked {key['key_id']} of adv-1 at ")
    assert read(client, key["api_key"]).status_code == 401
    assert cli.transport.calls[-1] == ("POST", f"/internal/api-keys/{key['key_id']}/revoke")


def test_the_cli_reports_the_services_refusal(cli, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_ADMIN_TOKEN", "wrong")

    code, out, err = cli("keys", "create", "--advertiser-id", "adv-1")

    assert code == 1
    assert out == ""
    assert err.startswith("error: the warehouse answered 401: this endpoint needs")


def test_the_cli_explains_an_unreachable_service(monkeypatch, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("WAREHOUSE_URL", f"http://127.0.0.1:{port}")

    code = keys_cli.main(["keys", "list"])

    assert code == 1
    assert "cannot reach the warehouse service" in capsys.readouterr().err


def test_the_cli_requires_an_action():
    with pytest.raises(SystemExit) as exit_info:
        keys_cli.main(["keys"])

    assert exit_info.value.code == 2
