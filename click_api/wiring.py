"""Builds the real adapters (Cassandra, Redis, spool) from the app config."""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import redis

from click_api import metrics
from click_api.ads import TTLCache
from click_api.capture import ClickService
from click_api.spool import Spool

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    store: object
    deduper: object
    spool: Spool | None
    clicks: ClickService


def make_click_service(cfg, store, deduper, spool, ad_mirror=None) -> Services:
    clicks = ClickService(
        store=store,
        deduper=deduper,
        keys=cfg["SIGNING_KEYS"],
        token_lifetime=cfg["WINDOWS"].token_lifetime,
        fingerprint_salt=cfg["FINGERPRINT_SALT"],
        click_id_param=cfg["CLICK_ID_PARAM"],
        ad_cache=TTLCache(cfg["AD_CACHE_SIZE"], cfg["AD_CACHE_TTL_S"]),
        spool=spool,
        ad_mirror=ad_mirror,
    )
    return Services(store=store, deduper=deduper, spool=spool, clicks=clicks)


def build_services(cfg) -> Services:
    from click_api.admirror import RedisAdMirror
    from click_api.dedup import RedisDeduper
    from click_api.storage import CassandraStore, connect

    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    session = cluster.connect()
    store = CassandraStore(session, cfg["CASSANDRA_KEYSPACE"], cfg["WINDOWS"].raw_click_ttl, cfg["RAW_CLICK_SHARDS"])
    client = redis.Redis.from_url(cfg["REDIS_URL"], socket_timeout=0.2, socket_connect_timeout=0.2)
    deduper = RedisDeduper(client, cfg["WINDOWS"].redis_dedup_ttl)
    return make_click_service(cfg, store, deduper, Spool(cfg["SPOOL_DIR"]), RedisAdMirror(client))


def replay_once(services: Services, windows=None,
                clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> int:
    """Drain the spool into Cassandra if there is anything to drain and Cassandra answers.

    The spool-depth gauge is set first, so it shows the clicks waiting while Cassandra is still down.
    With ``windows`` (click_api.windows.Windows), a click that reaches Cassandra after every minute
    rollup has passed its minute is late: only the reconciliation counts it. Its hour is marked in
    ``late_click_hours`` once it is stored (and before the spool lets go of it), so that the next
    hourly reconciliation dumps the hour again and reconciles it again with the hours after it; the late
    clicks are also counted and logged by hour.
    """
    spool = services.spool
    if spool is None:
        return 0
    depth = spool.depth()
    metrics.SPOOL_DEPTH.set(depth)
    if depth == 0:
        return 0
    services.store.ping()
    late_hours: Counter[datetime] = Counter()
    late_after = timedelta(seconds=windows.late_after) if windows else None
    replay_id = uuid.uuid1()  # this pass's marks: one row per hour, however many of its clicks are late

    def save(click) -> None:
        services.store.save_click(click)
        now = clock()  # a long replay: now, not when it began
        if late_after is not None and click.minute < now - late_after:
            hour = click.minute.replace(minute=0)
            services.store.mark_late_hour(hour, replay_id, now)
            late_hours[hour] += 1

    try:
        count = spool.replay(save)
    finally:
        _report_late(late_hours, windows)
    metrics.REPLAYED.inc(count)
    metrics.SPOOL_DEPTH.set(spool.depth())
    return count


def _report_late(late_hours: Counter, windows) -> None:
    for hour, count in sorted(late_hours.items()):
        metrics.REPLAYED_LATE.inc(count)
        until = hour + timedelta(seconds=windows.duplicate_horizon)
        log.warning(
            "%d replayed clicks of the hour %s reached Cassandra after the minute rollups had passed their "
            "minutes. The hour is marked late: the next run of reconcile_clicks_hourly counts them, dumping "
            "the hour again and reconciling it again with the hours after it in the duplicate horizon, up to %s",
            count, f"{hour:%Y-%m-%dT%H:%M}Z", f"{until:%Y-%m-%dT%H:%M}Z")


def start_replayer(services: Services, interval: float, stop: threading.Event, windows=None) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(interval):
            try:
                count = replay_once(services, windows)
                if count:
                    log.info("replayed %d spooled clicks into cassandra", count)
            except Exception as error:  # Cassandra still down: try again next round
                log.warning("spool replay postponed: %s", error)

    thread = threading.Thread(target=loop, name="spool-replayer", daemon=True)
    thread.start()
    return thread
