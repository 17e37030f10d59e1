"""The warehouse service's reconciliation endpoints and its Prometheus metrics.

    POST /internal/reconciliations/clicks-hour          compare an hour with its recomputation, repair it, report
    POST /internal/reconciliations/clicks-hour/failed   record a run that could not get that far
    GET  /metrics                                       the latest report as Prometheus gauges
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import duckdb
from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from warehouse import batch, reconcile

bp = Blueprint("reconcile", __name__)


def _con() -> duckdb.DuckDBPyConnection:
    return current_app.extensions["warehouse"]


def _error(status: int, message: str):
    return jsonify(error=message, status=status), status


def _hour(body: dict) -> datetime:
    value = body.get("hour")
    if not isinstance(value, str):
        raise ValueError("'hour' is required: the start of the hour, ISO-8601 UTC")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _context(body: dict) -> dict:
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise ValueError("'context' must be a JSON object")
    return context


@bp.post("/internal/reconciliations/clicks-hour")
def reconcile_clicks_hour():
    """Compare an hour with the reconcile job's Parquet output, repair it if it differs, record the report."""
    body = request.get_json(silent=True) or {}
    try:
        hour = _hour(body)
        output = body.get("output")
        if not isinstance(output, str) or not output:
            raise ValueError("'output' (the reconcile job's output folder) is required")
        threshold = body.get("drift_threshold", reconcile.DEFAULT_DRIFT_THRESHOLD)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise ValueError("'drift_threshold' must be a number")
        report = batch.run_in_app(
            reconcile.reconcile_hour, _con(), hour, f"{output}/minute/*.parquet", f"{output}/users/*.parquet", float(threshold), _context(body)
        )
    except (ValueError, duckdb.IOException, duckdb.InvalidInputException) as error:
        return _error(400, str(error))
    return jsonify(report.as_dict())


@bp.post("/internal/reconciliations/clicks-hour/failed")
def record_failed_reconciliation():
    """Record that a reconciliation of the hour failed before it could compare (say why in 'detail')."""
    body = request.get_json(silent=True) or {}
    try:
        hour = _hour(body)
        detail = body.get("detail")
        if not isinstance(detail, str) or not detail.strip():
            raise ValueError("'detail' (what failed) is required")
        report = batch.run_in_app(reconcile.record_failure, _con(), hour, detail.strip(), _context(body))
    except ValueError as error:
        return _error(400, str(error))
    return jsonify(report.as_dict())


def _seconds(moment: datetime | None) -> float:
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment else 0.0


class ReconciliationCollector:
    """Gauges read from meta_reconciliations at each scrape, so they always show the committed reports."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def collect(self):
        state = reconcile.latest(self.con)
        report = state["latest"] or {}
        detail = report.get("detail") or {}

        def gauge(name: str, doc: str, value) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"clickagg_reconciliation_{name}", doc, value=float(value or 0))

        yield gauge("last_hour_timestamp_seconds", "Start of the hour of the latest reconciliation (UTC)",
                    _seconds(report.get("hour_at")))
        yield gauge("last_run_timestamp_seconds", "When the latest reconciliation finished", _seconds(report.get("reconciled_at")))
        yield gauge("cells_compared", "(minute, ad) cells compared by the latest reconciliation", report.get("cells_compared"))
        yield gauge("cells_differed", "Cells that differed from the recomputation before repair", report.get("cells_differed"))
        yield gauge("total_abs_diff", "Absolute difference of billable clicks plus unique users before repair",
                    report.get("total_abs_diff"))
        yield gauge("repaired", "1 when the latest reconciliation replaced its hour", report.get("repaired"))
        yield gauge("run_seconds", "Seconds the warehouse spent comparing and repairing", report.get("run_seconds"))
        yield gauge("late_clicks", "Clicks of the latest hour stored after every minute rollup had passed",
                    (detail.get("context") or {}).get("late_clicks"))
        status = GaugeMetricFamily("clickagg_reconciliation_status", "1 for the latest reconciliation's status",
                                   labels=["status"])
        for name in reconcile.STATUSES:
            status.add_metric([name], 1.0 if report.get("status") == name else 0.0)
        yield status
        hours = GaugeMetricFamily("clickagg_reconciliation_hours", "Hours whose latest reconciliation has this status",
                                  labels=["status"])
        for name, count in state["hours_by_status"].items():
            hours.add_metric([name], float(count))
        yield hours
        yield gauge("last_failed_hour_timestamp_seconds", "Start of the latest hour whose reconciliation failed (0: none)",
                    _seconds(state["last_failed_hour_at"]))


@bp.get("/metrics")
def metrics():
    """Prometheus exposition of the reconciliation reports."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReconciliationCollector(_con()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
