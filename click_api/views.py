"""HTTP endpoints of the click service: /click, impression minting, health and metrics."""

from __future__ import annotations

import hmac
import html
import logging
import os
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, make_response, redirect, request

from click_api import metrics
from click_api.events import RequestInfo
from click_api.tokens import MAX_ID_LENGTH, Impression, mint, new_impression_id

log = logging.getLogger(__name__)
bp = Blueprint("clicks", __name__)


def _services():
    return current_app.extensions["clickagg"]


def error_response(status: int, message: str):
    """One shape for every error: JSON when the client asks for it, a short HTML page otherwise."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if best == "application/json" or request.accept_mimetypes.best == "application/json":
        response = jsonify(error=message, status=status)
    else:
        body = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{html.escape(message)}</p>\n"
        response = make_response(body)
        response.content_type = "text/html; charset=utf-8"
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _request_info() -> RequestInfo:
    return RequestInfo(
        method=request.method,
        user_agent=request.headers.get("User-Agent", ""),
        client_ip=request.remote_addr or "",
        referrer=request.headers.get("Referer"),
        headers={k.lower(): v for k, v in request.headers.items() if k.lower() in _LABEL_HEADERS},
    )


_LABEL_HEADERS = {"purpose", "sec-purpose", "x-purpose", "x-moz"}


@bp.route("/click", methods=["GET", "HEAD"])
def click():
    started = time.perf_counter()
    token = request.args.get("t")
    outcome = _services().clicks.handle(token, _request_info(), datetime.now(timezone.utc))
    metrics.CLICKS.labels(outcome.reason or "unknown").inc()
    if outcome.spooled:
        metrics.SPOOLED.inc()
    if outcome.status_code != 302:
        response = error_response(outcome.status_code, outcome.error or "error")
    else:
        response = redirect(outcome.location, code=302)
        response.headers["Cache-Control"] = "no-store"
        # One line per click only at DEBUG: at thousands of clicks a second the log would cost more
        # than the click, and every click is in Cassandra (a spooled one also logs a warning).
        log.debug(
            "click id=%s ad=%s status=%s reason=%s spooled=%s",
            outcome.click.click_id, outcome.click.ad_id, outcome.click.status, outcome.click.reason, outcome.spooled,
        )
    metrics.LATENCY.observe(time.perf_counter() - started)
    return response


@bp.post("/impressions")
def create_impression():
    """Mint a signed click URL for an ad (the placement side calls this when it shows the ad)."""
    cfg = current_app.config
    expected = cfg.get("MINT_TOKEN")
    if expected:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(401, "a valid 'Authorization: Bearer <mint token>' header is required")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("ad_id"), str) or not body["ad_id"]:
        return error_response(400, 'send JSON like {"ad_id": "ad-1", "user_id": "optional"}')
    user_id = body.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > MAX_ID_LENGTH):
        return error_response(400, f"user_id must be a string of at most {MAX_ID_LENGTH} characters")
    if len(body["ad_id"]) > MAX_ID_LENGTH:
        return error_response(400, f"ad_id must be at most {MAX_ID_LENGTH} characters")
    ad = _services().store.get_ad(body["ad_id"])
    if ad is None:
        return error_response(404, f"ad {body['ad_id']!r} does not exist")
    impression = Impression(new_impression_id(), ad.ad_id, int(time.time()), cfg["SIGNING_KEY_ID"], user_id)
    url = click_url(cfg["PUBLIC_BASE_URL"], mint(impression, cfg["SIGNING_KEYS"]))
    return jsonify(click_url=url, impression_id=impression.impression_id), 201


def click_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/click?t={token}"


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    services = _services()
    checks = {}
    for name, probe in (("cassandra", services.store.ping), ("redis", services.deduper.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as error:  # report, do not raise: this endpoint exists to say what is down
            checks[name] = f"down: {error.__class__.__name__}"
    depth = services.spool.depth() if services.spool else 0
    metrics.SPOOL_DEPTH.set(depth)
    # Clicks are still accepted with Cassandra down (they are spooled), so only an
    # unwritable service is "not ready"; Redis down only slows duplicate labelling.
    ready = checks["cassandra"] == "ok" or services.spool is not None
    # Each gunicorn worker has its own Cassandra session; the pid says which one answered.
    return jsonify(ready=ready, checks=checks, spool_depth=depth, worker=os.getpid()), 200 if ready else 503


@bp.get("/metrics")
def metrics_view():
    body, content_type = metrics.render()
    return body, 200, {"Content-Type": content_type}
