"""The click service: GET /click verifies a signed impression, stores the click, answers 302."""

from __future__ import annotations

import logging
import os
import sys
import threading

from flask import Flask


def create_app(test_config: dict | None = None, services=None) -> Flask:
    """Build the app; ``services`` (store, deduper, spool) may be given by tests as fakes."""
    from click_api import config, views
    from click_api.wiring import Services, build_services, start_replayer

    app = Flask(__name__)
    if test_config is None:
        app.config.update(config.from_env(os.environ))
    else:
        app.config.update(test_config)
    _configure_logging(app.config.get("LOG_LEVEL", "INFO"))
    if services is None:
        services = build_services(app.config)
        if app.config.get("SPOOL_REPLAY_INTERVAL_S", 5) > 0:
            start_replayer(services, app.config.get("SPOOL_REPLAY_INTERVAL_S", 5), threading.Event(),
                           app.config.get("WINDOWS"))
    assert isinstance(services, Services)
    app.extensions["clickagg"] = services
    app.register_blueprint(views.bp)
    return app


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_clickagg", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._clickagg = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(level)
