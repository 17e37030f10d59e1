"""The raw click record and the rules that label it. No framework or storage imports."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import uuid
from datetime import datetime, timezone

import crawleruseragents

from click_api.tokens import Impression

# Labels stored in raw_clicks.status. Only "valid" is billable.
VALID = "valid"
DUPLICATE = "duplicate"
EXPIRED = "expired"
INVALID = "invalid"
STATUSES = (VALID, DUPLICATE, EXPIRED, INVALID)

# Reasons an otherwise genuine click is labelled invalid.
REASON_HEAD = "head_request"
REASON_PREFETCH = "prefetch"
REASON_BOT = "bot_user_agent"

# Headers browsers and link-preview services send when they fetch a link nobody clicked.
_PREFETCH_HEADERS = {
    "purpose": {"prefetch", "preview"},
    "sec-purpose": {"prefetch", "prefetch;prerender", "prerender"},
    "x-purpose": {"preview", "prefetch"},
    "x-moz": {"prefetch"},
}


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What /click knows about the HTTP request, independent of the web framework."""

    method: str
    user_agent: str
    client_ip: str
    referrer: str | None
    headers: dict[str, str]  # lower-case names


@dataclasses.dataclass(frozen=True)
class Click:
    """One raw click, as stored in Cassandra's raw_clicks table."""

    click_id: str
    impression_id: str
    ad_id: str
    advertiser_id: str
    clicked_at: datetime  # server UTC time, millisecond precision
    issued_at: datetime
    user_id: str | None
    fingerprint: str
    referrer: str | None
    status: str
    reason: str | None

    @property
    def minute(self) -> datetime:
        return minute_of(self.clicked_at)

    def shard(self, shards: int) -> int:
        return shard_of(self.impression_id, shards)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def shard_of(impression_id: str, shards: int) -> int:
    """Spread one minute's clicks over ``shards`` partitions; stable for a given impression."""
    return int(impression_id[:8], 16) % shards


def utc_from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def to_millis(moment: datetime) -> datetime:
    """Cassandra timestamps keep milliseconds; truncate so what is stored equals what is built."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def fingerprint(client_ip: str, user_agent: str, salt: bytes) -> str:
    """A keyed hash of IP and user agent: stable per client, not reversible to the IP."""
    return hashlib.blake2b(f"{client_ip}\n{user_agent}".encode(), key=salt[:64], digest_size=16).hexdigest()


@functools.lru_cache(maxsize=20_000)
def is_bot(user_agent: str) -> bool:
    """True for known crawlers, scrapers and link-preview agents (crawler-user-agents list)."""
    if not user_agent.strip():
        return True
    return crawleruseragents.is_crawler(user_agent)


def invalid_reason(request: RequestInfo) -> str | None:
    """Why a genuine token's click must not be billed, or None for a real click."""
    if request.method == "HEAD":
        return REASON_HEAD
    for name, values in _PREFETCH_HEADERS.items():
        if request.headers.get(name, "").strip().lower() in values:
            return REASON_PREFETCH
    if is_bot(request.user_agent):
        return REASON_BOT
    return None


def is_expired(impression: Impression, now: datetime, token_lifetime: int) -> bool:
    return now.timestamp() - impression.issued_at > token_lifetime


def new_click_id() -> str:
    return uuid.uuid4().hex


def build_click(
    impression: Impression,
    advertiser_id: str,
    request: RequestInfo,
    now: datetime,
    status: str,
    reason: str | None,
    fingerprint_salt: bytes,
    click_id: str | None = None,
) -> Click:
    return Click(
        click_id=click_id or new_click_id(),
        impression_id=impression.impression_id,
        ad_id=impression.ad_id,
        advertiser_id=advertiser_id,
        clicked_at=to_millis(now),
        issued_at=utc_from_unix(impression.issued_at),
        user_id=impression.user_id,
        fingerprint=fingerprint(request.client_ip, request.user_agent, fingerprint_salt),
        referrer=(request.referrer or None) and request.referrer[:1024],
        status=status,
        reason=reason,
    )
