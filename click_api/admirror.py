"""A copy of each ad the service has read, kept in Redis, so redirects survive a Cassandra outage."""

from __future__ import annotations

import json
import logging

import redis

from click_api.storage import Ad

log = logging.getLogger(__name__)


class RedisAdMirror:
    def __init__(self, client: redis.Redis, ttl: int = 7 * 24 * 3600, prefix: str = "clk:ad:"):
        self.client = client
        self.ttl = ttl
        self.prefix = prefix

    def put(self, ad: Ad) -> None:
        try:
            value = json.dumps([ad.advertiser_id, ad.target_url, ad.status])
            self.client.set(self.prefix + ad.ad_id, value, ex=self.ttl)
        except redis.RedisError as error:
            log.warning("could not mirror ad %s to redis: %s", ad.ad_id, error)

    def get(self, ad_id: str) -> Ad | None:
        """The mirrored ad, or None if Redis does not have it (or is down too)."""
        try:
            value = self.client.get(self.prefix + ad_id)
        except redis.RedisError as error:
            log.warning("redis unavailable for ad %s: %s", ad_id, error)
            return None
        if value is None:
            return None
        advertiser_id, target_url, status = json.loads(value)
        return Ad(ad_id, advertiser_id, target_url, status)
