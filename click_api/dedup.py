"""Redis fast path for duplicate detection. Only a hint: storage keeps the guarantee."""

from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)


class RedisDeduper:
    """``SET NX`` on the impression ID: the first click wins, later ones are duplicates."""

    def __init__(self, client: redis.Redis, ttl: int, prefix: str = "clk:imp:"):
        self.client = client
        self.ttl = ttl
        self.prefix = prefix

    def first_click(self, impression_id: str) -> bool | None:
        """True for the first click of an impression, False for a repeat, None if Redis is unreachable."""
        try:
            return bool(self.client.set(self.prefix + impression_id, 1, nx=True, ex=self.ttl))
        except redis.RedisError as error:
            log.warning("redis unavailable for dedup, relying on storage: %s", error)
            return None

    def forget(self, impression_id: str) -> None:
        """Undo a claim whose click could not be stored, so a retry is not taken for a duplicate."""
        try:
            self.client.delete(self.prefix + impression_id)
        except redis.RedisError as error:
            log.warning("redis unavailable to release %s: %s", impression_id, error)

    def ping(self) -> None:
        self.client.ping()
