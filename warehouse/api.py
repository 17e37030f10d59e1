"""The advertisers' metrics API (``/v1``) and its internal admin endpoints (API keys, compaction).

Series are computed from the UTC rollups for any IANA time zone. A bucket (a local minute, hour or
day over [from, to)) is cut into pieces that each match a stored grain exactly (whole UTC days, then
whole UTC hours, then minutes), so every piece is read from the coarsest table that has it:
Kathmandu's hours come from ``fct_clicks_minute``, New York's DST days from ``fct_clicks_hour``,
UTC days from ``fct_clicks_day``. Unique users are exact when a bucket is one stored row, else
counted from ``stg_clicks_minute_users`` where it holds the bucket, else an upper bound (and the
response says so). Series whose buckets are stored rows keep each closed UTC day's rendered rows in
memory until a load rewrites that day. docs/warehouse.md describes the endpoints;
``GET /v1/openapi.json`` has them all.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
from flask import Blueprint, Response, current_app, g, jsonify, request

from warehouse import batch, compaction, openapi
from warehouse.loads import ROLLUP_PIPELINE

bp = Blueprint("api", __name__, url_prefix="/v1")
internal_bp = Blueprint("api_internal", __name__, url_prefix="/internal")

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
EPOCH = datetime(1970, 1, 1)
GRANULARITIES = ("minute", "hour", "day")
# Longest [from, to) per granularity: bounds the rows of one answer (31 days of minutes is 44,640).
MAX_RANGE_DAYS = {"minute": 31, "hour": 366, "day": 3660}
EARLIEST, LATEST = datetime(2000, 1, 1), datetime(2200, 1, 1)
VALUE_COLUMNS = ("billable_clicks", "duplicate_clicks", "invalid_clicks", "expired_clicks", "unique_users")
UNIQUE_USERS_MODES = ("exact", "upper_bound")
RECONCILED_STATUSES = ("ok", "repaired")
KEY_CACHE_TTL_S = 5.0  # revocation through this service is immediate; anything else within this
USERS_SINCE_TTL_S = 60.0
CHUNK_CACHE_MB = 128  # rendered closed days kept in memory (app config API_CHUNK_CACHE_MB)


class BadRequest(ValueError):
    """The request cannot be answered as sent; the message says what to change."""


def _error(status: int, message: str, headers: dict | None = None):
    return jsonify(error=message, status=status), status, headers or {}


def _con() -> duckdb.DuckDBPyConnection:
    return current_app.extensions["warehouse"]


# --------------------------------------------------------------------------------------------------
# Time: buckets of a local time zone over a UTC range (pure; naive datetimes are UTC)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch [start, end) of UTC time over which the zone's UTC offset is constant."""

    start: datetime
    end: datetime
    offset: timedelta


def zone(name: str) -> tzinfo:
    """The IANA time zone ``name``; BadRequest when there is none."""
    try:
        if not name or name.startswith(("+", "-")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadRequest(f"unknown time zone {name!r}: use an IANA name such as UTC, America/New_York, "
                         "Asia/Kolkata or Asia/Kathmandu") from None


def local(moment: datetime, tz: tzinfo) -> datetime:
    """The aware local time in ``tz`` of a naive UTC ``moment``."""
    return moment.replace(tzinfo=timezone.utc).astimezone(tz)


def offset_at(moment: datetime, tz: tzinfo) -> timedelta:
    return local(moment, tz).utcoffset()


def bucket_key(moment: datetime, granularity: str, tz: tzinfo):
    """What the instants of one bucket share: the minute; the local hour and its offset; the local date."""
    if granularity == "minute":
        return moment.replace(second=0, microsecond=0)
    wall = local(moment, tz)
    if granularity == "hour":
        return wall.replace(minute=0, second=0, microsecond=0, tzinfo=None), wall.utcoffset()
    return wall.date()


def is_boundary(moment: datetime, granularity: str, tz: tzinfo) -> bool:
    """Whether a bucket starts at ``moment`` (a whole minute whose key differs from the minute before)."""
    if moment.second or moment.microsecond:
        return False
    return granularity == "minute" or bucket_key(moment, granularity, tz) != bucket_key(moment - MINUTE, granularity, tz)


@functools.lru_cache(maxsize=512)
def offset_segments(start: datetime, end: datetime, tz: tzinfo) -> tuple[Segment, ...]:
    """Split [start, end) (whole UTC minutes) at the zone's offset changes.

    Probes a day apart and bisects to the minute where the offset moves; transitions (always at
    whole minutes since 2000) are months apart.
    """
    segments = []
    seg_start, seg_offset = start, offset_at(start, tz)
    last = end - MINUTE
    t = start
    while t < last:
        probe = min(t + DAY, last)
        if offset_at(probe, tz) == seg_offset:
            t = probe
            continue
        lo, hi = t, probe
        while hi - lo > MINUTE:
            mid = lo + (hi - lo) // MINUTE // 2 * MINUTE
            lo, hi = (mid, hi) if offset_at(mid, tz) == seg_offset else (lo, mid)
        segments.append(Segment(seg_start, hi, seg_offset))
        seg_start, seg_offset, t = hi, offset_at(hi, tz), hi
    segments.append(Segment(seg_start, end, seg_offset))
    return tuple(segments)


def _ceil_wall(wall: datetime, unit: timedelta) -> datetime:
    steps, rest = divmod(wall - EPOCH, unit)
    return EPOCH + (steps + (1 if rest else 0)) * unit


def bucket_starts(segments: tuple[Segment, ...], granularity: str) -> list[datetime]:
    """The UTC starts of the local hours or days over the segments (whose first start is a boundary)."""
    unit = HOUR if granularity == "hour" else DAY
    starts: list[datetime] = []
    previous = None
    for seg in segments:
        if previous is None:
            starts.append(seg.start)
        elif granularity == "hour" or (seg.start + seg.offset).date() != (seg.start - MINUTE + previous.offset).date():
            starts.append(seg.start)  # an offset change starts a new hour; a new day only if the date moved
        wall = seg.start + seg.offset
        aligned = _ceil_wall(wall, unit)
        if aligned == wall:
            aligned += unit
        moment = aligned - seg.offset
        while moment < seg.end:
            starts.append(moment)
            moment += unit
        previous = seg
    return starts


def _floor(moment: datetime, unit: timedelta) -> datetime:
    return EPOCH + (moment - EPOCH) // unit * unit


def cover(start: datetime, end: datetime, units: tuple[str, ...] = ("day", "hour", "minute")) -> list[tuple]:
    """Cut [start, end) into (grain, start, end) pieces of whole UTC days, then hours, then minutes."""
    if start >= end:
        return []
    grain = units[0]
    if grain == "minute":
        return [("minute", start, end)]
    unit = DAY if grain == "day" else HOUR
    inner_start, inner_end = _floor(start + unit - MINUTE, unit), _floor(end, unit)
    if inner_start >= inner_end:
        return cover(start, end, units[1:])
    return cover(start, inner_start, units[1:]) + [(grain, inner_start, inner_end)] + cover(inner_end, end, units[1:])


def offset_suffix(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def iso_local(moment: datetime, tz: tzinfo) -> str:
    """``moment`` (naive UTC) as local ISO-8601 with its offset, as the series' labels are written."""
    wall = local(moment, tz)
    return wall.replace(tzinfo=None).isoformat() + offset_suffix(wall.utcoffset())


def parse_instant(name: str, text: str | None, tz: tzinfo, tz_name: str) -> datetime:
    """A query's ``from``/``to`` as naive UTC: an ISO-8601 date or time, local to ``tz`` unless it has an offset."""
    if not text:
        raise BadRequest(f"'{name}' is required: an ISO-8601 date or time, e.g. {name}=2026-03-08 or "
                         f"{name}=2026-03-08T10:00:00+05:30 (without an offset it is local to tz)")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"'{name}' {text!r} is not an ISO-8601 date or time; use e.g. 2026-03-08, "
                         "2026-03-08T10:00 or 2026-03-08T10:00:00+05:30") from None
    if moment.tzinfo is None:
        aware = moment.replace(tzinfo=tz)
        back = aware.astimezone(timezone.utc).astimezone(tz)
        if back.replace(tzinfo=None) != moment:
            raise BadRequest(f"'{name}' {text} does not exist in {tz_name} (the clocks skip it); "
                             "give a time with an offset")
        moment = aware
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    if not EARLIEST <= utc <= LATEST:
        raise BadRequest(f"'{name}' must be between {EARLIEST.year} and {LATEST.year}")
    return utc


def _suggest_floor(moment: datetime, granularity: str, tz: tzinfo) -> str:
    wall = local(moment, tz)
    wall = wall.replace(second=0, microsecond=0, minute=0 if granularity != "minute" else wall.minute)
    if granularity == "day":
        wall = wall.replace(hour=0)
    return wall.replace(tzinfo=None).isoformat() + offset_suffix(wall.utcoffset())


# --------------------------------------------------------------------------------------------------
# Queries: a plan (which tables, which pieces) and the SQL that answers it


@dataclasses.dataclass(frozen=True)
class Query:
    """One validated series request."""

    granularity: str
    tz_name: str
    tz: tzinfo
    start: datetime  # naive UTC
    end: datetime
    unique_users: str  # "exact" or "upper_bound"
    as_csv: bool


def parse_query(args, accept) -> Query:
    """Validate the query string; BadRequest with what to fix."""
    granularity = args.get("granularity", "hour")
    if granularity not in GRANULARITIES:
        raise BadRequest(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    tz_name = args.get("tz", "UTC")
    tz = zone(tz_name)
    start = parse_instant("from", args.get("from"), tz, tz_name)
    end = parse_instant("to", args.get("to"), tz, tz_name)
    if end <= start:
        raise BadRequest(f"'to' ({args.get('to')}) must be after 'from' ({args.get('from')}): the range is [from, to)")
    limit = MAX_RANGE_DAYS[granularity]
    if end - start > timedelta(days=limit):
        raise BadRequest(f"a {granularity} series covers at most {limit} days; this range has "
                         f"{(end - start) / DAY:.1f}: shorten it or use a coarser granularity")
    for name, moment in (("from", start), ("to", end)):
        if not is_boundary(moment, granularity, tz):
            raise BadRequest(f"'{name}' must be the start of {'an' if granularity == 'hour' else 'a'} "
                             f"{granularity} in {tz_name}, "
                             f"e.g. {_suggest_floor(moment, granularity, tz)}")
    mode = args.get("unique_users", "exact")
    if mode not in UNIQUE_USERS_MODES:
        raise BadRequest(f"unknown unique_users {mode!r}: use exact (default) or upper_bound")
    fmt = args.get("format")
    if fmt is None:
        fmt = "csv" if accept.best_match(["application/json", "text/csv"]) == "text/csv" else "json"
    if fmt not in ("json", "csv"):
        raise BadRequest(f"unknown format {fmt!r}: use json or csv (or send Accept: text/csv)")
    return Query(granularity, tz_name, tz, start, end, mode, fmt == "csv")


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A bucket [start, end) in UTC and the whole UTC hours and days inside it (empty ranges: lo == hi)."""

    start: datetime
    end: datetime
    hour_lo: datetime
    hour_hi: datetime
    day_lo: datetime
    day_hi: datetime

    @classmethod
    def of(cls, start: datetime, end: datetime) -> Bucket:
        hour_lo, hour_hi = _floor(start + HOUR - MINUTE, HOUR), _floor(end, HOUR)
        if hour_lo >= hour_hi:
            hour_lo = hour_hi = start
        day_lo, day_hi = _floor(hour_lo + DAY - MINUTE, DAY), _floor(hour_hi, DAY)
        if day_lo >= day_hi:
            day_lo = day_hi = start
        return cls(start, end, hour_lo, hour_hi, day_lo, day_hi)

    def grains(self) -> set[str]:
        """The tables the bucket reads: whole days, the other whole hours, the other minutes."""
        out = set()
        if self.day_lo < self.day_hi:
            out.add("day")
        if (self.hour_lo, self.hour_hi) != (self.day_lo, self.day_hi) and self.hour_lo < self.hour_hi:
            out.add("hour")
        if (self.hour_lo, self.hour_hi) != (self.start, self.end):
            out.add("minute")
        return out

    def is_one_stored_row(self) -> bool:
        """Whether the bucket is exactly one stored minute, UTC hour or UTC day (its unique_users are exact)."""
        length = self.end - self.start
        return length == MINUTE or (length == HOUR and (self.hour_lo, self.hour_hi) == (self.start, self.end)) or \
            (length == DAY and (self.day_lo, self.day_hi) == (self.start, self.end))


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to answer a query: one stored row per bucket (``direct``), or stored rows summed per bucket."""

    direct: str | None  # the grain whose rows are the buckets, or None
    segments: tuple[Segment, ...]
    buckets: tuple[Bucket, ...] = ()  # general plans only
    grains: tuple[str, ...] = ()  # the tables a general plan reads
    bucket_count: int = 0


TABLES = {"minute": ("fct_clicks_minute", "minute_at"), "hour": ("fct_clicks_hour", "hour_at"),
          "day": ("fct_clicks_day", "day_at")}


@functools.lru_cache(maxsize=256)
def plan(granularity: str, tz: tzinfo, start: datetime, end: datetime) -> Plan:
    """Pick the tables: the coarsest whose rows fit each bucket exactly in UTC."""
    segments = offset_segments(start, end, tz)
    offsets = {seg.offset for seg in segments}
    changes = [seg.start for seg in segments[1:]]
    if granularity == "minute":
        return Plan("minute", segments, bucket_count=(end - start) // MINUTE)
    whole_hours = all(o % HOUR == timedelta(0) for o in offsets) and all(c.minute == 0 for c in changes)
    if granularity == "hour" and whole_hours:
        return Plan("hour", segments, bucket_count=(end - start) // HOUR)
    if granularity == "day" and offsets == {timedelta(0)}:
        return Plan("day", segments, bucket_count=(end - start) // DAY)
    starts = bucket_starts(segments, granularity)
    buckets = tuple(Bucket.of(s, e) for s, e in zip(starts, [*starts[1:], end]))
    grains = set().union(*(b.grains() for b in buckets))
    return Plan(None, segments, buckets, tuple(g for g in ("day", "hour", "minute") if g in grains), len(buckets))


def bucket_keys(the_plan: Plan, granularity: str) -> list[tuple]:
    """(local hour or date, offset in minutes, bucket) for every stretch of a bucket with one UTC offset.

    A stored row finds its bucket by a hash join on this key, computed from its own time and offset.
    """
    unit = HOUR if granularity == "hour" else DAY
    keys = []
    for bucket in the_plan.buckets:
        for seg in the_plan.segments:
            if seg.start < bucket.end and seg.end > bucket.start:
                wall = max(bucket.start, seg.start) + seg.offset
                keys.append((_floor(wall, unit), int(seg.offset.total_seconds()) // 60, bucket))
    return keys


@dataclasses.dataclass(frozen=True)
class Scope:
    """Whose rows: one ad of an advertiser, or all of an advertiser's ads."""

    advertiser_id: str
    ad_id: str | None = None

    def facts(self, alias: str) -> tuple[str, list]:
        if self.ad_id is None:
            return f"{alias}.advertiser_id = ?", [self.advertiser_id]
        return f"{alias}.advertiser_id = ? AND {alias}.ad_id = ?", [self.advertiser_id, self.ad_id]

    def users(self, alias: str) -> tuple[str, list]:
        if self.ad_id is None:
            return f"{alias}.ad_id IN (SELECT ad_id FROM dim_ads WHERE advertiser_id = ?)", [self.advertiser_id]
        return f"{alias}.ad_id = ?", [self.ad_id]


class _Sql:
    """SQL text and its ``?`` parameters, appended in the order they appear."""

    def __init__(self):
        self.parts: list[str] = []
        self.params: list = []

    def add(self, text: str, *params) -> _Sql:
        self.parts.append(text)
        self.params.extend(params)
        return self

    def text(self) -> str:
        return "".join(self.parts)


def _by_segment(sql: _Sql, column: str, segments: tuple[Segment, ...], value, cast: str) -> None:
    """Append ``value(segment)`` of the segment holding ``column`` (a constant when there is one segment)."""
    if len(segments) == 1:
        sql.add(f"?::{cast}", value(segments[0]))
        return
    sql.add("CASE")
    for seg in segments[:-1]:
        sql.add(f" WHEN {column} < ?::TIMESTAMP THEN ?::{cast}", seg.end, value(seg))
    sql.add(f" ELSE ?::{cast} END", value(segments[-1]))


def _minutes(seg: Segment) -> int:
    return int(seg.offset.total_seconds()) // 60


_FACT_VALUES = ", ".join(f"f.{c}" for c in VALUE_COLUMNS)
_SUMS = ", ".join(f"sum({c})::BIGINT AS {c}" for c in VALUE_COLUMNS)
# Which stored rows of each grain belong to a bucket's pieces (the bucket itself is found by its key).
_MEMBERSHIP = {
    "day": "{x} >= b.day_lo AND {x} < b.day_hi",
    "hour": "{x} >= b.hour_lo AND {x} < b.hour_hi AND NOT ({x} >= b.day_lo AND {x} < b.day_hi)",
    "minute": "NOT ({x} >= b.hour_lo AND {x} < b.hour_hi)",
}


def series_sql(query: Query, the_plan: Plan, scope: Scope, users_since: datetime | None,
               ranges: list[tuple[datetime, datetime]] | None = None) -> tuple[_Sql, datetime | None]:
    """The rows (ad_id, bucket_at, values...) of the plan, and ``exact_from``: the first bucket from which
    unique_users are exact (None: all are; ``query.end``: none of the buckets that need counting).

    A direct plan can be limited to some ``ranges`` of [from, to) (the days not in the chunk cache).
    """
    sql = _Sql()
    if the_plan.direct is not None:
        table, column = TABLES[the_plan.direct]
        where, where_params = scope.facts("f")
        spans = ranges or [(query.start, query.end)]
        within = " OR ".join(f"(f.{column} >= ? AND f.{column} < ?)" for _ in spans)
        sql.add(f"SELECT f.ad_id, f.{column} AS bucket_at, {_FACT_VALUES} FROM {table} f WHERE {where} AND ({within})",
                *where_params, *(moment for span in spans for moment in span))
        return sql, None
    # Buckets that are not one stored row: distinct hashed users where they are kept, else an upper bound.
    need = [b for b in the_plan.buckets if not b.is_one_stored_row()]
    counted = {b.start for b in need if query.unique_users == "exact" and users_since is not None
               and b.start >= users_since}
    exact_from = None
    if len(counted) < len(need):
        exact_from = min(counted) if counted else query.end
    keys = bucket_keys(the_plan, query.granularity)
    unit = query.granularity
    columns = [[k[0] for k in keys], [k[1] for k in keys]] + [
        [getattr(k[2], name) for k in keys] for name in ("start", "end", "hour_lo", "hour_hi", "day_lo", "day_hi")]
    sql.add("WITH b AS (SELECT unnest(?::TIMESTAMP[]) AS key_at, unnest(?::INTEGER[]) AS key_offset, "
            "unnest(?::TIMESTAMP[]) AS bucket_at, unnest(?::TIMESTAMP[]) AS end_at, "
            "unnest(?::TIMESTAMP[]) AS hour_lo, unnest(?::TIMESTAMP[]) AS hour_hi, "
            "unnest(?::TIMESTAMP[]) AS day_lo, unnest(?::TIMESTAMP[]) AS day_hi, "
            "unnest(?::BOOLEAN[]) AS by_users), facts AS (",
            *columns, [k[2].start in counted for k in keys])
    for n, grain in enumerate(the_plan.grains):
        table, column = TABLES[grain]
        where, where_params = scope.facts("f")
        lo = min(getattr(b, f"{grain}_lo") if grain != "minute" else b.start for b in the_plan.buckets)
        hi = max(getattr(b, f"{grain}_hi") if grain != "minute" else b.end for b in the_plan.buckets)
        sql.add(" UNION ALL " if n else "")
        sql.add(f"SELECT b.bucket_at, b.by_users, f.ad_id, {_FACT_VALUES} FROM (SELECT *, ")
        _by_segment(sql, f"f.{column}", the_plan.segments, _minutes, "INTEGER")
        sql.add(f" AS offset_minutes FROM {table} f WHERE {where} AND f.{column} >= ? AND f.{column} < ?) f "
                f"JOIN b ON b.key_at = date_trunc('{unit}', f.{column} + to_minutes(f.offset_minutes)) "
                "AND b.key_offset = f.offset_minutes WHERE " + _MEMBERSHIP[grain].format(x=f"f.{column}"),
                *where_params, lo, hi)
    sql.add(f"), sums AS (SELECT bucket_at, ad_id, any_value(by_users) AS by_users, {_SUMS} FROM facts GROUP BY ALL)")
    if counted:
        where, where_params = scope.users("u")
        sql.add(", users AS (SELECT b.bucket_at, u.ad_id, count(DISTINCT u.user_hash) AS n FROM (SELECT *, ")
        _by_segment(sql, "u.minute_at", the_plan.segments, _minutes, "INTEGER")
        sql.add(f" AS offset_minutes FROM stg_clicks_minute_users u WHERE {where} AND u.minute_at >= ? "
                f"AND u.minute_at < ?) u JOIN b ON b.key_at = date_trunc('{unit}', u.minute_at + "
                "to_minutes(u.offset_minutes)) AND b.key_offset = u.offset_minutes WHERE b.by_users GROUP BY ALL)",
                *where_params, min(counted), max(b.end for b in need if b.start in counted))
        unique, joins = "CASE WHEN s.by_users THEN coalesce(users.n, 0) ELSE s.unique_users END", \
            " LEFT JOIN users USING (bucket_at, ad_id)"
    else:
        unique, joins = "s.unique_users", ""
    values = ", ".join(f"s.{c}" for c in VALUE_COLUMNS[:-1])
    sql.add(f" SELECT s.ad_id, s.bucket_at, {values}, {unique} AS unique_users FROM sums s{joins}")
    return sql, exact_from


def render_sql(inner: _Sql, query: Query, the_plan: Plan, per_ad: bool,
               chunk_hours_from: datetime | None = None) -> _Sql:
    """Wrap the rows' query so DuckDB writes the body (JSON arrays or CSV lines) with local-time labels,
    ordered by bucket then ad: one row (count, text), or, given where the cache's chunks turn from
    days to hours (hours_from), one per cache chunk (chunk key, count, text)."""
    sql = _Sql()
    if chunk_hours_from is None:
        sql.add("SELECT ")
    else:
        sql.add(f"SELECT {_CHUNK_KEY.format(at='r.bucket_at', hours='?')} AS chunk, ", chunk_hours_from)
    sql.add("count(*), string_agg(")
    sql.add("concat_ws(',', " if query.as_csv else "json_array(")
    if per_ad:
        sql.add("CASE WHEN regexp_matches(r.ad_id, '[\",\\r\\n]') THEN '\"' || replace(r.ad_id, '\"', '\"\"') || '\"' "
                "ELSE r.ad_id END, " if query.as_csv else "r.ad_id, ")
    sql.add("strftime(r.bucket_at + to_minutes(")
    _by_segment(sql, "r.bucket_at", the_plan.segments, _minutes, "INTEGER")
    sql.add("), '%Y-%m-%dT%H:%M:%S') || ")
    _by_segment(sql, "r.bucket_at", the_plan.segments, lambda seg: offset_suffix(seg.offset), "VARCHAR")
    sql.add(", " + ", ".join(f"r.{c}" for c in VALUE_COLUMNS) + ")")
    order = "r.bucket_at, r.ad_id" if per_ad else "r.bucket_at"
    sql.add(f", chr(10) ORDER BY {order}) FROM (" if query.as_csv else f"::VARCHAR, ',' ORDER BY {order}) FROM (")
    sql.add(inner.text(), *inner.params)
    return sql.add(") r GROUP BY ALL" if chunk_hours_from is not None else ") r")


class ChunkCache:
    """Rendered rows (UTF-8) of closed UTC chunks of direct plans: a closed chunk is read and
    formatted once. The chunks are UTC days, except from the day of the watermark's last hour on,
    where a minute or hour series is kept by UTC hour (see cache_chunks).

    An entry is valid for its chunk's load version: every write to the fact tables (a load, a
    reconciliation's repair) goes through loads.replace_interval, which counts itself in
    meta_load_hours, so a new load over the chunk changes the version and the entry is recomputed.
    A load rewrites the minutes just before the watermark: the hour or two it touched are read
    again, not the day. Compaction moves rows without changing them, and leaves the entries valid.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size, self.lock = max_bytes, 0, threading.Lock()
        self.entries: collections.OrderedDict = collections.OrderedDict()

    def get_many(self, prefix: tuple, versions: dict) -> dict:
        """chunk -> (count, body) of the chunks whose entry under ``prefix + (chunk,)`` has their version."""
        found = {}
        with self.lock:
            for chunk, version in versions.items():
                entry = self.entries.get((*prefix, chunk))
                if entry is not None and entry[0] == version:
                    self.entries.move_to_end((*prefix, chunk))
                    found[chunk] = entry[1], entry[2]
        return found

    def put(self, key: tuple, version: tuple, count: int, body: bytes) -> None:
        if len(body) > self.max_bytes // 4 or not self.max_bytes:
            return
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.size -= len(old[2])
            self.entries[key] = (version, count, body)
            self.size += len(body)
            while self.size > self.max_bytes:
                _, (_, _, dropped) = self.entries.popitem(last=False)
                self.size -= len(dropped)


def _chunk_cache() -> ChunkCache:
    return current_app.extensions.setdefault(
        "api_chunk_cache", ChunkCache(int(current_app.config.get("API_CHUNK_CACHE_MB", CHUNK_CACHE_MB) * 2**20)))


# A chunk's key: the epoch seconds of its start, a UTC day before {hours} and a UTC hour from it.
_CHUNK_KEY = "epoch(CASE WHEN {at} < {hours} THEN date_trunc('day', {at}) ELSE date_trunc('hour', {at}) END)::BIGINT"
NEVER = datetime(9999, 1, 1)


def hours_from(the_plan: Plan, watermark: datetime | None) -> datetime:
    """Where a direct plan's cache chunks turn from UTC days to UTC hours: the day of the watermark's
    last hour for minute and hour series (the loads rewrite the minutes before the watermark), never
    for day series."""
    if the_plan.direct not in ("minute", "hour") or watermark is None:
        return NEVER
    return _floor(watermark - HOUR, DAY)


def cache_chunks(start: datetime, end: datetime, watermark: datetime | None, hours: datetime) -> list[datetime]:
    """The starts of the closed chunks inside [start, end), in order: whole UTC days before ``hours``,
    whole UTC hours from it, all ending by the watermark. They are contiguous: a piece of a day
    before the hours (the range starting mid-day) is not a chunk, and is read from the warehouse."""
    if watermark is None:
        return []
    limit = min(end, watermark)
    starts = []
    day = _floor(start + DAY - MINUTE, DAY)
    while day + DAY <= min(limit, hours):
        starts.append(day)
        day += DAY
    hour = max(hours, _floor(start + HOUR - MINUTE, HOUR))  # where the days stopped, when they reached the zone
    while hour + HOUR <= limit:
        starts.append(hour)
        hour += HOUR
    return starts


class LoadVersions:
    """The load version of every UTC hour and day, from meta_load_hours, kept in memory and read
    again only after a load: reading the versions of a 30-day range on every request cost DuckDB
    more than serving the whole cached series. ``stamp`` is the total count of loads, which every
    load raises; each request reads it in its own snapshot, so it never takes a version newer than
    the rows it reads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stamp: int | None = None
        self.hours: dict[int, tuple[int, int]] = {}
        self.days: dict[int, tuple[int, int]] = {}

    def get(self, cur: duckdb.DuckDBPyConnection, stamp: int | None) -> tuple[dict, dict]:
        """(hours, days): epoch seconds of an hour's or a day's start -> (loads, xor of the hashes of the
        latest loads' ids over it)."""
        with self.lock:
            if stamp == self.stamp:
                return self.hours, self.days
        starts, loads, ids = cur.execute(
            "SELECT list(epoch(hour_at)::BIGINT), list(loads), list(hash(last_load_id)) FROM meta_load_hours"
        ).fetchone()
        hours = dict(zip(starts or [], zip(loads or [], ids or [])))
        days: dict[int, tuple[int, int]] = {}
        for hour, (n, x) in hours.items():
            day_n, day_x = days.get(hour - hour % 86400, (0, 0))
            days[hour - hour % 86400] = (day_n + n, day_x ^ x)
        with self.lock:
            self.stamp, self.hours, self.days = stamp, hours, days
        return hours, days


def _load_versions() -> LoadVersions:
    return current_app.extensions.setdefault("api_load_versions", LoadVersions())


def _key(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(seconds=1)


def direct_body(cur: duckdb.DuckDBPyConnection, query: Query, the_plan: Plan, scope: Scope,
                watermark: datetime | None, stamp: int | None) -> tuple[int, list[bytes]]:
    """(rows, bodies) of a direct plan: closed chunks from the chunk cache, the rest from the warehouse.
    ``stamp``: the count of loads in this request's snapshot (from context())."""
    hours = hours_from(the_plan, watermark)
    starts = cache_chunks(query.start, query.end, watermark, hours)
    hour_versions, day_versions = _load_versions().get(cur, stamp) if starts else ({}, {})
    # A chunk is (its start's key, whether it is a day): a day and its first hour share a start.
    closed = {(_key(at), at < hours): (day_versions if at < hours else hour_versions).get(_key(at), (0, 0))
              for at in starts}
    cache = _chunk_cache()
    key = (the_plan.direct, scope.advertiser_id, scope.ad_id, query.tz_name, query.as_csv)
    chunks = {chunk[0]: found for chunk, found in cache.get_many(key, closed).items()}
    # What the cache does not hold: the piece before the first chunk, the chunks it missed, and
    # everything after the last chunk, merged where they touch.
    pieces = []
    if starts:
        ends = starts[1:] + [starts[-1] + (DAY if starts[-1] < hours else HOUR)]
        pieces.append((query.start, starts[0]))
        pieces += [(lo, hi) for lo, hi in zip(starts, ends) if _key(lo) not in chunks]
        pieces.append((ends[-1], query.end))
    else:
        pieces.append((query.start, query.end))
    ranges: list[list[datetime]] = []
    for lo, hi in pieces:
        if lo >= hi:
            continue
        if ranges and ranges[-1][1] == lo:
            ranges[-1][1] = hi
        else:
            ranges.append([lo, hi])
    if ranges:
        inner, _ = series_sql(query, the_plan, scope, None, [tuple(r) for r in ranges])
        sql = render_sql(inner, query, the_plan, per_ad=scope.ad_id is None, chunk_hours_from=hours)
        fresh = {chunk: (count, text.encode()) for chunk, count, text in cur.execute(sql.text(), sql.params).fetchall()}
        for chunk, version in closed.items():
            if chunk[0] not in chunks:
                chunks[chunk[0]] = fresh.pop(chunk[0], (0, b""))
                cache.put((*key, chunk), version, *chunks[chunk[0]])
        chunks.update(fresh)
    ordered = [chunks[chunk] for chunk in sorted(chunks)]
    return sum(c for c, _ in ordered), [body for c, body in ordered if c]


# --------------------------------------------------------------------------------------------------
# Completeness: the watermark and the reconciliation of every UTC hour the range touches


def context(cur: duckdb.DuckDBPyConnection, query: Query, scope: Scope) -> dict:
    """In one statement (each costs DuckDB about a millisecond): the ad's advertiser, the watermark,
    the reconciled hours and the count of loads (the stamp of LoadVersions)."""
    first_hour, last_hour = _floor(query.start, HOUR), _floor(query.end + HOUR - MINUTE, HOUR)
    owner, watermark, reconciled, stamp = cur.execute(
        "SELECT (SELECT advertiser_id FROM dim_ads WHERE ad_id = ?), "
        "(SELECT complete_through_at FROM meta_watermarks WHERE pipeline = ?), "
        "(SELECT count(*) FROM meta_reconciliations WHERE hour_at >= ? AND hour_at < ? AND status IN (?, ?)), "
        "(SELECT sum(loads)::BIGINT FROM meta_load_hours)",
        [scope.ad_id, ROLLUP_PIPELINE, first_hour, last_hour, *RECONCILED_STATUSES],
    ).fetchone()
    hours = (last_hour - first_hour) // HOUR
    return {
        "owner": owner,
        "watermark": watermark,
        "stamp": stamp,
        "completeness": {
            "complete_through": watermark.isoformat() + "Z" if watermark else None,
            "range_complete": watermark is not None and query.end <= watermark,
            "reconciled": reconciled == hours,
            "hours": hours,
            "hours_reconciled": reconciled,
        },
    }


class _Memo:
    """One value recomputed at most every ``ttl`` seconds, shared by the service's threads."""

    def __init__(self, ttl: float):
        self.ttl, self.lock, self.value, self.at = ttl, threading.Lock(), None, float("-inf")

    def get(self, compute):
        with self.lock:
            if time.monotonic() - self.at >= self.ttl:
                self.value, self.at = compute(), time.monotonic()
            return self.value


def first_user_minute(cur: duckdb.DuckDBPyConnection) -> datetime | None:
    """The first minute the hashed users table holds, by bisection on ``minute_at < t`` probes.

    Each probe is answered from the zone maps or by the first matching row, so this stays cheap
    however many users the table keeps (a min() would read every row).
    """

    def any_before(moment: datetime) -> bool:
        return cur.execute(
            "SELECT 1 FROM stg_clicks_minute_users WHERE minute_at < ? LIMIT 1", [moment]).fetchone() is not None

    lo, hi = EARLIEST, LATEST  # nothing before lo, something before hi
    if any_before(lo):
        return cur.execute("SELECT min(minute_at) FROM stg_clicks_minute_users").fetchone()[0]
    if not any_before(hi):
        return None
    while hi - lo > MINUTE:
        mid = lo + (hi - lo) // MINUTE // 2 * MINUTE
        lo, hi = (lo, mid) if any_before(mid) else (mid, hi)
    return lo


def _users_since(cur: duckdb.DuckDBPyConnection) -> datetime | None:
    """The first minute with hashed users, rechecked at most once a minute: exact counts are possible from there."""
    memo = current_app.extensions.setdefault("api_users_since", _Memo(USERS_SINCE_TTL_S))
    return memo.get(lambda: first_user_minute(cur))


# --------------------------------------------------------------------------------------------------
# API keys: "ck_<key_id>_<secret>", only a salted SHA-256 of the secret is stored

KEY_PATTERN = re.compile(r"^ck_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def new_key() -> tuple[str, str, str]:
    """(key_id, the key to show once, the hash to store)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, f"ck_{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    # The secret has 256 random bits, so a fast hash is enough: no dictionary or brute force can reach
    # it, and a slow KDF would only add latency. The salt keeps equal inputs from sharing a hash.
    salt = salt if salt is not None else secrets.token_bytes(16)
    return f"sha256${salt.hex()}${hashlib.sha256(salt + secret.encode()).hexdigest()}"


def secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, salt, _ = stored.split("$")
        expected = hash_secret(secret, bytes.fromhex(salt))
    except ValueError:
        return False
    return scheme == "sha256" and hmac.compare_digest(expected, stored)


class KeyCache:
    """Key rows by key_id for a few seconds, so a request costs no warehouse lookup for its key."""

    def __init__(self, ttl: float, max_entries: int = 10_000, clock=time.monotonic):
        self.ttl, self.max_entries, self.clock, self.lock, self.rows = ttl, max_entries, clock, threading.Lock(), {}

    def get(self, key_id: str, load):
        now = self.clock()
        with self.lock:
            hit = self.rows.get(key_id)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        row = load(key_id)
        if row is not None:
            with self.lock:
                if len(self.rows) >= self.max_entries:
                    self.rows.clear()
                self.rows[key_id] = (now, row)
        return row

    def forget(self, key_id: str) -> None:
        with self.lock:
            self.rows.pop(key_id, None)


def _key_cache() -> KeyCache:
    return current_app.extensions.setdefault(
        "api_key_cache", KeyCache(current_app.config.get("API_KEY_CACHE_TTL_S", KEY_CACHE_TTL_S)))


def _load_key(key_id: str):
    cur = _con().cursor()
    try:
        return cur.execute(
            "SELECT advertiser_id, key_hash, revoked_at FROM dim_api_keys WHERE key_id = ?", [key_id]
        ).fetchone()
    finally:
        cur.close()


def authenticate(header: str | None, api_key_header: str | None) -> str:
    """The advertiser whose key the request carries; PermissionError with the reason otherwise."""
    given = api_key_header or (header or "")
    if not api_key_header and given:
        if not given.startswith("Bearer "):
            raise PermissionError("send your API key as 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')")
        given = given.removeprefix("Bearer ").strip()
    if not given:
        raise PermissionError("this API needs an API key: send 'Authorization: Bearer <key>'")
    match = KEY_PATTERN.match(given)
    if not match:
        raise PermissionError("malformed API key: a key looks like ck_<16 hex digits>_<43 characters>; "
                              "send it exactly as it was shown when it was created")
    key_id, secret = match.groups()
    row = _key_cache().get(key_id, _load_key)
    if row is None or not secret_matches(secret, row[1]):
        raise PermissionError("invalid API key: it is not one this service issued; check it or ask for a new one")
    if row[2] is not None:
        raise PermissionError(f"this API key was revoked at {row[2].isoformat()}Z; ask for a new one")
    return row[0]


# --------------------------------------------------------------------------------------------------
# Public endpoints

_PUBLIC = {"api.openapi_document"}


@bp.before_request
def _require_api_key():
    if request.endpoint in _PUBLIC:
        return None
    try:
        g.advertiser_id = authenticate(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
    except PermissionError as error:
        return _error(401, str(error), {"WWW-Authenticate": 'Bearer realm="clickagg"'})
    return None


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3 document of this API."""
    return jsonify(openapi.document(GRANULARITIES, MAX_RANGE_DAYS, VALUE_COLUMNS, UNIQUE_USERS_MODES))


@bp.get("/ads/<ad_id>/series")
def ad_series(ad_id: str):
    """One ad's series over [from, to)."""
    return _series(Scope(g.advertiser_id, ad_id), {"ad_id": ad_id, "advertiser_id": g.advertiser_id})


@bp.get("/advertisers/<advertiser_id>/series")
def advertiser_series(advertiser_id: str):
    """All of an advertiser's ads over [from, to), one series per ad."""
    if advertiser_id != g.advertiser_id:
        return _error(404, f"no advertiser {advertiser_id!r} for this API key")
    return _series(Scope(advertiser_id), {"advertiser_id": advertiser_id})


def _series(scope: Scope, head: dict):
    try:
        query = parse_query(request.args, request.accept_mimetypes)
    except BadRequest as error:
        return _error(400, str(error))
    cur = _con().cursor()
    try:
        # One snapshot for the data, the watermark and the reconciliations: they describe each other.
        cur.execute("BEGIN TRANSACTION READ ONLY")
        the_plan = plan(query.granularity, query.tz, query.start, query.end)
        facts = context(cur, query, scope)
        if scope.ad_id is not None and facts["owner"] != scope.advertiser_id:
            # The same answer for an unknown ad and another advertiser's: nothing leaks.
            return _error(404, f"no ad {scope.ad_id!r} for this API key")
        status = facts["completeness"]
        if the_plan.direct is not None:
            count, bodies = direct_body(cur, query, the_plan, scope, facts["watermark"], facts["stamp"])
            exact_from = None
        else:
            needs_users = query.unique_users == "exact" and any(not b.is_one_stored_row() for b in the_plan.buckets)
            since = _users_since(cur) if needs_users else None
            inner, exact_from = series_sql(query, the_plan, scope, since)
            sql = render_sql(inner, query, the_plan, per_ad=scope.ad_id is None)
            count, body = cur.execute(sql.text(), sql.params).fetchone()
            bodies = [body.encode()] if body else []
        cur.execute("COMMIT")
    finally:
        cur.close()
    sources = [TABLES[grain][0] for grain in ([the_plan.direct] if the_plan.direct else the_plan.grains)]
    exact = exact_from is None
    note = None
    if not exact:
        which = "" if exact_from == query.end else f" before {iso_local(exact_from, query.tz)}"
        why = ("unique_users=upper_bound was asked for" if query.unique_users == "upper_bound"
               else "the hashed users are not kept that far back")
        note = (f"unique_users of the buckets{which} that are not exactly one stored UTC minute, hour or day "
                f"is an upper bound (the sum of the stored distinct counts), because {why}")
    columns = (["ad_id"] if scope.ad_id is None else []) + ["start", *VALUE_COLUMNS]
    meta = {
        **head,
        "granularity": query.granularity,
        "time_zone": query.tz_name,
        "from": iso_local(query.start, query.tz),
        "to": iso_local(query.end, query.tz),
        "buckets": the_plan.bucket_count,
        "sources": sources,
        "unique_users_exact": exact,
        "unique_users_note": note,
        "completeness": status,
        "columns": columns,
        "row_count": count,
    }
    if query.as_csv:
        pieces = joined((",".join(columns) + "\n").encode(), bodies, b"\n", b"\n" if bodies else b"")
        headers = {
            "X-Complete-Through": status["complete_through"] or "",
            "X-Range-Complete": str(status["range_complete"]).lower(),
            "X-Reconciled": str(status["reconciled"]).lower(),
            "X-Unique-Users-Exact": str(exact).lower(),
            "X-Sources": ",".join(sources),
            "Vary": "Accept",
        }
        return Response(pieces, mimetype="text/csv", headers=headers)
    pieces = joined(json.dumps(meta)[:-1].encode() + b', "rows": [', bodies, b",", b"]}")
    return Response(pieces, mimetype="application/json", headers={"Vary": "Accept"})


def joined(head: bytes, bodies: list[bytes], separator: bytes, tail: bytes) -> list[bytes]:
    """head, the bodies separated, then tail, as pieces of about a body each, sent one after another.

    A 30-day minute series is megabytes: one bytes object of it is memory the allocator takes from
    the kernel and gives back on every request. Each piece here carries a separator or the head or
    the tail with its body (gunicorn writes each piece with its own send).
    """
    if not bodies:
        return [head + tail]
    pieces = [head + bodies[0]] + [separator + body for body in bodies[1:]]
    pieces[-1] += tail
    return pieces


# --------------------------------------------------------------------------------------------------
# Internal endpoints: API keys (for warehouse.keys_cli) and compaction (for the daily DAG)


# server.py guards every /internal/ route with the admin token.


def _key_row(row) -> dict:
    key_id, advertiser_id, created_at, revoked_at = row
    return {"key_id": key_id, "advertiser_id": advertiser_id, "created_at": created_at.isoformat() + "Z",
            "revoked_at": revoked_at.isoformat() + "Z" if revoked_at else None}


@internal_bp.post("/api-keys")
def create_api_key():
    """Issue a key for an advertiser; the answer is the only time the key is shown."""
    body = request.get_json(silent=True) or {}
    advertiser_id = body.get("advertiser_id")
    if not isinstance(advertiser_id, str) or not advertiser_id.strip() or len(advertiser_id) > 200:
        return _error(400, 'send JSON like {"advertiser_id": "adv-1"} (a non-empty string of at most 200 characters)')
    key_id, key, key_hash = new_key()
    cur = _con().cursor()
    try:
        cur.execute("INSERT INTO dim_api_keys VALUES (?, ?, ?, now()::TIMESTAMP, NULL)", [key_id, advertiser_id, key_hash])
        row = cur.execute("SELECT key_id, advertiser_id, created_at, revoked_at FROM dim_api_keys WHERE key_id = ?",
                          [key_id]).fetchone()
    finally:
        cur.close()
    return jsonify({**_key_row(row), "api_key": key}), 201


@internal_bp.get("/api-keys")
def list_api_keys():
    """Every key (never its secret or hash), optionally of one advertiser."""
    advertiser_id = request.args.get("advertiser_id")
    cur = _con().cursor()
    try:
        rows = cur.execute(
            "SELECT key_id, advertiser_id, created_at, revoked_at FROM dim_api_keys "
            "WHERE ? IS NULL OR advertiser_id = ? ORDER BY advertiser_id, created_at, key_id",
            [advertiser_id, advertiser_id],
        ).fetchall()
    finally:
        cur.close()
    return jsonify(keys=[_key_row(row) for row in rows])


@internal_bp.post("/api-keys/<key_id>/revoke")
def revoke_api_key(key_id: str):
    """Revoke a key now (a second revocation keeps the first time); its requests answer 401 from here on."""
    cur = _con().cursor()
    try:
        cur.execute("UPDATE dim_api_keys SET revoked_at = now()::TIMESTAMP WHERE key_id = ? AND revoked_at IS NULL",
                    [key_id])
        row = cur.execute("SELECT key_id, advertiser_id, created_at, revoked_at FROM dim_api_keys WHERE key_id = ?",
                          [key_id]).fetchone()
    finally:
        cur.close()
    _key_cache().forget(key_id)
    if row is None:
        return _error(404, f"no API key {key_id!r}: list them with 'keys list'")
    return jsonify(_key_row(row))


@internal_bp.post("/compactions/clicks-minute")
def compact_clicks_minute():
    """Rewrite one closed UTC day of the minute facts (and its users, hours, days) sorted by advertiser and ad."""
    body = request.get_json(silent=True) or {}
    try:
        day = date.fromisoformat(body.get("day") if isinstance(body.get("day"), str) else "")
    except ValueError:
        return _error(400, 'send JSON like {"day": "2026-01-01"} (a UTC day)')
    try:
        result = batch.run_in_app(compaction.compact_day, _con(), day)
    except compaction.DayNotClosed as error:
        return _error(409, str(error))
    except duckdb.TransactionException as error:
        return _error(409, f"the compaction of {day} conflicted with a concurrent load; retry: {error}")
    return jsonify(result.as_dict())
