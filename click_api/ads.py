"""Ad registry rules and a bounded in-process cache of ads. No framework or storage imports."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

V = TypeVar("V")

AD_STATUS_ACTIVE = "active"
AD_STATUS_PAUSED = "paused"
AD_STATUSES = (AD_STATUS_ACTIVE, AD_STATUS_PAUSED)
MAX_URL_LENGTH = 2048


def validate_target_url(url: str) -> str:
    """Return the URL if it is an absolute http(s) URL with a host; raise ValueError otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"target URL is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("target URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("target URL must name a host")
    if any(ch in url for ch in "\r\n\t ") or "\\" in url:
        raise ValueError("target URL must not contain whitespace or backslashes")
    return url


def with_click_id(target_url: str, param: str, click_id: str) -> str:
    """Append the click ID to the registered URL's query, keeping its other parameters."""
    parts = urlsplit(target_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != param]
    query.append((param, click_id))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


class TTLCache(Generic[V]):
    """A thread-safe LRU cache whose entries also expire, so a paused ad stops within the TTL."""

    def __init__(self, max_size: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_size = max_size
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[str], V]) -> V:
        """The cached value, else ``load(key)``; if loading fails, an expired value is better than none."""
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
            if hit and hit[0] > now:
                self._items.move_to_end(key)
                return hit[1]
        try:
            value = load(key)
        except Exception:
            if hit is None:
                raise
            return hit[1]
        with self._lock:
            self._items[key] = (now + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
