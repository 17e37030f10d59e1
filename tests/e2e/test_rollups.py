"""Late clicks and cross-minute repeats, rolled up by DAG runs that Airflow executes."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from click_api import config, events
from click_api.events import RequestInfo
from click_api.storage import Ad, CassandraStore, connect
from click_api.tokens import Impression, new_impression_id
from tests.e2e.conftest import run_rollup
from tests.services import unique, warehouse_sql

pytestmark = pytest.mark.e2e
BROWSER = RequestInfo("GET", "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0", "203.0.113.9", None, {})


@pytest.fixture(scope="module")
def cfg():
    return config.from_env(os.environ)


@pytest.fixture(scope="module")
def store(cfg):
    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    yield CassandraStore(cluster.connect(), cfg["CASSANDRA_KEYSPACE"], 3600, cfg["RAW_CLICK_SHARDS"])
    cluster.shutdown()


def arrive(store, cfg, ad: Ad, at: datetime, impression_id: str | None = None, status: str = events.VALID) -> str:
    """Store a click stamped ``at`` now, as a spool replay or a slow write would: return its impression."""
    impression = Impression(impression_id or new_impression_id(), ad.ad_id, int(at.timestamp()) - 5,
                            cfg["SIGNING_KEY_ID"], f"user-{new_impression_id()[:6]}")
    store.save_click(events.build_click(impression, ad.advertiser_id, BROWSER, at, status, None, b"salt"))
    return impression.impression_id


def minutes(ad: Ad) -> dict[str, tuple[int, int]]:
    rows = warehouse_sql(
        "SELECT minute_at, billable_clicks, duplicate_clicks FROM fct_clicks_minute WHERE ad_id = ? ORDER BY 1",
        [ad.ad_id],
    )
    return {minute: (billable, duplicates) for minute, billable, duplicates in rows}


def test_late_clicks_within_the_lookback_land_in_their_own_minute_once(airflow, store, cfg):
    ad = Ad(unique("late-ad"), unique("late-adv"), "https://landing.example.com/late")
    store.put_ad(ad)
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    m3, m2, m1 = (now - timedelta(minutes=k) for k in (3, 2, 1))
    arrive(store, cfg, ad, m3 + timedelta(seconds=10))

    run_rollup(airflow, m3, now)
    key = lambda m: m.replace(tzinfo=None).isoformat()  # noqa: E731
    assert minutes(ad) == {key(m3): (1, 0)}

    # After that run: a late click of minute m3, and an impression clicked at m2 and again at m1,
    # the repeat stored as "valid" (Redis flushed in between).
    arrive(store, cfg, ad, m3 + timedelta(seconds=20))
    repeated = arrive(store, cfg, ad, m2 + timedelta(seconds=5))
    arrive(store, cfg, ad, m1 + timedelta(seconds=5), impression_id=repeated)

    # The next scheduled run's window: its own minute plus the lookback.
    lookback = cfg["WINDOWS"].rollup_lookback
    assert lookback >= 4 * 60, "this test needs a lookback of at least four minutes"
    run_rollup(airflow, now - timedelta(seconds=lookback), now)

    assert minutes(ad) == {key(m3): (2, 0), key(m2): (1, 0), key(m1): (0, 1)}
    assert warehouse_sql("SELECT sum(billable_clicks) FROM fct_clicks_hour WHERE ad_id = ?", [ad.ad_id]) == [[3]]
