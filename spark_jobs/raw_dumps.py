"""The S3 dumps of raw clicks: where each hour lives, its manifest, checks, and retention.

Layout under ``s3://<bucket>/<root>/`` (root ``raw_clicks``):

    date=2026-11-27/hour=10/run=<run id>/part-*.parquet   the hour's rows, one prefix per dump run
    date=2026-11-27/hour=10/_manifest.json                 names the run prefix that is the hour

A dump writes a new run prefix, then publishes the manifest (one PUT, atomic in S3), then deletes
the hour's other run prefixes. A reader starts from the manifest and reads only the files it
lists, so it sees the previous dump or the new one, never a partial hour. An hour without a
manifest has no dump, whatever data files lie under it.

Pure functions (layout, manifest building and checks, retention selection) plus ``DumpStore``,
the boto3 adapter. No Spark here: the DAG's tasks import this module too.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

ROOT = "raw_clicks"
MANIFEST_NAME = "_manifest.json"
MANIFEST_VERSION = 1
HOUR = timedelta(hours=1)
_HOUR_IN_KEY = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")


class DumpMissing(RuntimeError):
    """An hour has no published dump (never written, or deleted by retention)."""


class DumpMismatch(RuntimeError):
    """A dump's data does not match its manifest."""


# Hours and keys


def utc(moment: datetime) -> datetime:
    """The same instant as an aware UTC datetime; naive values are taken as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def floor_hour(moment: datetime) -> datetime:
    return utc(moment).replace(minute=0, second=0, microsecond=0)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Every whole hour in [start, end); both must fall on whole hours (UTC). Empty when end == start."""
    start, end = utc(start), utc(end)
    if start != floor_hour(start) or end != floor_hour(end):
        raise ValueError(f"[{start.isoformat()}, {end.isoformat()}) must start and end on whole hours (UTC)")
    if end < start:
        raise ValueError("the end must not be before the start")
    return [start + i * HOUR for i in range(int((end - start) / HOUR))]


def horizon_hours(hour: datetime, horizon_s: int) -> list[datetime]:
    """The hours before ``hour`` that can hold an earlier click of one of its impressions."""
    first = floor_hour(utc(hour) - timedelta(seconds=horizon_s))
    return hours_between(first, hour)


def hour_prefix(root: str, hour: datetime) -> str:
    hour = utc(hour)
    return f"{root}/date={hour:%Y-%m-%d}/hour={hour:%H}/"


def manifest_key(root: str, hour: datetime) -> str:
    return hour_prefix(root, hour) + MANIFEST_NAME


def run_prefix(root: str, hour: datetime, run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", run_id):
        raise ValueError(f"run id {run_id!r} may only hold letters, digits, '-' and '_'")
    return hour_prefix(root, hour) + f"run={run_id}/"


def hour_of_key(key: str) -> datetime | None:
    """The hour an object under ``.../date=YYYY-MM-DD/hour=HH/`` belongs to, or None for anything else."""
    match = _HOUR_IN_KEY.search(key)
    if not match:
        return None
    return datetime.strptime(f"{match.group(1)} {match.group(2)}", "%Y-%m-%d %H").replace(tzinfo=timezone.utc)


# Manifests


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What one dump run wrote for one hour; the row count and checksum are of the whole hour."""

    hour_start: datetime
    run_id: str
    data_prefix: str
    files: tuple[tuple[str, int], ...]  # (key, size in bytes) of every Parquet file of the hour
    row_count: int
    min_clicked_at: datetime | None
    max_clicked_at: datetime | None
    checksum: str
    columns: tuple[str, ...]
    created_at: datetime
    # The earliest issue time of the hour's impressions: how far back their earlier clicks can lie.
    # None for an empty hour, and in manifests written before it was recorded.
    min_issued_at: datetime | None = None
    version: int = MANIFEST_VERSION

    @property
    def hour_end(self) -> datetime:
        return self.hour_start + HOUR

    def to_json(self) -> str:
        def iso(moment):
            return moment.isoformat() if moment else None

        return json.dumps(
            {
                "version": self.version,
                "hour_start": iso(self.hour_start),
                "hour_end": iso(self.hour_end),
                "run_id": self.run_id,
                "data_prefix": self.data_prefix,
                "files": [{"key": key, "size": size} for key, size in self.files],
                "row_count": self.row_count,
                "min_clicked_at": iso(self.min_clicked_at),
                "max_clicked_at": iso(self.max_clicked_at),
                "min_issued_at": iso(self.min_issued_at),
                "checksum": self.checksum,
                "columns": list(self.columns),
                "created_at": iso(self.created_at),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        body = json.loads(text)
        if body.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {body.get('version')!r}")

        def instant(name):
            value = body.get(name)
            return utc(datetime.fromisoformat(value)) if value else None

        return cls(
            hour_start=instant("hour_start"),
            run_id=body["run_id"],
            data_prefix=body["data_prefix"],
            files=tuple((f["key"], int(f["size"])) for f in body["files"]),
            row_count=int(body["row_count"]),
            min_clicked_at=instant("min_clicked_at"),
            max_clicked_at=instant("max_clicked_at"),
            min_issued_at=instant("min_issued_at"),
            checksum=body["checksum"],
            columns=tuple(body["columns"]),
            created_at=instant("created_at"),
        )


def build_manifest(
    root: str,
    hour: datetime,
    run_id: str,
    listed: Mapping[str, int],
    stats: Mapping,
    columns: Iterable[str],
    created_at: datetime,
) -> Manifest:
    """The manifest of a finished run: its Parquet files (from a listing) and the rows' statistics.

    ``stats`` holds ``rows``, ``min_clicked_at``, ``max_clicked_at``, ``checksum`` and optionally
    ``min_issued_at``, as the dump job measured them on the rows it wrote.
    """
    hour = utc(hour)
    prefix = run_prefix(root, hour, run_id)
    files = tuple(sorted((key, size) for key, size in listed.items() if key.startswith(prefix) and key.endswith(".parquet")))
    if not files:
        raise DumpMismatch(f"the dump of {hour.isoformat()} wrote no Parquet file under {prefix}")
    for name in ("min_clicked_at", "max_clicked_at"):
        moment = stats.get(name)
        if moment is not None and not hour <= utc(moment) < hour + HOUR:
            raise DumpMismatch(f"{name} {moment} of the dump falls outside the hour {hour.isoformat()}")
    return Manifest(
        hour_start=hour,
        run_id=run_id,
        data_prefix=prefix,
        files=files,
        row_count=int(stats["rows"]),
        min_clicked_at=utc(stats["min_clicked_at"]) if stats.get("min_clicked_at") else None,
        max_clicked_at=utc(stats["max_clicked_at"]) if stats.get("max_clicked_at") else None,
        checksum=str(stats["checksum"]),
        columns=tuple(columns),
        created_at=utc(created_at),
        min_issued_at=utc(stats["min_issued_at"]) if stats.get("min_issued_at") else None,
    )


def file_problems(manifest: Manifest, listed: Mapping[str, int]) -> list[str]:
    """What is wrong with the Parquet files under the manifest's prefix, compared with the manifest."""
    problems = []
    present = {key: size for key, size in listed.items() if key.startswith(manifest.data_prefix) and key.endswith(".parquet")}
    for key, size in manifest.files:
        if key not in present:
            problems.append(f"{key} is missing")
        elif present[key] != size:
            problems.append(f"{key} has {present[key]} bytes, the manifest says {size}")
    extra = sorted(set(present) - {key for key, _ in manifest.files})
    if extra:
        problems.append(f"{len(extra)} Parquet files not in the manifest, e.g. {extra[0]}")
    return problems


def content_problems(manifest: Manifest, rows: int, checksum: str | None) -> list[str]:
    """Differences between the rows read back and the manifest (checksum None: rows only)."""
    problems = []
    if rows != manifest.row_count:
        problems.append(f"row count {rows} != manifest {manifest.row_count}")
    if checksum is not None and checksum != manifest.checksum:
        problems.append(f"checksum {checksum} != manifest {manifest.checksum}")
    return problems


# Retention


def expired_hours(hours: Iterable[datetime], now: datetime, retention_s: int) -> list[datetime]:
    """The dumped hours that ended at least ``retention_s`` before ``now``, oldest first."""
    cutoff = utc(now) - timedelta(seconds=retention_s)
    return sorted(h for h in hours if utc(h) + HOUR <= cutoff)


def expired_dates(dates: Iterable[str], now: datetime, retention_s: int) -> tuple[list[str], list[str]]:
    """Split ``date=YYYY-MM-DD`` values into (wholly expired, partly expired) by the same cutoff."""
    cutoff = utc(now) - timedelta(seconds=retention_s)
    whole, partial = [], []
    for date in sorted(dates):
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        if day + timedelta(days=1) <= cutoff:
            whole.append(date)
        elif day < cutoff:
            partial.append(date)
    return whole, partial


# The S3 adapter


def s3_client(environ: Mapping[str, str]):
    """A boto3 S3 client for the project's store (S3_ENDPOINT, AWS_* from the environment)."""
    import boto3
    from botocore.config import Config

    endpoint = environ.get("S3_ENDPOINT")
    if not endpoint:
        raise RuntimeError("S3_ENDPOINT is not set: the URL of the S3 store, e.g. http://127.0.0.1:18333")
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


class DumpStore:
    """The dumps of one bucket and root, through a boto3 S3 client."""

    def __init__(self, client, bucket: str, root: str = ROOT):
        self.client, self.bucket, self.root = client, bucket, root

    def url(self, key: str, scheme: str = "s3") -> str:
        return f"{scheme}://{self.bucket}/{key}"

    def list_objects(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found

    def list_prefixes(self, prefix: str) -> list[str]:
        """The 'folders' directly under ``prefix``."""
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return found

    def read_manifest(self, hour: datetime) -> Manifest | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=manifest_key(self.root, hour))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return Manifest.from_json(body)

    def require_manifest(self, hour: datetime) -> Manifest:
        """The hour's manifest; DumpMissing with what to do when there is none."""
        manifest = self.read_manifest(hour)
        if manifest is None:
            raise DumpMissing(
                f"no dump of raw clicks for the hour {utc(hour).isoformat()}: "
                f"{self.url(manifest_key(self.root, hour))} does not exist. It was never written, or retention "
                "(DUMP_RETENTION_S) deleted it. While Cassandra still holds the hour (RAW_CLICK_TTL_S), re-run the "
                "reconcile_clicks_hourly DAG for it with dumping on; after that the hour cannot be recomputed."
            )
        if manifest.hour_start != utc(hour):
            raise DumpMismatch(f"{manifest_key(self.root, hour)} describes {manifest.hour_start.isoformat()}")
        return manifest

    def check_files(self, manifest: Manifest) -> None:
        """Raise DumpMismatch unless exactly the manifest's files, with its sizes, are under its prefix."""
        problems = file_problems(manifest, self.list_objects(manifest.data_prefix))
        if problems:
            raise DumpMismatch(f"the dump of {manifest.hour_start.isoformat()} does not match its manifest: " + "; ".join(problems))

    def publish(self, manifest: Manifest) -> None:
        """Make ``manifest`` the hour's dump (one PUT), then delete every other run of the hour."""
        self.client.put_object(
            Bucket=self.bucket, Key=manifest_key(self.root, manifest.hour_start),
            Body=manifest.to_json().encode(), ContentType="application/json",
        )
        keep = manifest.data_prefix
        stale = [k for k in self.list_objects(hour_prefix(self.root, manifest.hour_start))
                 if not k.startswith(keep) and not k.endswith(MANIFEST_NAME)]
        self.delete_keys(stale)

    def delete_keys(self, keys: list[str]) -> int:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def delete_hour(self, hour: datetime) -> int:
        """Delete an hour's dump: the manifest first, so a half-deleted hour never looks complete."""
        return self._delete_hour_keys(hour, list(self.list_objects(hour_prefix(self.root, hour))))

    def _delete_hour_keys(self, hour: datetime, keys: list[str]) -> int:
        manifest = manifest_key(self.root, hour)
        first = self.delete_keys([manifest] if manifest in keys else [])
        return first + self.delete_keys([k for k in keys if k != manifest])

    def dumped_dates(self) -> list[str]:
        return [p.rstrip("/").split("date=")[-1] for p in self.list_prefixes(f"{self.root}/") if "/date=" in p]

    def delete_expired(self, now: datetime, retention_s: int) -> dict:
        """Delete every hour (data and manifest) that ended ``retention_s`` or more before ``now``.

        Lists the objects of each date up to the cutoff, one date at a time: some stores (SeaweedFS)
        keep listing a folder after its last object is gone, so an empty date costs one listing.
        """
        whole, partial = expired_dates(self.dumped_dates(), now, retention_s)
        deleted, objects = [], 0
        for date in whole + partial:
            by_hour: dict[datetime, list[str]] = {}
            for key in self.list_objects(f"{self.root}/date={date}/"):
                hour = hour_of_key(key)
                if hour is not None:
                    by_hour.setdefault(hour, []).append(key)
            for hour in expired_hours(by_hour, now, retention_s):
                objects += self._delete_hour_keys(hour, by_hour[hour])
                deleted.append(hour)
        return {"hours_deleted": [h.isoformat() for h in deleted], "objects_deleted": objects,
                "cutoff": (utc(now) - timedelta(seconds=retention_s)).isoformat()}
