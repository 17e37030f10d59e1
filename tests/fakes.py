"""In-memory stand-ins for the click service's adapters, for unit tests only."""

from __future__ import annotations

from datetime import datetime

from click_api.events import Click
from click_api.storage import Ad


class FakeStore:
    """Ads and clicks in dicts; set ``down`` to make every call fail like an unreachable Cassandra."""

    def __init__(self, ads: list[Ad] | None = None):
        self.ads = {ad.ad_id: ad for ad in ads or []}
        self.clicks: dict[str, Click] = {}
        self.down = False
        self.ad_reads = 0
        self.late: dict[datetime, dict[str, datetime]] = {}  # hour -> replay ID -> replayed at

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("cassandra is down")

    def get_ad(self, ad_id: str) -> Ad | None:
        self._check()
        self.ad_reads += 1
        return self.ads.get(ad_id)

    def put_ad(self, ad: Ad) -> None:
        self._check()
        self.ads[ad.ad_id] = ad

    def save_click(self, click: Click) -> None:
        self._check()
        self.clicks[click.click_id] = click

    def mark_late_hour(self, hour: datetime, replay_id, replayed_at: datetime) -> None:
        self._check()
        self.late.setdefault(hour, {})[str(replay_id)] = replayed_at

    def pending_late_hours(self) -> dict[datetime, list[str]]:
        self._check()
        return {hour: sorted(passes) for hour, passes in self.late.items() if passes}

    def take_late_hours(self, replays: dict[datetime, list[str]]) -> None:
        self._check()
        for hour, replay_ids in replays.items():
            for replay_id in replay_ids:
                self.late.get(hour, {}).pop(replay_id, None)

    def has_billable_click(self, impression_id: str) -> bool:
        self._check()
        return any(
            c.impression_id == impression_id and c.status in ("valid", "duplicate") for c in self.clicks.values()
        )

    def ping(self) -> None:
        self._check()


class FakeDeduper:
    """SET NX semantics on a set; ``down`` answers None like an unreachable Redis."""

    def __init__(self):
        self.seen: set[str] = set()
        self.down = False

    def first_click(self, impression_id: str) -> bool | None:
        if self.down:
            return None
        if impression_id in self.seen:
            return False
        self.seen.add(impression_id)
        return True

    def forget(self, impression_id: str) -> None:
        self.seen.discard(impression_id)

    def ping(self) -> None:
        if self.down:
            raise ConnectionError("redis is down")


class FakeResponse:
    """What ``requests.get``/``requests.post`` return, reduced to what the code under test reads."""

    def __init__(self, body: dict, status_code: int = 200):
        self.body, self.status_code, self.text = body, status_code, str(body)

    def json(self) -> dict:
        return self.body
