"""A bare Flask app whose /click only answers 302: the baseline `make bench-click` compares /click with."""

from __future__ import annotations

from flask import Flask, redirect

LANDING = "https://landing.example.com/bare?clickagg_cid=bare"


def create_app() -> Flask:
    """Build the baseline app: no token check, no storage, just the redirect."""
    app = Flask(__name__)

    @app.get("/click")
    def click():
        return redirect(LANDING, code=302)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
