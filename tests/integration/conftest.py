"""Fixtures on the real Cassandra and Redis of `make up`."""

from __future__ import annotations

import os
import time

import pytest
import redis as redis_lib
import requests

from click_api import config
from click_api.events import shard_of
from click_api.storage import Ad, CassandraStore, connect
from click_api.tokens import Impression, mint, new_impression_id
from tests.services import click_base_url, require_env, unique


@pytest.fixture(scope="session")
def cfg():
    require_env()
    return config.from_env(os.environ)


@pytest.fixture(scope="session")
def cassandra(cfg):
    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    session = cluster.connect()
    yield session
    cluster.shutdown()


@pytest.fixture(scope="session")
def store(cfg, cassandra):
    return CassandraStore(cassandra, cfg["CASSANDRA_KEYSPACE"], cfg["WINDOWS"].raw_click_ttl, cfg["RAW_CLICK_SHARDS"])


@pytest.fixture(scope="session")
def redis_client(cfg):
    return redis_lib.Redis.from_url(cfg["REDIS_URL"])


@pytest.fixture
def ad(store) -> Ad:
    """A fresh active ad, registered in Cassandra, unique to the test."""
    new = Ad(unique("it-ad"), unique("it-adv"), f"https://landing.example.com/{unique('p')}?src=test")
    store.put_ad(new)
    return new


@pytest.fixture
def click_link(cfg):
    """Return a signed click URL for an ad (optionally backdated, for expiry tests)."""

    def make(ad_id: str, user_id: str | None = None, issued_at: int | None = None) -> tuple[str, str]:
        impression = Impression(new_impression_id(), ad_id, issued_at or int(time.time()), cfg["SIGNING_KEY_ID"], user_id)
        return f"{click_base_url()}/click?t={mint(impression, cfg['SIGNING_KEYS'])}", impression.impression_id

    return make


@pytest.fixture(scope="session")
def http():
    session = requests.Session()
    session.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
    return session


def stored_clicks(cassandra, cfg, impression_id: str) -> list:
    """The raw_clicks rows of an impression, found through clicks_by_impression (no table scan)."""
    keyspace, shards = cfg["CASSANDRA_KEYSPACE"], cfg["RAW_CLICK_SHARDS"]
    index = cassandra.execute(
        f"SELECT clicked_at FROM {keyspace}.clicks_by_impression WHERE impression_id = %s", (impression_id,)
    )
    minutes = sorted({row.clicked_at.replace(second=0, microsecond=0) for row in index})
    rows = []
    for minute in minutes:
        rows += cassandra.execute(
            f"SELECT * FROM {keyspace}.raw_clicks WHERE minute = %s AND shard = %s AND impression_id = %s",
            (minute, shard_of(impression_id, shards), impression_id),
        )
    return sorted(rows, key=lambda r: (r.clicked_at, r.click_id))
