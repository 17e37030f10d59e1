"""Every time window of the pipeline, in one place, with the order they must keep.

token lifetime <= Redis dedup TTL <= reconciliation duplicate horizon
    <= raw-click TTL in Cassandra <= retention of the S3 dumps

A click can only be billable while its token is alive, so two clicks of one impression are
never further apart than the token lifetime: every later window only has to cover that one.
docs/design.md explains each window; the README's configuration table names the variables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# Each raw click expires RAW_CLICK_TTL_S after it was stored, which is after its minute, so
# Cassandra holds a minute whole until that long after it. An hour of margin keeps clear of the edge.
TTL_MARGIN = timedelta(hours=1)


def oldest_held(now: datetime, raw_click_ttl: int) -> datetime:
    """The earliest moment whose raw clicks Cassandra still holds whole at ``now``."""
    return now - timedelta(seconds=raw_click_ttl) + TTL_MARGIN


@dataclasses.dataclass(frozen=True)
class Windows:
    """Durations in seconds."""

    token_lifetime: int = 1 * HOUR
    redis_dedup_ttl: int = 2 * HOUR
    duplicate_horizon: int = 3 * HOUR
    raw_click_ttl: int = 30 * DAY
    dump_retention: int = 400 * DAY
    rollup_lateness: int = 20
    rollup_lookback: int = 10 * MINUTE
    clock_skew: int = 10

    ENV = {
        "token_lifetime": "CLICK_TOKEN_LIFETIME_S",
        "redis_dedup_ttl": "CLICK_DEDUP_TTL_S",
        "duplicate_horizon": "RECONCILE_DUPLICATE_HORIZON_S",
        "raw_click_ttl": "RAW_CLICK_TTL_S",
        "dump_retention": "DUMP_RETENTION_S",
        "rollup_lateness": "ROLLUP_LATENESS_S",
        "rollup_lookback": "ROLLUP_LOOKBACK_S",
        "clock_skew": "CLICK_CLOCK_SKEW_S",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Windows:
        """Build the windows from environment variables, defaults for the ones not set."""
        values = {}
        for field, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[field] = int(raw)
            except ValueError:
                raise ValueError(f"{var} must be a whole number of seconds, got {raw!r}") from None
        windows = cls(**values)
        windows.check()
        return windows

    @property
    def late_after(self) -> int:
        """Seconds after its minute began past which a stored click is late: every minute rollup
        (a minute's run plus the lookback plus the lateness) has passed over it, so only the
        reconciliation counts it."""
        return MINUTE + self.rollup_lookback + self.rollup_lateness

    def check(self) -> None:
        """Raise ValueError when the windows are out of order or not positive."""
        chain = ["token_lifetime", "redis_dedup_ttl", "duplicate_horizon", "raw_click_ttl", "dump_retention"]
        for field in self.ENV:
            if getattr(self, field) < 0 or (field in chain and getattr(self, field) == 0):
                raise ValueError(f"{self.ENV[field]} must be positive")
        for shorter, longer in zip(chain, chain[1:]):
            if getattr(self, shorter) > getattr(self, longer):
                raise ValueError(
                    f"{self.ENV[shorter]} ({getattr(self, shorter)}s) must not exceed "
                    f"{self.ENV[longer]} ({getattr(self, longer)}s): clicks would be double counted or lost"
                )
        if self.rollup_lookback >= self.raw_click_ttl:
            raise ValueError("ROLLUP_LOOKBACK_S must be shorter than RAW_CLICK_TTL_S")

    def as_timedelta(self, field: str) -> timedelta:
        return timedelta(seconds=getattr(self, field))
