"""Compare an hour of the warehouse with its recomputation from the S3 dump, and repair it.

In one transaction: compare the hour's minute facts with the recomputed Parquet (the layout of
the rollup job's output), replace the hour from it the way a load does (watermark untouched)
when anything differs, and record the report in meta_reconciliations. Readers see the hour as
it was or as repaired, never half of each. Drift above the threshold is still repaired; the
report's status is then ``failed`` so that the run fails and someone looks.

A cell is one (minute, ad). It differs when it exists on one side only or any of its counts
differs; the drift is the total absolute difference of billable clicks and unique users.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime, timedelta, timezone

import duckdb

from warehouse import loads
from warehouse.schema import COUNT_COLUMNS

log = logging.getLogger(__name__)

STATUS_OK, STATUS_REPAIRED, STATUS_FAILED = "ok", "repaired", "failed"
STATUSES = (STATUS_OK, STATUS_REPAIRED, STATUS_FAILED)
DEFAULT_DRIFT_THRESHOLD = 0.0001
_OTHER_COUNTS = [c for c in COUNT_COLUMNS if c != "billable_clicks"]
_COMPARED = ", ".join([*COUNT_COLUMNS, "unique_users"])


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How the warehouse's hour differs from the recomputed one."""

    cells_compared: int
    cells_differed: int
    billable_abs_diff: int
    users_abs_diff: int
    other_abs_diff: int  # duplicate, expired and invalid counts
    cells_missing: int  # recomputed, absent from the warehouse
    cells_extra: int  # in the warehouse, absent from the recomputation
    user_rows_differ: bool  # the hashed users behind the cells (hour and day unique users come from them)
    billable_total: int  # of the recomputation
    users_total: int

    @property
    def total_abs_diff(self) -> int:
        return self.billable_abs_diff + self.users_abs_diff

    @property
    def needs_repair(self) -> bool:
        return self.cells_differed > 0 or self.user_rows_differ

    @property
    def drift_ratio(self) -> float:
        """The drift as a share of the hour's billable clicks plus unique users (recomputed)."""
        return self.total_abs_diff / max(self.billable_total + self.users_total, 1)


def status_of(comparison: Comparison, drift_threshold: float) -> str:
    """``ok`` when nothing differs, ``repaired`` within the threshold, ``failed`` above it."""
    if not comparison.needs_repair:
        return STATUS_OK
    return STATUS_FAILED if comparison.drift_ratio > drift_threshold else STATUS_REPAIRED


def describe(comparison: Comparison, status: str, drift_threshold: float) -> str:
    """One line saying what differed and what was done."""
    if not comparison.needs_repair:
        return f"no difference in {comparison.cells_compared} cells"
    line = (
        f"{comparison.cells_differed} of {comparison.cells_compared} cells differed "
        f"({comparison.cells_missing} missing from the warehouse, {comparison.cells_extra} extra): "
        f"billable clicks off by {comparison.billable_abs_diff}, unique users by {comparison.users_abs_diff}, "
        f"other counts by {comparison.other_abs_diff}"
        + ("; the hashed users differ" if comparison.user_rows_differ else "")
        + f"; drift {comparison.drift_ratio:.6f} of {comparison.billable_total + comparison.users_total}"
    )
    if status == STATUS_FAILED:
        return line + f" is over the threshold {drift_threshold}: repaired, and the run fails"
    return line + f" (threshold {drift_threshold}): repaired"


@dataclasses.dataclass(frozen=True)
class Report:
    """One row of meta_reconciliations."""

    hour_at: datetime
    cells_compared: int
    cells_differed: int
    total_abs_diff: int
    repaired: bool
    run_seconds: float
    status: str
    detail: dict

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["hour_at"] = self.hour_at.isoformat()
        return out


def _naive_hour(hour: datetime) -> datetime:
    if hour.tzinfo is not None:
        hour = hour.astimezone(timezone.utc).replace(tzinfo=None)
    if hour != hour.replace(minute=0, second=0, microsecond=0):
        raise ValueError(f"{hour.isoformat()} is not the start of an hour")
    return hour


def compare(cur: duckdb.DuckDBPyConnection, minute_files: str, user_files: str, start: datetime, end: datetime) -> Comparison:
    """Compare [start, end) of fct_clicks_minute and stg_clicks_minute_users with the recomputed Parquet."""
    outside = cur.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE minute_at < ? OR minute_at >= ?", [minute_files, start, end]
    ).fetchone()[0]
    if outside:
        raise ValueError(f"{outside} recomputed rows of {minute_files} fall outside [{start}, {end})")
    diff = " + ".join(f"abs(coalesce(o.{c}, 0) - coalesce(n.{c}, 0))" for c in _OTHER_COUNTS)
    row = cur.execute(
        f"""WITH n AS (SELECT minute_at, ad_id, {_COMPARED} FROM read_parquet(?)),
                 o AS (SELECT minute_at, ad_id, {_COMPARED} FROM fct_clicks_minute WHERE minute_at >= ? AND minute_at < ?),
                 cells AS (
                     SELECT o.ad_id IS NULL AS is_missing, n.ad_id IS NULL AS is_extra,
                            abs(coalesce(o.billable_clicks, 0) - coalesce(n.billable_clicks, 0)) AS billable_diff,
                            abs(coalesce(o.unique_users, 0) - coalesce(n.unique_users, 0)) AS users_diff,
                            {diff} AS other_diff
                     FROM o FULL OUTER JOIN n ON o.minute_at = n.minute_at AND o.ad_id = n.ad_id
                 )
            SELECT count(*),
                   count(*) FILTER (WHERE is_missing OR is_extra OR billable_diff + users_diff + other_diff > 0),
                   coalesce(sum(billable_diff), 0)::BIGINT, coalesce(sum(users_diff), 0)::BIGINT,
                   coalesce(sum(other_diff), 0)::BIGINT,
                   count(*) FILTER (WHERE is_missing), count(*) FILTER (WHERE is_extra),
                   (SELECT coalesce(sum(billable_clicks), 0)::BIGINT FROM n),
                   (SELECT coalesce(sum(unique_users), 0)::BIGINT FROM n)
            FROM cells""",
        [minute_files, start, end],
    ).fetchone()
    # An order-independent fingerprint of each side's (minute, ad, user) rows: equal sets, equal sums.
    users_sql = "SELECT count(*), coalesce(sum(hash(minute_at, ad_id, user_hash)::HUGEINT), 0) FROM {} WHERE minute_at >= ? AND minute_at < ?"
    old_users = cur.execute(users_sql.format("stg_clicks_minute_users"), [start, end]).fetchone()
    new_users = cur.execute(users_sql.format("read_parquet(?)"), [user_files, start, end]).fetchone()
    return Comparison(*row[:7], user_rows_differ=tuple(old_users) != tuple(new_users), billable_total=row[7], users_total=row[8])


def _save(cur: duckdb.DuckDBPyConnection, report: Report) -> None:
    cur.execute(
        "INSERT OR REPLACE INTO meta_reconciliations VALUES (?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
        [report.hour_at, report.cells_compared, report.cells_differed, report.total_abs_diff, report.repaired,
         report.run_seconds, report.status, json.dumps(report.detail, default=str)],
    )


def _already_reported(cur: duckdb.DuckDBPyConnection, hour: datetime, context: dict | None) -> Report | None:
    """The hour's stored report when it came from this very recomputation (the same ``context``, which
    names its dump run and carries its timings) and said repaired or failed.

    A retried call whose first attempt committed finds nothing left to repair: answering "ok" would
    overwrite the report of the repair it made, and a drift alarm with it.
    """
    if not context:
        return None
    row = cur.execute(
        "SELECT hour_at, cells_compared, cells_differed, total_abs_diff, repaired, run_seconds, status, detail "
        "FROM meta_reconciliations WHERE hour_at = ?", [hour]).fetchone()
    if row is None or row[6] == STATUS_OK:
        return None
    detail = json.loads(row[7])
    return Report(*row[:7], detail) if detail.get("context") == context else None


def reconcile_hour(
    con: duckdb.DuckDBPyConnection,
    hour: datetime,
    minute_files: str,
    user_files: str,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    context: dict | None = None,
    clock=time.monotonic,
) -> Report:
    """Compare the hour with the recomputed Parquet, repair it when anything differs, record the report."""
    start = _naive_hour(hour)
    end = start + timedelta(hours=1)
    if drift_threshold < 0:
        raise ValueError("the drift threshold must not be negative")
    began = clock()
    with loads.WRITE_LOCK:
        cur = con.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            comparison = compare(cur, minute_files, user_files, start, end)
            earlier = None if comparison.needs_repair else _already_reported(cur, start, context)
            if earlier is not None:
                cur.execute("ROLLBACK")
                log.warning("reconciliation of %s: this recomputation was already reconciled (%s): its report stands",
                            start.isoformat(), earlier.status)
                return earlier
            load = None
            if comparison.needs_repair:
                load = loads.replace_interval(cur, minute_files, user_files, start, end, advance_watermark=False)
            status = status_of(comparison, drift_threshold)
            detail = {
                "message": describe(comparison, status, drift_threshold),
                **{k: v for k, v in dataclasses.asdict(comparison).items() if k not in ("cells_compared", "cells_differed")},
                "drift_ratio": comparison.drift_ratio,
                "drift_threshold": drift_threshold,
                "load": load.as_dict() if load else None,
                "context": context or {},
            }
            # The run's time: the Spark recompute (its summary, passed as context) and this compare and repair.
            compare_repair_s = clock() - began
            detail["compare_repair_seconds"] = round(compare_repair_s, 3)
            recompute_s = float(detail["context"].get("recompute_seconds") or 0)
            report = Report(start, comparison.cells_compared, comparison.cells_differed, comparison.total_abs_diff,
                            load is not None, round(recompute_s + compare_repair_s, 3), status, detail)
            _save(cur, report)
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
    level = logging.ERROR if status == STATUS_FAILED else logging.WARNING if load else logging.INFO
    log.log(level, "reconciliation of %s: %s: %s", start.isoformat(), status, detail["message"])
    return report


def record_failure(con: duckdb.DuckDBPyConnection, hour: datetime, message: str, context: dict | None = None) -> Report:
    """Record a run that could not compare the hour (no dump, a dump that does not match its manifest...)."""
    report = Report(_naive_hour(hour), 0, 0, 0, False, 0.0, STATUS_FAILED, {"message": message, "context": context or {}})
    with loads.WRITE_LOCK:
        cur = con.cursor()
        try:
            _save(cur, report)
        finally:
            cur.close()
    log.error("reconciliation of %s failed: %s", report.hour_at.isoformat(), message)
    return report


def latest(con: duckdb.DuckDBPyConnection) -> dict:
    """What the metrics show: the most recent report, hours recorded by status, the last failed hour."""
    cur = con.cursor()
    try:
        row = cur.execute(
            "SELECT hour_at, cells_compared, cells_differed, total_abs_diff, repaired, run_seconds, status, detail, "
            "reconciled_at FROM meta_reconciliations ORDER BY reconciled_at DESC, hour_at DESC LIMIT 1"
        ).fetchone()
        by_status = dict(cur.execute("SELECT status, count(*) FROM meta_reconciliations GROUP BY status").fetchall())
        last_failed = cur.execute("SELECT max(hour_at) FROM meta_reconciliations WHERE status = ?", [STATUS_FAILED]).fetchone()[0]
    finally:
        cur.close()
    report = None
    if row:
        names = ["hour_at", "cells_compared", "cells_differed", "total_abs_diff", "repaired", "run_seconds", "status",
                 "detail", "reconciled_at"]
        report = dict(zip(names, row))
        report["detail"] = json.loads(report["detail"]) if report["detail"] else {}
    return {"latest": report, "hours_by_status": {s: by_status.get(s, 0) for s in STATUSES}, "last_failed_hour_at": last_failed}
