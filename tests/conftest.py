"""Shared fixtures. Unit tests use fakes; integration and e2e tests use the services of `make up`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from click_api import create_app  # noqa: E402
from click_api.storage import Ad  # noqa: E402
from click_api.tokens import parse_keys  # noqa: E402
from click_api.windows import Windows  # noqa: E402
from click_api.wiring import make_click_service  # noqa: E402
from tests.fakes import FakeDeduper, FakeStore  # noqa: E402

TEST_KEYS = "k1:unit-test-secret,k0:previous-secret"


def unit_config(tmp_path: Path, **overrides) -> dict:
    cfg = {
        "TESTING": True,
        "SIGNING_KEYS": parse_keys(TEST_KEYS),
        "SIGNING_KEY_ID": "k1",
        "FINGERPRINT_SALT": b"salt",
        "CLICK_ID_PARAM": "clickagg_cid",
        "AD_CACHE_SIZE": 100,
        "AD_CACHE_TTL_S": 30,
        "PUBLIC_BASE_URL": "http://clicks.test",
        "WINDOWS": Windows(),
        "SPOOL_DIR": str(tmp_path / "spool"),
        "SPOOL_REPLAY_INTERVAL_S": 0,
        "MINT_TOKEN": "",
        "LOG_LEVEL": "WARNING",
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(
        [
            Ad("ad-1", "adv-1", "https://shop.example.com/landing?src=ad"),
            Ad("ad-2", "adv-2", "https://other.example.org/"),
            Ad("ad-paused", "adv-1", "https://shop.example.com/old", status="paused"),
        ]
    )


@pytest.fixture
def deduper() -> FakeDeduper:
    return FakeDeduper()


@pytest.fixture
def app(tmp_path, store, deduper):
    from click_api.spool import Spool

    cfg = unit_config(tmp_path)
    services = make_click_service(cfg, store, deduper, Spool(cfg["SPOOL_DIR"]))
    return create_app(cfg, services=services)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every transform test (no Cassandra needed)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("clickagg-tests")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()

