"""The load generator's pure parts, and its HTTP client against a small in-process server."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from click_api import events, loadgen
from click_api.loadgen import (
    DUPLICATE,
    INVALID,
    REJECTED,
    VALID,
    LatencyHistogram,
    Mix,
    ProtocolError,
    RunOptions,
    SentClick,
)
from click_api.tokens import TokenError, mint, parse_keys, verify

KEYS = parse_keys("k1:unit-test-secret")


def sign(impression):
    return mint(impression, KEYS)


def plan_of(clicks=200, mix=Mix(0.1, 0.05, 0.05), ads=None, seed=7, zipf_s=1.1):
    ads = ads or loadgen.make_ads("t", 20, 3)
    return loadgen.build_plan(ads, clicks, mix, random.Random(seed), sign, "k1", int(time.time()), zipf_s)


def sent(seq=0, expected=VALID, status=302, sent_at=1_700_000_000.0, answered_at=None, ad_id="ad-1", click_id="c"):
    return SentClick(
        seq=seq, impression_id=f"{seq:032x}", ad_id=ad_id, advertiser_id="adv", expected=expected, bot=False,
        repeat_of=None, http_status=status, click_id=click_id, sent_at=sent_at,
        answered_at=sent_at + 0.002 if answered_at is None else answered_at,
        latency_ms=None if status is None else 2.0, lag_ms=0.0,
    )


# ---------------------------------------------------------------- planning


def test_zipf_weights_fall_as_a_power_of_the_rank():
    cum = loadgen.zipf_cum_weights(4, 1.0)
    weights = [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]
    assert weights == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])


def test_zipf_samples_make_a_few_ads_hot():
    picks = Counter(loadgen.sample_zipf(random.Random(1), 100, 1.1, 20_000))
    ranked = [ad for ad, _ in picks.most_common()]
    assert ranked[0] == 0
    assert set(ranked[:3]) == {0, 1, 2}
    assert sum(picks[i] for i in range(10)) > 0.5 * 20_000  # the top 10% of ads take most clicks
    assert max(picks) < 100 and min(picks) >= 0


def test_zipf_with_exponent_zero_is_uniform():
    picks = Counter(loadgen.sample_zipf(random.Random(2), 4, 0.0, 40_000))
    assert all(9_000 < picks[i] < 11_000 for i in range(4))


def test_mix_counts_add_up_to_the_clicks():
    assert Mix(0.1, 0.05, 0.05).counts(300) == {DUPLICATE: 30, REJECTED: 15, INVALID: 15, VALID: 240}
    assert sum(Mix(0.333, 0.333, 0.333).counts(7).values()) == 7
    assert Mix().counts(5) == {DUPLICATE: 0, REJECTED: 0, INVALID: 0, VALID: 5}


@pytest.mark.parametrize("mix", [Mix(0.6, 0.3, 0.2), Mix(-0.1, 0, 0)])
def test_mix_refuses_shares_out_of_range(mix):
    with pytest.raises(ValueError, match="shares"):
        mix.counts(100)


def test_mix_refuses_duplicates_without_valid_clicks():
    with pytest.raises(ValueError, match="valid"):
        Mix(0.5, 0.5, 0.0).counts(10)


def test_no_duplicate_comes_before_a_valid_click():
    for seed in range(200):
        kinds = loadgen.arrange_kinds({DUPLICATE: 5, REJECTED: 2, INVALID: 2, VALID: 1}, random.Random(seed))
        assert Counter(kinds) == {DUPLICATE: 5, REJECTED: 2, INVALID: 2, VALID: 1}
        assert kinds.index(VALID) < kinds.index(DUPLICATE)


def test_plan_has_the_mix_and_fresh_impressions():
    plan = plan_of(300, Mix(0.1, 0.05, 0.05))

    assert [p.seq for p in plan] == list(range(300))
    assert Counter(p.expected for p in plan) == {VALID: 240, DUPLICATE: 30, REJECTED: 15, INVALID: 15}
    fresh = [p for p in plan if p.expected != DUPLICATE]
    assert len({p.impression_id for p in fresh}) == len(fresh)


def test_duplicates_re_click_an_earlier_valid_impression_with_its_token():
    plan = plan_of(300, Mix(0.2, 0.0, 0.0))
    for p in (p for p in plan if p.expected == DUPLICATE):
        first = plan[p.repeat_of]
        assert first.seq < p.seq and first.expected == VALID
        assert (p.impression_id, p.token, p.ad_id, p.user_agent) == (
            first.impression_id, first.token, first.ad_id, first.user_agent,
        )


def test_tokens_verify_except_forged_ones_which_fail_on_their_signature():
    plan = plan_of(200, Mix(0.0, 0.25, 0.0))
    for p in plan:
        if p.expected == REJECTED:
            with pytest.raises(TokenError) as error:
                verify(p.token, KEYS)
            assert error.value.reason == "bad_signature"
        else:
            impression = verify(p.token, KEYS)
            assert (impression.impression_id, impression.ad_id) == (p.impression_id, p.ad_id)


def test_bot_clicks_carry_agents_the_service_labels_as_bots():
    plan = plan_of(200, Mix(0.0, 0.0, 0.3))
    assert {events.is_bot(p.user_agent) for p in plan if p.expected == INVALID} == {True}
    assert {events.is_bot(p.user_agent) for p in plan if p.expected == VALID} == {False}
    assert all(events.is_bot(agent) for agent in loadgen.BOT_AGENTS)
    assert not any(events.is_bot(agent) for agent in loadgen.BROWSER_AGENTS)


def test_ads_spread_over_advertisers_and_the_first_is_hot():
    ads = loadgen.make_ads("run1", 10, 3)
    assert len({ad.ad_id for ad in ads}) == 10
    assert Counter(ad.advertiser_id for ad in ads) == {"lg-run1-adv-000": 4, "lg-run1-adv-001": 3, "lg-run1-adv-002": 3}
    plan = plan_of(2000, Mix(), ads=ads)
    assert Counter(p.ad_id for p in plan).most_common(1)[0][0] == ads[0].ad_id
    assert {p.advertiser_id for p in plan if p.ad_id == ads[4].ad_id} == {ads[4].advertiser_id}


def test_plan_size_from_clicks_rate_and_duration():
    assert loadgen.plan_size(500, 100, 60) == 500
    assert loadgen.plan_size(None, 250, 10) == 2500
    assert loadgen.plan_size(None, None, 10) == 10 * loadgen.DURATION_CLICKS_PER_S
    with pytest.raises(ValueError):
        loadgen.plan_size(None, 100, None)


def test_request_is_a_keep_alive_get_of_the_token():
    raw = loadgen.request_bytes("127.0.0.1", 18000, "v1.k1.abc.def", "UA/1")
    assert raw == b"GET /click?t=v1.k1.abc.def HTTP/1.1\r\nHost: 127.0.0.1:18000\r\nUser-Agent: UA/1\r\nAccept: text/html\r\n\r\n"


# ---------------------------------------------------------------- responses


def test_response_head_of_a_redirect():
    raw = (b"HTTP/1.1 302 FOUND\r\nServer: gunicorn\r\nContent-Length: 12\r\n"
           b"Location: https://x.example/?a=1&clickagg_cid=abc\r\n\r\nbody follows")
    head = loadgen.parse_response_head(raw)
    assert (head.status, head.location, head.content_length, head.close) == (
        302, "https://x.example/?a=1&clickagg_cid=abc", 12, False,
    )
    assert raw[head.head_size:] == b"body follows"
    assert loadgen.click_id_from_location(head.location) == "abc"


def test_response_head_waits_for_the_blank_line():
    assert loadgen.parse_response_head(b"HTTP/1.1 302 FOUND\r\nContent-Length: 0\r\n") is None


@pytest.mark.parametrize(
    "raw, close",
    [(b"HTTP/1.1 400 BAD REQUEST\r\nConnection: close\r\n\r\n", True), (b"HTTP/1.0 200 OK\r\n\r\n", True),
     (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", False)],
)
def test_response_head_knows_when_the_server_closes(raw, close):
    assert loadgen.parse_response_head(raw).close is close


@pytest.mark.parametrize("raw", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"])
def test_response_head_refuses_what_it_cannot_read(raw):
    with pytest.raises(ProtocolError):
        loadgen.parse_response_head(raw)


def test_click_id_is_absent_without_a_location_or_the_parameter():
    assert loadgen.click_id_from_location(None) is None
    assert loadgen.click_id_from_location("https://x.example/?other=1") is None


# ---------------------------------------------------------------- statistics


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (loadgen.percentile(values, 50), loadgen.percentile(values, 99), loadgen.percentile(values, 100)) == (50, 99, 100)
    assert loadgen.percentile([7], 99) == 7
    assert loadgen.percentile([], 50) is None


def test_histogram_percentiles_are_within_two_percent():
    rng = random.Random(3)
    values = [rng.lognormvariate(1, 0.8) for _ in range(5000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    exact = sorted(values)
    for q in (50, 90, 99):
        assert loadgen.percentile(exact, q) <= histogram.percentile(q) <= loadgen.percentile(exact, q) * 1.021
    assert LatencyHistogram().percentile(50) is None


def test_billable_minutes_come_from_the_client_window_unless_it_straddles():
    minute = 1_700_000_040.0  # a minute boundary
    clicks = [
        sent(0, sent_at=minute + 1, ad_id="a"),
        sent(1, sent_at=minute + 30, ad_id="a"),
        sent(2, sent_at=minute + 59.999, answered_at=minute + 60.001, ad_id="a"),  # straddles
        sent(3, sent_at=minute + 60.0005, ad_id="b"),  # the server's ms may round below the boundary
        sent(4, expected=DUPLICATE, sent_at=minute + 2, ad_id="a"),
        sent(5, status=503, sent_at=minute + 3, ad_id="a"),
        sent(6, status=None, sent_at=minute + 4, ad_id="a"),
    ]
    counts, unplaced = loadgen.billable_by_ad_minute(clicks)
    assert counts == {("a", "2023-11-14T22:14Z"): 2}
    assert unplaced == 2


def test_billable_minutes_use_the_server_time_when_given():
    clicks = [sent(0, click_id="c0", sent_at=1_700_000_099.9995, answered_at=1_700_000_100.5)]
    server = {"c0": datetime.fromtimestamp(1_700_000_100.2, tz=timezone.utc)}
    assert loadgen.billable_by_ad_minute(clicks, server) == ({("ad-1", "2023-11-14T22:15Z"): 1}, 0)


def test_summary_counts_errors_and_unexpected_answers():
    clicks = [sent(0), sent(1, expected=REJECTED, status=400, click_id=None), sent(2, status=503),
              sent(3, status=None, click_id=None), sent(4, expected=DUPLICATE), sent(5, expected=REJECTED, status=302)]
    summary = loadgen.summarize(clicks, elapsed_s=2.0)
    assert (summary["clicks_sent"], summary["answered"], summary["errors"], summary["unexpected_status"]) == (6, 5, 1, 2)
    assert summary["by_expected"] == {DUPLICATE: 1, REJECTED: 2, VALID: 3}
    assert summary["by_http_status"] == {"302": 3, "400": 1, "503": 1}
    assert summary["answered_per_s"] == 2.5
    assert summary["billable_by_ad"] == {"ad-1": 1}
    assert summary["latency_ms"]["p50"] == 2.0


def test_ground_truth_round_trips(tmp_path):
    clicks = [sent(0), sent(1, expected=REJECTED, status=400, click_id=None)]
    summary = loadgen.summarize(clicks, 1.0)
    path = tmp_path / "deep" / "truth.jsonl"

    loadgen.write_ground_truth(path, {"run_id": "r1"}, clicks, summary)
    truth = loadgen.read_ground_truth(path)

    assert (truth.run, truth.clicks, truth.summary) == ({"run_id": "r1"}, clicks, summary)
    assert len(path.read_text().splitlines()) == 4


# ---------------------------------------------------------------- sending, against an in-process server


class FakeClickServer:
    """Answers /click like the service would: 400 for a bad token, else 302 with a click ID."""

    def __init__(self, delay: float = 0.0, close_every: int = 0):
        self.arrivals: list[tuple[float, str, str | None]] = []  # (time, impression_id, click_id)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (the stdlib's name)
                token = parse_qs(urlsplit(self.path).query).get("t", [""])[0]
                time.sleep(delay)
                try:
                    impression = verify(token, KEYS)
                except TokenError:
                    self._answer(400, None, b"bad token")
                    return
                click_id = uuid.uuid4().hex
                with server.lock:
                    server.arrivals.append((time.time(), impression.impression_id, click_id))
                    close = close_every and len(server.arrivals) % close_every == 0
                self._answer(302, f"https://landing.example.com/?clickagg_cid={click_id}", b"", close)

            def _answer(self, status, location, body, close=False):
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_run_sends_every_click_and_reads_each_answer():
    plan = plan_of(120, Mix(0.15, 0.1, 0.1))
    with FakeClickServer(close_every=25) as server:
        result = loadgen.run_plan(plan, RunOptions(port=server.port, concurrency=8, progress_every=0))

    assert result.plan_exhausted and len(result.clicks) == 120
    assert [c.seq for c in result.clicks] == list(range(120))
    assert all(c.as_expected and c.error is None for c in result.clicks)
    stored = {click_id: impression for _, impression, click_id in server.arrivals}
    for click in result.clicks:
        if click.expected == REJECTED:
            assert click.click_id is None
        else:
            assert stored[click.click_id] == click.impression_id
    assert len(stored) == sum(1 for c in result.clicks if c.expected != REJECTED)


def test_a_duplicate_leaves_only_after_its_first_click_was_answered():
    plan = plan_of(60, Mix(0.4, 0.0, 0.0))
    with FakeClickServer(delay=0.01) as server:
        result = loadgen.run_plan(plan, RunOptions(port=server.port, concurrency=16, progress_every=0))

    by_click_id = {c.click_id: c for c in result.clicks}
    first_seen: dict[str, str] = {}
    for _, impression, click_id in sorted(server.arrivals):
        first_seen.setdefault(impression, click_id)
    assert {by_click_id[click_id].expected for click_id in first_seen.values()} == {VALID}
    for click in result.clicks:
        if click.expected == DUPLICATE:
            assert click.sent_at >= result.clicks[click.repeat_of].answered_at


def test_a_fixed_rate_spreads_the_clicks_over_time():
    plan = plan_of(50, Mix())
    with FakeClickServer() as server:
        result = loadgen.run_plan(plan, RunOptions(port=server.port, concurrency=4, rate=200, progress_every=0))

    span = result.clicks[-1].sent_at - result.clicks[0].sent_at
    assert span >= 0.23  # 49 gaps of 5 ms: the rate holds clicks back (a busy machine may only be slower)
    assert result.elapsed_s >= 0.24


def test_a_duration_stops_the_run_before_the_plan_ends():
    plan = plan_of(1000, Mix())
    with FakeClickServer() as server:
        result = loadgen.run_plan(plan, RunOptions(port=server.port, concurrency=2, rate=100, duration=0.3,
                                                   progress_every=0))

    # Only clicks due before the deadline (one every 10 ms) are sent; a slow machine sends fewer.
    assert not result.plan_exhausted
    assert 0 < len(result.clicks) <= 31
    assert all(c.http_status == 302 for c in result.clicks)


def test_progress_lines_report_rate_errors_and_percentiles():
    lines: list[str] = []
    with FakeClickServer() as server:
        loadgen.run_plan(plan_of(40, Mix()), RunOptions(port=server.port, concurrency=2, rate=100,
                                                        progress_every=0.1), out=lines.append)
    assert lines and "answered" in lines[-1] and "errors 0" in lines[-1] and "p99" in lines[-1]


def test_an_unreachable_server_is_an_error_per_click_not_a_crash():
    with FakeClickServer() as server:
        port = server.port
    result = loadgen.run_plan(plan_of(5, Mix()), RunOptions(port=port, concurrency=2, progress_every=0))

    assert [c.http_status for c in result.clicks] == [None] * 5
    assert all("ConnectionRefusedError" in c.error for c in result.clicks)
    assert loadgen.summarize(result.clicks, result.elapsed_s)["errors"] == 5
