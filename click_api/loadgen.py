"""Load generator for /click: registers ads, pre-mints impressions, clicks them over HTTP, writes the ground truth.

    python -m click_api.loadgen --clicks 10000 --ads 100 --rate 1000 --concurrency 32 \\
        --duplicates 0.10 --forged 0.02 --bots 0.05 [--duration 30] [--out FILE]

Ad popularity is Zipf-skewed (ad 0 is the hottest). Every click is planned, and its token minted,
before the timed phase. Clicks go out over keep-alive HTTP/1.1 connections driven by one asyncio
loop (uvloop when installed), with a small response parser of its own: one process sends several
thousand requests a second on two cores, so it takes little CPU from the server it measures.

The ground truth is a JSON-lines file: a ``run`` record (options and ads), one ``click`` record per
click sent, and a ``summary`` record. A click record carries the impression ID, the click ID from
the redirect's Location, the ad, the expected label (``valid``, ``duplicate``, ``invalid`` or
``rejected`` for a forged token), the HTTP status and the client's send and answer times: the
server's ``clicked_at`` lies between them, so its minute is known unless the two straddle a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from click_api import config
from click_api.tokens import Impression, mint, new_impression_id

# Expected outcome of each planned click; the first three are labels raw_clicks.status stores.
VALID = "valid"
DUPLICATE = "duplicate"
INVALID = "invalid"
REJECTED = "rejected"  # forged token: 400, stored nowhere
EXPECTED_STATUS = {VALID: 302, DUPLICATE: 302, INVALID: 302, REJECTED: 400}

BROWSER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "python-requests/2.31.0",
)
# How many impressions a duration-only run pre-mints per second of duration: above what two
# cores can serve, so the plan does not run out; --clicks lowers or raises it.
DURATION_CLICKS_PER_S = 6000


# ---------------------------------------------------------------- planning (pure)


@dataclasses.dataclass(frozen=True)
class Mix:
    """Shares of the clicks that are repeats, forged tokens and bots; the rest are first clicks."""

    duplicates: float = 0.0
    forged: float = 0.0
    bots: float = 0.0

    def counts(self, clicks: int) -> dict[str, int]:
        """How many clicks of each expected label a plan of ``clicks`` holds (rounded, summing to clicks)."""
        if min(self.duplicates, self.forged, self.bots) < 0 or self.duplicates + self.forged + self.bots > 1:
            raise ValueError("the shares of duplicates, forged tokens and bots must be >= 0 and add up to at most 1")
        counts = {
            DUPLICATE: round(clicks * self.duplicates),
            REJECTED: round(clicks * self.forged),
            INVALID: round(clicks * self.bots),
        }
        counts[VALID] = clicks - sum(counts.values())
        if counts[VALID] < 0:
            counts[INVALID] += counts[VALID]
            counts[VALID] = 0
        if counts[DUPLICATE] and not counts[VALID]:
            raise ValueError("duplicates re-click earlier valid clicks: the plan needs some valid clicks")
        return counts


@dataclasses.dataclass(frozen=True)
class LoadAd:
    ad_id: str
    advertiser_id: str
    target_url: str


@dataclasses.dataclass(frozen=True)
class PlannedClick:
    seq: int
    impression_id: str
    ad_id: str
    advertiser_id: str
    expected: str
    token: str
    user_agent: str
    repeat_of: int | None = None  # seq of the impression's first click (duplicates only)

    @property
    def is_bot(self) -> bool:
        return self.user_agent in BOT_AGENTS


def make_ads(run_id: str, count: int, advertisers: int, prefix: str = "lg") -> list[LoadAd]:
    """``count`` ads of the run spread round-robin over ``advertisers`` advertisers."""
    if count < 1 or advertisers < 1:
        raise ValueError("a load run needs at least one ad and one advertiser")
    return [
        LoadAd(
            f"{prefix}-{run_id}-ad-{i:05d}",
            f"{prefix}-{run_id}-adv-{i % advertisers:03d}",
            f"https://landing.example.com/{prefix}/{i}?src=loadgen",
        )
        for i in range(count)
    ]


def zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative weights of ranks 1..n with P(rank k) proportional to 1/k**s."""
    if n < 1 or s < 0:
        raise ValueError("zipf needs n >= 1 and s >= 0")
    cum, total = [], 0.0
    for k in range(1, n + 1):
        total += 1.0 / k**s
        cum.append(total)
    return cum


def sample_zipf(rng: random.Random, n: int, s: float, k: int) -> list[int]:
    """``k`` indexes in [0, n), index 0 the most popular."""
    return rng.choices(range(n), cum_weights=zipf_cum_weights(n, s), k=k)


def forge_token(token: str, rng: random.Random) -> str:
    """The token with a signature made by a key the server does not have (a 'bad_signature' token)."""
    body, _, _ = token.rpartition(".")
    digest = hmac.new(rng.randbytes(32), body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def arrange_kinds(counts: Mapping[str, int], rng: random.Random) -> list[str]:
    """Shuffle the labels so that no duplicate comes before the first valid click."""
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rng.shuffle(kinds)
    seen_valid = False
    for i, kind in enumerate(kinds):
        if kind == VALID:
            seen_valid = True
        elif kind == DUPLICATE and not seen_valid:
            j = kinds.index(VALID, i + 1)
            kinds[i], kinds[j] = VALID, DUPLICATE
            seen_valid = True
    return kinds


def build_plan(
    ads: Sequence[LoadAd],
    clicks: int,
    mix: Mix,
    rng: random.Random,
    sign: Callable[[Impression], str],
    key_id: str,
    issued_at: int,
    zipf_s: float = 1.1,
    users: int = 10_000,
    new_id: Callable[[], str] = new_impression_id,
) -> list[PlannedClick]:
    """Plan ``clicks`` clicks: fresh impressions of Zipf-chosen ads, repeats of earlier valid ones,
    forged tokens and bots, in shuffled order, each with its signed (or forged) token."""
    kinds = arrange_kinds(mix.counts(clicks), rng)
    ad_picks = iter(sample_zipf(rng, len(ads), zipf_s, clicks))
    plan: list[PlannedClick] = []
    firsts: list[PlannedClick] = []  # valid first clicks, the impressions duplicates re-click
    for seq, kind in enumerate(kinds):
        if kind == DUPLICATE:
            first = rng.choice(firsts)
            plan.append(dataclasses.replace(first, seq=seq, expected=DUPLICATE, repeat_of=first.seq))
            continue
        ad = ads[next(ad_picks)]
        impression = Impression(new_id(), ad.ad_id, issued_at, key_id, f"lg-user-{rng.randrange(users)}")
        token = sign(impression)
        if kind == REJECTED:
            token = forge_token(token, rng)
        agent = rng.choice(BOT_AGENTS if kind == INVALID else BROWSER_AGENTS)
        planned = PlannedClick(seq, impression.impression_id, ad.ad_id, ad.advertiser_id, kind, token, agent)
        plan.append(planned)
        if kind == VALID:
            firsts.append(planned)
    return plan


def request_bytes(host: str, port: int, token: str, user_agent: str) -> bytes:
    """The raw HTTP/1.1 GET /click request for one token (tokens are URL-safe as they are)."""
    return (
        f"GET /click?t={token} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {user_agent}\r\n"
        "Accept: text/html\r\n\r\n"
    ).encode("latin-1")


# ---------------------------------------------------------------- HTTP responses (pure)


class ProtocolError(Exception):
    """The server's answer is not an HTTP/1.x response this client understands."""


@dataclasses.dataclass(frozen=True)
class ResponseHead:
    status: int
    location: str | None
    content_length: int
    head_size: int  # bytes up to and including the blank line
    close: bool  # the server will close the connection after this response


def parse_response_head(buffer: bytes | bytearray) -> ResponseHead | None:
    """Parse the status line and headers at the start of ``buffer``; None while they are incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    location, length, close = None, 0, parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"location":
            location = value.strip().decode("latin-1")
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ProtocolError("chunked responses are not supported by the load generator")
    return ResponseHead(int(parts[1]), location, length, end + 4, close)


def click_id_from_location(location: str | None, param: str = "clickagg_cid") -> str | None:
    if not location:
        return None
    values = parse_qs(urlsplit(location).query).get(param)
    return values[0] if values else None


# ---------------------------------------------------------------- statistics (pure)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LatencyHistogram:
    """Log-bucketed latencies (about 2% wide) for cheap running percentiles in the progress lines."""

    STEPS_PER_E = 50  # buckets per factor e: each is exp(1/50), 2% wide
    FLOOR_MS = 0.01

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, millis: float) -> None:
        self.buckets[int(math.log(max(millis, self.FLOOR_MS) / self.FLOOR_MS) * self.STEPS_PER_E)] += 1
        self.count += 1

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the q-th percentile (nearest rank)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return self.FLOOR_MS * math.exp((bucket + 1) / self.STEPS_PER_E)
        raise AssertionError("unreachable: ranks never exceed the count")


@dataclasses.dataclass
class SentClick:
    """One click as sent and answered: a line of the ground truth."""

    seq: int
    impression_id: str
    ad_id: str
    advertiser_id: str
    expected: str
    bot: bool
    repeat_of: int | None
    http_status: int | None  # None: no answer (connection error or timeout)
    click_id: str | None
    sent_at: float  # Unix seconds, client clock, when the request was written
    answered_at: float | None
    latency_ms: float | None
    lag_ms: float  # how late the request left compared with its schedule (fixed-rate runs)
    error: str | None = None

    @property
    def as_expected(self) -> bool:
        return self.http_status == EXPECTED_STATUS[self.expected]

    def record(self) -> dict:
        return {"record": "click", **dataclasses.asdict(self)}


def minute_start(seconds: float) -> float:
    return math.floor(seconds / 60) * 60


def iso_minute(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def billable_by_ad_minute(
    clicks: Iterable[SentClick], clicked_at: Mapping[str, datetime] | None = None
) -> tuple[dict[tuple[str, str], int], int]:
    """Expected billable clicks per (ad, UTC minute) and how many could not be placed in a minute.

    Billable: a planned first click that was redirected. Its minute comes from ``clicked_at``
    (click ID -> server time, read from Cassandra) when given; else from the client's window
    [sent_at, answered_at], which holds the server's time and places the click unless it
    straddles a minute boundary (1 ms of slack below, as Cassandra keeps milliseconds).
    """
    counts: Counter[tuple[str, str]] = Counter()
    unplaced = 0
    for click in clicks:
        if click.expected != VALID or click.http_status != 302:
            continue
        if clicked_at is not None and click.click_id in clicked_at:
            counts[(click.ad_id, iso_minute(clicked_at[click.click_id].timestamp()))] += 1
            continue
        low, high = minute_start(click.sent_at - 0.001), minute_start(click.answered_at or click.sent_at)
        if low == high:
            counts[(click.ad_id, iso_minute(low))] += 1
        else:
            unplaced += 1
    return dict(counts), unplaced


def summarize(clicks: Sequence[SentClick], elapsed_s: float) -> dict:
    """Counts, throughput, latency percentiles and the expected billable clicks of a run."""
    answered = [c for c in clicks if c.http_status is not None]
    latencies = sorted(c.latency_ms for c in answered if c.latency_ms is not None)
    lags = sorted(c.lag_ms for c in clicks)
    by_minute, unplaced = billable_by_ad_minute(clicks)
    billable_by_ad = Counter(c.ad_id for c in clicks if c.expected == VALID and c.http_status == 302)
    return {
        "clicks_sent": len(clicks),
        "answered": len(answered),
        "errors": len(clicks) - len(answered),
        "unexpected_status": sum(1 for c in answered if not c.as_expected),
        "by_expected": dict(sorted(Counter(c.expected for c in clicks).items())),
        "by_http_status": {str(k): v for k, v in sorted(Counter(c.http_status for c in answered).items())},
        "elapsed_s": round(elapsed_s, 3),
        "answered_per_s": round(len(answered) / elapsed_s, 1) if elapsed_s > 0 else None,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else None,
            "mean": round(sum(latencies) / len(latencies), 3) if latencies else None,
        },
        "schedule_lag_ms": {"p99": percentile(lags, 99), "max": lags[-1] if lags else None},
        "billable_by_ad": dict(sorted(billable_by_ad.items())),
        "billable_by_ad_minute": [
            {"ad_id": ad_id, "minute": minute, "clicks": n} for (ad_id, minute), n in sorted(by_minute.items())
        ],
        "billable_minute_unplaced": unplaced,
    }


# ---------------------------------------------------------------- ground truth file


@dataclasses.dataclass
class GroundTruth:
    run: dict
    clicks: list[SentClick]
    summary: dict


def write_ground_truth(path: Path, run: dict, clicks: Sequence[SentClick], summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps({"record": "run", **run}) + "\n")
        for click in clicks:
            out.write(json.dumps(click.record(), separators=(",", ":")) + "\n")
        out.write(json.dumps({"record": "summary", **summary}) + "\n")
    tmp.replace(path)


def read_ground_truth(path: Path) -> GroundTruth:
    run, summary, clicks = {}, {}, []
    fields = {f.name for f in dataclasses.fields(SentClick)}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            kind = record.pop("record")
            if kind == "click":
                clicks.append(SentClick(**{k: v for k, v in record.items() if k in fields}))
            elif kind == "run":
                run = record
            elif kind == "summary":
                summary = record
    return GroundTruth(run, clicks, summary)


# ---------------------------------------------------------------- sending (asyncio)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: ResponseHead | None = None
        self.waiter: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            if self.head is None:
                self.head = parse_response_head(self.buffer)
                if self.head is None:
                    return
            end = self.head.head_size + self.head.content_length
            if len(self.buffer) < end:
                return
        except (ProtocolError, ValueError) as error:
            self._fail(error)
            self.close()
            return
        head, self.head = self.head, None
        del self.buffer[:end]
        if head.close:
            self.close()
        if self.timer is not None:
            self.timer.cancel()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(head)

    def request(self, data: bytes, timeout: float) -> asyncio.Future:
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        self.timer = self.loop.call_later(timeout, self._fail, TimeoutError(f"no answer within {timeout}s"))
        return self.waiter

    def _fail(self, error: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


@dataclasses.dataclass
class RunOptions:
    host: str = "127.0.0.1"
    port: int = 18000
    concurrency: int = 32
    rate: float | None = None  # clicks per second; None: as fast as the server answers
    duration: float | None = None  # seconds; None: until the plan is sent
    timeout: float = 10.0
    progress_every: float = 1.0  # seconds between progress lines; 0: none


@dataclasses.dataclass
class RunResult:
    clicks: list[SentClick]
    elapsed_s: float
    loop: str
    plan_exhausted: bool


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """uvloop when it is installed (it halves the client's CPU per request), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), f"uvloop {uvloop.__version__}"


def run_plan(plan: Sequence[PlannedClick], options: RunOptions, out: Callable[[str], None] = print) -> RunResult:
    """Send the plan's clicks (or as many as ``options.duration`` allows) and return what came back."""
    loop, loop_name = new_event_loop()
    try:
        clicks, elapsed, exhausted = loop.run_until_complete(_send_all(plan, options, out))
    finally:
        loop.close()
    return RunResult(clicks, elapsed, loop_name, exhausted)


async def _send_all(plan: Sequence[PlannedClick], options: RunOptions, out) -> tuple[list[SentClick], float, bool]:
    loop = asyncio.get_running_loop()
    n = len(plan)
    requests = [request_bytes(options.host, options.port, p.token, p.user_agent) for p in plan]
    first_done = {p.repeat_of: loop.create_future() for p in plan if p.repeat_of is not None}
    status: list[int | None] = [None] * n
    location: list[str | None] = [None] * n
    sent_at = [0.0] * n
    answered_at: list[float | None] = [None] * n
    latency: list[float | None] = [None] * n
    lag = [0.0] * n
    errors: list[str | None] = [None] * n
    histogram = LatencyHistogram()
    state = {"next": 0, "done": 0, "errors": 0, "unexpected": 0}
    start = loop.time()
    deadline = start + options.duration if options.duration else math.inf

    async def connect() -> _Connection:
        _, protocol = await loop.create_connection(lambda: _Connection(loop), options.host, options.port)
        return protocol

    async def worker() -> None:
        connection: _Connection | None = None
        while state["next"] < n:
            i = state["next"]
            scheduled = start + i / options.rate if options.rate else loop.time()
            if scheduled >= deadline or loop.time() >= deadline:
                break
            state["next"] += 1
            planned = plan[i]
            if planned.repeat_of is not None:
                await first_done[planned.repeat_of]
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.perf_counter()
            sent_at[i] = time.time()
            lag[i] = max(0.0, (loop.time() - scheduled) * 1000) if options.rate else 0.0
            try:
                if connection is None or connection.closed:
                    connection = await connect()
                head = await connection.request(requests[i], options.timeout)
            except (OSError, TimeoutError, ProtocolError, ValueError) as error:
                errors[i] = f"{error.__class__.__name__}: {error}"[:200]
                state["errors"] += 1
                connection = None
            else:
                status[i], location[i] = head.status, head.location
                if head.status != EXPECTED_STATUS[planned.expected]:
                    state["unexpected"] += 1
            answered_at[i] = time.time()
            if status[i] is not None:
                latency[i] = (time.perf_counter() - began) * 1000
                histogram.add(latency[i])
            state["done"] += 1
            if i in first_done:
                first_done[i].set_result(None)
        if connection is not None:
            connection.close()

    async def report() -> None:
        last_done, last_time = 0, start
        while True:
            await asyncio.sleep(options.progress_every)
            now = loop.time()
            rate = (state["done"] - last_done) / (now - last_time)
            last_done, last_time = state["done"], now
            p50, p99 = histogram.percentile(50), histogram.percentile(99)
            out(
                f"[{now - start:6.1f}s] sent {state['next']:>8}  answered {state['done']:>8}  {rate:7.0f}/s  "
                f"errors {state['errors']}  unexpected {state['unexpected']}  "
                f"p50 {_ms(p50)}  p99 {_ms(p99)}"
            )

    reporter = loop.create_task(report()) if options.progress_every > 0 else None
    await asyncio.gather(*(worker() for _ in range(max(1, options.concurrency))))
    elapsed = loop.time() - start
    if reporter is not None:
        reporter.cancel()
    sent = state["next"]
    clicks = [
        SentClick(
            seq=p.seq,
            impression_id=p.impression_id,
            ad_id=p.ad_id,
            advertiser_id=p.advertiser_id,
            expected=p.expected,
            bot=p.is_bot,
            repeat_of=p.repeat_of,
            http_status=status[i],
            click_id=click_id_from_location(location[i]),
            sent_at=sent_at[i],
            answered_at=answered_at[i],
            latency_ms=None if latency[i] is None else round(latency[i], 3),
            lag_ms=round(lag[i], 3),
            error=errors[i],
        )
        for i, p in enumerate(plan[:sent])
    ]
    return clicks, elapsed, sent == n


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# ---------------------------------------------------------------- the command


def plan_size(clicks: int | None, rate: float | None, duration: float | None) -> int:
    """How many clicks to pre-mint: --clicks, else rate x duration, else enough for the duration."""
    if clicks is not None:
        return clicks
    if duration is None:
        raise ValueError("give --clicks, --duration or both")
    return math.ceil(duration * (rate or DURATION_CLICKS_PER_S))


def register_ads(store, ads: Sequence[LoadAd]) -> None:
    """Write the run's ads to the registry (Cassandra) so /click can redirect them."""
    from click_api.storage import Ad

    for ad in ads:
        store.put_ad(Ad(ad.ad_id, ad.advertiser_id, ad.target_url))


def mint_plan(cfg: Mapping, ads: Sequence[LoadAd], clicks: int, mix: Mix, seed: int | None, zipf_s: float) -> list[PlannedClick]:
    keys, key_id = cfg["SIGNING_KEYS"], cfg["SIGNING_KEY_ID"]
    return build_plan(
        ads, clicks, mix, random.Random(seed), lambda imp: mint(imp, keys), key_id, int(time.time()), zipf_s
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m click_api.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="click service base URL (default http://127.0.0.1:$CLICK_API_PORT)")
    parser.add_argument("--clicks", type=int, help="clicks to send (default: rate x duration)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--rate", type=float, help="clicks per second (default: as fast as answered)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections, each with one request in flight")
    parser.add_argument("--ads", type=int, default=100, help="ads to register for the run")
    parser.add_argument("--advertisers", type=int, default=5)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of ad popularity (0: uniform)")
    parser.add_argument("--duplicates", type=float, default=0.10, help="share of re-clicks of earlier impressions")
    parser.add_argument("--forged", type=float, default=0.02, help="share of forged tokens (expect 400)")
    parser.add_argument("--bots", type=float, default=0.05, help="share of bot user agents (302, stored invalid)")
    parser.add_argument("--seed", type=int, help="seed of the plan's choices (impression IDs are always new)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one answer")
    parser.add_argument("--out", type=Path, help="ground truth file (default .local/loadgen/clicks-<UTC time>.jsonl)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.from_env(os.environ)
        size = plan_size(args.clicks, args.rate, args.duration)
        mix = Mix(args.duplicates, args.forged, args.bots)
        mix.counts(size)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    url = urlsplit(args.url or f"http://127.0.0.1:{os.environ.get('CLICK_API_PORT', '18000')}")
    if url.scheme != "http" or not url.hostname:
        print("error: --url must be an http:// URL with a host", file=sys.stderr)
        return 2
    options = RunOptions(
        url.hostname, url.port or 80, args.concurrency, args.rate, args.duration, args.timeout, 0 if args.quiet else 1.0
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp[2:8]}{uuid.uuid4().hex[:6]}"
    out_path = args.out or Path(os.environ.get("CLICKAGG_STATE_DIR", ".local")) / "loadgen" / f"clicks-{stamp}.jsonl"

    ads = make_ads(run_id, args.ads, args.advertisers)
    print(f"==> registering {len(ads)} ads of {args.advertisers} advertisers (run {run_id}) in Cassandra", flush=True)
    from click_api.storage import CassandraStore, connect

    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    try:
        store = CassandraStore(cluster.connect(), cfg["CASSANDRA_KEYSPACE"], cfg["WINDOWS"].raw_click_ttl,
                               cfg["RAW_CLICK_SHARDS"])
        register_ads(store, ads)
    finally:
        cluster.shutdown()

    began = time.perf_counter()
    plan = mint_plan(cfg, ads, size, mix, args.seed, args.zipf)
    counts = Counter(p.expected for p in plan)
    print(f"==> minted {len(plan)} clicks in {time.perf_counter() - began:.1f}s: "
          + ", ".join(f"{k} {counts[k]}" for k in EXPECTED_STATUS), flush=True)
    pace = f"{args.rate:g}/s" if args.rate else "as fast as answered"
    print(f"==> clicking {url.geturl()}/click: {pace}, {args.concurrency} connections"
          + (f", for {args.duration:g}s" if args.duration else ""), flush=True)
    result = run_plan(plan, options, out=lambda line: print(line, flush=True))
    summary = summarize(result.clicks, result.elapsed_s)
    run = {
        "run_id": run_id,
        "started_at": stamp,
        "base_url": url.geturl(),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "http_loop": result.loop,
        "plan_exhausted": result.plan_exhausted,
        "ads": [dataclasses.asdict(ad) for ad in ads],
    }
    write_ground_truth(out_path, run, result.clicks, summary)
    latency = summary["latency_ms"]
    print(f"==> {summary['answered']} answered of {summary['clicks_sent']} sent in {summary['elapsed_s']}s "
          f"({summary['answered_per_s']}/s); errors {summary['errors']}, unexpected status {summary['unexpected_status']}; "
          f"latency p50 {_ms(latency['p50'])}, p99 {_ms(latency['p99'])}, max {_ms(latency['max'])}")
    print(f"    HTTP status: {summary['by_http_status']}; expected billable: {sum(summary['billable_by_ad'].values())}")
    if args.duration and result.plan_exhausted and not args.clicks:
        print(f"    note: the plan ran out before {args.duration:g}s; raise --clicks")
    print(f"    ground truth: {out_path}")
    return 0 if summary["errors"] == 0 and summary["unexpected_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
