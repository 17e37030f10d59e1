"""The Cassandra schema migrations and the operator CLI (ads, click URLs), against the real Cassandra."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from click_api import cli, events
from click_api.events import RequestInfo
from click_api.storage import CassandraStore
from click_api.tokens import Impression, new_impression_id, verify
from tests.services import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_keyspace(cassandra, monkeypatch):
    """A keyspace no migration has touched, named in the CLI's environment, dropped afterwards."""
    name = f"clickagg_test_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CASSANDRA_KEYSPACE", name)
    yield name
    cassandra.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


def test_migrations_create_the_schema_once_and_record_it(cassandra, fresh_keyspace, capsys):
    assert cli.main(["migrate"]) == 0
    assert cli.main(["migrate"]) == 0

    first, again = capsys.readouterr().out.strip().splitlines()
    assert first == f"keyspace {fresh_keyspace}: applied [1, 2]"
    assert again == f"keyspace {fresh_keyspace}: schema up to date"
    tables = {row.table_name for row in cassandra.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [fresh_keyspace])}
    assert {"ads", "raw_clicks", "clicks_by_impression", "late_click_hours", "schema_migrations"} <= tables
    assert sorted(row.version for row in cassandra.execute(f"SELECT version FROM {fresh_keyspace}.schema_migrations")) == [1, 2]


def test_the_cli_creates_lists_pauses_and_resumes_an_ad_and_mints_its_click_url(store, cfg, capsys):
    ad_id, advertiser_id = unique("cli-ad"), unique("cli-adv")

    assert cli.main(["ads", "create", "--ad-id", ad_id, "--advertiser-id", advertiser_id,
                     "--url", "javascript:alert(1)"]) == 2
    assert "error:" in capsys.readouterr().err
    assert store.get_ad(ad_id) is None

    assert cli.main(["ads", "create", "--ad-id", ad_id, "--advertiser-id", advertiser_id,
                     "--url", "https://shop.example.com/cli"]) == 0
    assert cli.main(["ads", "list"]) == 0
    assert f"{ad_id}\t{advertiser_id}\tactive\thttps://shop.example.com/cli" in capsys.readouterr().out.splitlines()

    capsys.readouterr()
    assert cli.main(["ads", "create", "--ad-id", ad_id, "--advertiser-id", unique("other-adv"),
                     "--url", "https://shop.example.com/cli"]) == 2
    assert f"ad {ad_id} belongs to advertiser {advertiser_id}" in capsys.readouterr().err
    assert store.get_ad(ad_id).advertiser_id == advertiser_id
    assert cli.main(["ads", "create", "--ad-id", ad_id, "--advertiser-id", advertiser_id,
                     "--url", "https://shop.example.com/cli?v=2"]) == 0  # its own advertiser may change the URL

    assert cli.main(["ads", "pause", "--ad-id", ad_id]) == 0
    assert store.get_ad(ad_id).status == "paused"
    assert cli.main(["ads", "resume", "--ad-id", ad_id]) == 0
    assert store.get_ad(ad_id).status == "active"
    assert cli.main(["ads", "pause", "--ad-id", unique("no-such-ad")]) == 1

    capsys.readouterr()
    assert cli.main(["mint", "--ad-id", ad_id, "--user-id", "u-7"]) == 0
    url = capsys.readouterr().out.strip()
    impression = verify(parse_qs(urlsplit(url).query)["t"][0], cfg["SIGNING_KEYS"])
    assert (urlsplit(url).path, impression.ad_id, impression.user_id) == ("/click", ad_id, "u-7")


def test_a_stored_click_is_written_with_the_raw_click_ttl(cassandra, cfg):
    store = CassandraStore(cassandra, cfg["CASSANDRA_KEYSPACE"], 3600, cfg["RAW_CLICK_SHARDS"])
    impression = Impression(new_impression_id(), unique("ttl-ad"), int(datetime.now(timezone.utc).timestamp()),
                            cfg["SIGNING_KEY_ID"], None)
    browser = RequestInfo("GET", "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0", "203.0.113.9", None, {})
    click = events.build_click(impression, "adv", browser, datetime.now(timezone.utc), events.VALID, None, b"salt")

    store.save_click(click)

    keyspace = cfg["CASSANDRA_KEYSPACE"]
    [raw] = cassandra.execute(f"SELECT TTL(status) AS ttl FROM {keyspace}.raw_clicks WHERE minute = %s AND shard = %s "
                              "AND impression_id = %s", (click.minute, click.shard(cfg["RAW_CLICK_SHARDS"]), click.impression_id))
    [by_impression] = cassandra.execute(f"SELECT TTL(status) AS ttl FROM {keyspace}.clicks_by_impression "
                                        "WHERE impression_id = %s", [click.impression_id])
    assert 3500 < raw.ttl <= 3600 and 3500 < by_impression.ttl <= 3600


def test_a_late_hour_is_pending_until_each_replay_pass_into_it_is_taken_up(cassandra, cfg):
    store = CassandraStore(cassandra, cfg["CASSANDRA_KEYSPACE"], 3600, cfg["RAW_CLICK_SHARDS"])
    hour = datetime(2000, 1, 1, random.randrange(24), tzinfo=timezone.utc) + timedelta(days=random.randrange(3000))
    first, second, third = uuid.uuid1(), uuid.uuid1(), uuid.uuid1()

    store.mark_late_hour(hour, first, hour + timedelta(hours=2))
    store.mark_late_hour(hour, first, hour + timedelta(hours=2, minutes=1))  # the same pass, a later click
    store.mark_late_hour(hour, second, hour + timedelta(hours=3))
    assert sorted(store.pending_late_hours()[hour]) == sorted([str(first), str(second)])

    store.take_late_hours({hour: [str(first)]})  # a run took up the first pass only
    assert store.pending_late_hours()[hour] == [str(second)]
    store.take_late_hours({hour: [str(second)]})
    assert hour not in store.pending_late_hours()
    store.mark_late_hour(hour, third, hour + timedelta(hours=4))
    assert store.pending_late_hours()[hour] == [str(third)]

    [row] = cassandra.execute(f"SELECT TTL(replayed_at) AS ttl FROM {cfg['CASSANDRA_KEYSPACE']}.late_click_hours "
                              "WHERE hour = %s", [hour])
    cassandra.execute(f"DELETE FROM {cfg['CASSANDRA_KEYSPACE']}.late_click_hours WHERE hour = %s", [hour])
    assert 3500 < row.ttl <= 3600
