"""The click use case: verify, label, store durably, then redirect. No framework imports.

Storage and dedup are passed in (Cassandra and Redis in production, fakes in unit tests).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from click_api import events
from click_api.ads import AD_STATUS_ACTIVE, TTLCache, with_click_id
from click_api.events import Click, RequestInfo
from click_api.tokens import TokenError, verify

log = logging.getLogger(__name__)


class AdLike(Protocol):
    ad_id: str
    advertiser_id: str
    target_url: str
    status: str


class Store(Protocol):
    def get_ad(self, ad_id: str) -> AdLike | None: ...
    def save_click(self, click: Click) -> None: ...
    def has_billable_click(self, impression_id: str) -> bool: ...


class Deduper(Protocol):
    def first_click(self, impression_id: str) -> bool | None: ...
    def forget(self, impression_id: str) -> None: ...


class AdMirror(Protocol):
    def put(self, ad) -> None: ...
    def get(self, ad_id: str) -> AdLike | None: ...


class Spool(Protocol):
    def append(self, click: Click) -> None: ...


class AdUnavailable(Exception):
    """Neither Cassandra nor the mirror could say where this ad goes."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What /click answers: a redirect (with the stored click) or an error."""

    status_code: int
    location: str | None = None
    click: Click | None = None
    error: str | None = None
    reason: str | None = None  # the label counted in metrics
    spooled: bool = False


class ClickService:
    def __init__(
        self,
        store: Store,
        deduper: Deduper,
        keys: Mapping[str, bytes],
        token_lifetime: int,
        fingerprint_salt: bytes,
        click_id_param: str,
        ad_cache: TTLCache,
        spool: Spool | None = None,
        ad_mirror: AdMirror | None = None,
    ):
        self.store = store
        self.deduper = deduper
        self.keys = keys
        self.token_lifetime = token_lifetime
        self.fingerprint_salt = fingerprint_salt
        self.click_id_param = click_id_param
        self.ad_cache = ad_cache
        self.spool = spool
        self.ad_mirror = ad_mirror

    def handle(self, token: str | None, request: RequestInfo, now: datetime) -> Outcome:
        try:
            impression = verify(token, self.keys)
        except TokenError as error:
            return Outcome(400, error=str(error), reason=error.reason)

        try:
            ad = self.ad_cache.get(impression.ad_id, self._load_ad)
        except AdUnavailable:
            return Outcome(503, error="this ad cannot be looked up right now; please try again", reason="unavailable")
        if ad is None:
            return Outcome(404, error="this ad does not exist", reason="unknown_ad")
        if ad.status != AD_STATUS_ACTIVE:
            return Outcome(410, error="this ad is no longer running", reason="paused_ad")

        status, reason = self._label(impression, request, now)
        click = events.build_click(impression, ad.advertiser_id, request, now, status, reason, self.fingerprint_salt)
        spooled = self._persist(click)
        if spooled is None:
            if status == events.VALID:
                self.deduper.forget(impression.impression_id)
            return Outcome(503, error="the click could not be recorded; please try again", reason="unavailable")
        location = with_click_id(ad.target_url, self.click_id_param, click.click_id)
        return Outcome(302, location=location, click=click, reason=reason or status, spooled=spooled)

    def _load_ad(self, ad_id: str) -> AdLike | None:
        """The ad from Cassandra (copied to the mirror), or from the mirror when Cassandra fails."""
        try:
            ad = self.store.get_ad(ad_id)
        except Exception as error:
            mirrored = self.ad_mirror.get(ad_id) if self.ad_mirror else None
            if mirrored is None:
                log.warning("ad %s cannot be looked up (cassandra: %s; not in the mirror): answering 503", ad_id, error)
                raise AdUnavailable(ad_id) from error
            return mirrored
        if ad is not None and self.ad_mirror is not None:
            self.ad_mirror.put(ad)
        return ad

    def _label(self, impression, request: RequestInfo, now: datetime) -> tuple[str, str | None]:
        if events.is_expired(impression, now, self.token_lifetime):
            return events.EXPIRED, None
        reason = events.invalid_reason(request)
        if reason:
            return events.INVALID, reason
        first = self.deduper.first_click(impression.impression_id)
        if first is None:  # Redis unreachable: ask storage, which is keyed by impression
            first = self._first_in_storage(impression.impression_id)
        return (events.VALID, None) if first else (events.DUPLICATE, None)

    def _first_in_storage(self, impression_id: str) -> bool:
        """Whether storage has no billable click of the impression yet; True if it cannot tell.

        Labelling a repeat "valid" here costs nothing: the rollups bill only the impression's
        first click, whatever the labels say.
        """
        try:
            return not self.store.has_billable_click(impression_id)
        except Exception as error:  # Cassandra down too: the click is spooled as valid
            log.warning("duplicate check in storage failed for %s: %s", impression_id, error)
            return True

    def _persist(self, click: Click) -> bool | None:
        """Store the click: False when in Cassandra, True when spooled, None when nowhere."""
        try:
            self.store.save_click(click)
            return False
        except Exception as error:  # any driver failure: fall back to the spool
            log.warning("cassandra write failed for click %s: %s", click.click_id, error)
        if self.spool is None:
            return None
        try:
            self.spool.append(click)
            return True
        except OSError as error:
            log.error("spool write failed for click %s: %s", click.click_id, error)
            return None
