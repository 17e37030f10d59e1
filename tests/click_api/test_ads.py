from urllib.parse import parse_qs, urlsplit

import pytest

from click_api.ads import MAX_URL_LENGTH, TTLCache, validate_target_url, with_click_id


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example.com/landing?src=ad",
        "http://shop.example.com",
        "https://shop.example.com:8443/a/b#top",
        "https://127.0.0.1/",
    ],
)
def test_absolute_http_urls_are_accepted_unchanged(url):
    assert validate_target_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://files.example.com/a",
        "data:text/html,<script>alert(1)</script>",
        "/relative/path",
        "shop.example.com/landing",
        "https://",
        "https:///path-only",
        "https://shop.example.com/a b",
        "https://shop.example.com/\r\nSet-Cookie: x=1",
        "https://shop.example.com/\tx",
        " https://shop.example.com/",
        "https://shop.example.com\\@evil.example/",
        "https://shop.example.com/" + "a" * MAX_URL_LENGTH,
    ],
    ids=[
        "javascript", "ftp", "data", "relative", "no-scheme", "no-host", "empty-host", "space", "crlf", "tab",
        "leading-space", "backslash", "too-long",
    ],
)
def test_unsafe_or_incomplete_urls_are_rejected(url):
    with pytest.raises(ValueError):
        validate_target_url(url)


def test_url_of_exactly_the_maximum_length_is_accepted():
    url = "https://shop.example.com/" + "a" * (MAX_URL_LENGTH - len("https://shop.example.com/"))

    assert validate_target_url(url) == url


def test_click_id_is_appended_and_existing_parameters_kept():
    url = with_click_id("https://shop.example.com/landing?src=ad&utm=x", "clickagg_cid", "c1")

    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "shop.example.com", "/landing")
    assert parse_qs(parts.query) == {"src": ["ad"], "utm": ["x"], "clickagg_cid": ["c1"]}


def test_click_id_is_added_to_a_url_without_a_query():
    assert with_click_id("https://other.example.org/", "clickagg_cid", "c1") == "https://other.example.org/?clickagg_cid=c1"


def test_existing_click_id_parameter_is_replaced_not_duplicated():
    url = with_click_id("https://shop.example.com/?clickagg_cid=old&a=1&clickagg_cid=older", "clickagg_cid", "new")

    assert parse_qs(urlsplit(url).query) == {"a": ["1"], "clickagg_cid": ["new"]}


def test_fragment_is_preserved_after_the_query():
    url = with_click_id("https://shop.example.com/p?x=1#reviews", "clickagg_cid", "c1")

    assert url == "https://shop.example.com/p?x=1&clickagg_cid=c1#reviews"


def test_blank_parameters_are_kept():
    url = with_click_id("https://shop.example.com/?empty=&x=1", "clickagg_cid", "c1")

    assert parse_qs(urlsplit(url).query, keep_blank_values=True) == {"empty": [""], "x": ["1"], "clickagg_cid": ["c1"]}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts loads and answers from a dict (None for unknown keys)."""

    def __init__(self, values):
        self.values = values
        self.calls: list[str] = []

    def __call__(self, key):
        self.calls.append(key)
        return self.values.get(key)


def test_cache_serves_a_hit_without_loading_again():
    load = Loader({"a": 1})
    cache = TTLCache(max_size=10, ttl=30, clock=Clock())

    assert [cache.get("a", load), cache.get("a", load)] == [1, 1]
    assert load.calls == ["a"]


def test_cache_entry_expires_after_its_ttl():
    clock, load = Clock(), Loader({"a": 1})
    cache = TTLCache(max_size=10, ttl=30, clock=clock)
    cache.get("a", load)

    clock.now += 29.9
    cache.get("a", load)
    assert load.calls == ["a"]

    clock.now += 0.1
    load.values["a"] = 2
    assert cache.get("a", load) == 2
    assert load.calls == ["a", "a"]


def test_cache_evicts_the_least_recently_used_entry_at_max_size():
    load = Loader({"a": 1, "b": 2, "c": 3})
    cache = TTLCache(max_size=2, ttl=30, clock=Clock())
    cache.get("a", load)
    cache.get("b", load)
    cache.get("a", load)  # "b" is now the least recently used

    cache.get("c", load)

    assert len(cache) == 2
    cache.get("a", load)
    cache.get("b", load)
    assert load.calls == ["a", "b", "c", "b"]


def test_cache_remembers_unknown_keys_too():
    load = Loader({})
    cache = TTLCache(max_size=10, ttl=30, clock=Clock())

    assert cache.get("missing", load) is None
    assert cache.get("missing", load) is None
    assert load.calls == ["missing"]


def test_cache_does_not_keep_a_failed_load():
    cache = TTLCache(max_size=10, ttl=30, clock=Clock())

    def failing(key):
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        cache.get("a", failing)
    assert len(cache) == 0


def test_cache_serves_an_expired_value_when_reloading_fails():
    clock, load = Clock(), Loader({"a": 1})
    cache = TTLCache(max_size=10, ttl=30, clock=clock)
    cache.get("a", load)
    clock.now += 31

    def failing(key):
        raise ConnectionError("down")

    assert cache.get("a", failing) == 1
