"""The warehouse service: the one process that opens the DuckDB file, for loads and reads alike.

DuckDB lets one process write a file and no other process open it meanwhile, so every load
and every query goes through this process. Inside it, each request has its own cursor: a load
commits atomically while queries keep running, and they see the new interval all at once.
"""

from __future__ import annotations

import hmac
import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone

import duckdb
from flask import Blueprint, Flask, current_app, jsonify, request

from warehouse import DEFAULT_THREADS, batch, checks, connect, loads, schema
from warehouse.api import bp as api_bp
from warehouse.api import internal_bp as api_internal_bp
from warehouse.reconcile_api import bp as reconcile_bp
from warehouse.sql import ReadOnlyError, run_read_only

log = logging.getLogger(__name__)
bp = Blueprint("warehouse", __name__)


def config_from_env(env: Mapping[str, str] = os.environ) -> dict:
    """The service's settings from its environment variables (the README's configuration table)."""
    return {
        "WAREHOUSE_PATH": env.get("WAREHOUSE_PATH", ".local/warehouse/clickagg.duckdb"),
        "ADMIN_TOKEN": env.get("WAREHOUSE_ADMIN_TOKEN", ""),
        "THREADS": int(env.get("WAREHOUSE_THREADS", DEFAULT_THREADS)),
        "SQL_ROW_LIMIT": int(env.get("WAREHOUSE_SQL_ROW_LIMIT", "10000")),
        "BATCH_NICE": int(env.get("WAREHOUSE_BATCH_NICE", batch.DEFAULT_NICE)),
    }


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config_from_env() if test_config is None else test_config)
    logging.basicConfig(stream=sys.stdout, level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    con = connect(app.config["WAREHOUSE_PATH"], threads=app.config.get("THREADS"))
    applied = schema.migrate(con)
    if applied:
        log.info("warehouse migrations applied: %s", applied)
    app.extensions["warehouse"] = con
    app.extensions["batch"] = batch.BatchThread(app.config.get("BATCH_NICE", batch.DEFAULT_NICE))
    app.register_blueprint(bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(api_internal_bp)
    app.register_blueprint(reconcile_bp)
    return app


def _con() -> duckdb.DuckDBPyConnection:
    return current_app.extensions["warehouse"]


def _error(status: int, message: str):
    return jsonify(error=message, status=status), status


@bp.before_app_request
def _require_admin_token():
    """Guard every /internal/ route of the app, whichever blueprint serves it."""
    if not request.path.startswith("/internal/"):
        return None
    expected = current_app.config.get("ADMIN_TOKEN")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if expected and not hmac.compare_digest(given.encode(), expected.encode()):
        return _error(401, "this endpoint needs 'Authorization: Bearer <WAREHOUSE_ADMIN_TOKEN>'")
    return None


@bp.get("/healthz")
def healthz():
    wm = loads.watermark(_con().cursor())
    return jsonify(status="ok", complete_through=wm.isoformat() if wm else None)


def _instant(body: dict, name: str) -> datetime:
    value = body.get(name)
    if not isinstance(value, str):
        raise ValueError(f"'{name}' is required, as an ISO-8601 UTC time")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@bp.post("/internal/loads/clicks-minute")
def load_clicks_minute():
    """Replace an interval of fct_clicks_minute from the rollup job's Parquet output."""
    body = request.get_json(silent=True) or {}
    try:
        start, end = _instant(body, "start"), _instant(body, "end")
        output = body.get("output")
        if not isinstance(output, str) or not output:
            raise ValueError("'output' (the rollup job's output folder) is required")
        result = batch.run_in_app(
            loads.load_clicks_minute, _con(), f"{output}/minute/*.parquet", f"{output}/users/*.parquet", start, end,
            advance_watermark=bool(body.get("advance_watermark", True)),
        )
    except (ValueError, duckdb.IOException, duckdb.InvalidInputException) as error:
        return _error(400, str(error))
    return jsonify(result.as_dict())


@bp.post("/internal/checks")
def run_checks():
    """Run the data-quality checks over an interval (or everything); 200 with the failures listed."""
    body = request.get_json(silent=True) or {}
    try:
        start = _instant(body, "start") if "start" in body else None
        end = _instant(body, "end") if "end" in body else None
    except ValueError as error:
        return _error(400, str(error))
    failures = batch.run_in_app(checks.run_checks, _con(), start, end)
    return jsonify(passed=not failures, failures=failures)


@bp.post("/sql")
def sql():
    """Run one read-only statement (``?`` placeholders bound from ``params``); JSON columns and rows."""
    body = request.get_json(silent=True) or {}
    query = body.get("sql")
    if not isinstance(query, str) or not query.strip():
        return _error(400, 'send JSON like {"sql": "SELECT ..."}')
    params = body.get("params")
    if params is not None and not isinstance(params, list):
        return _error(400, "'params' must be a list of values for the query's ? placeholders")
    try:
        columns, rows, truncated = run_read_only(_con(), query, current_app.config.get("SQL_ROW_LIMIT", 10000), params)
    except ReadOnlyError as error:
        return _error(403, str(error))
    except duckdb.Error as error:
        return _error(400, str(error).strip())
    return jsonify(columns=columns, rows=rows, truncated=truncated)
