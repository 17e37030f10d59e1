"""The DAGs' client of the warehouse service: the watermark as the service reports it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from tests.fakes import FakeResponse
from warehouse import client


@pytest.fixture
def healthz(monkeypatch) -> list:
    asked = []

    def get(url, headers, timeout):
        asked.append(url)
        return answers.pop(0)

    answers: list = []
    monkeypatch.setattr(requests, "get", get)
    return answers, asked


def test_the_watermark_is_the_services_complete_through_in_utc(healthz):
    answers, asked = healthz
    answers += [FakeResponse({"status": "ok", "complete_through": "2026-11-28T13:05:00"}),
                FakeResponse({"status": "ok", "complete_through": None})]

    assert client.watermark({"WAREHOUSE_URL": "http://w.test"}) == datetime(2026, 11, 28, 13, 5, tzinfo=timezone.utc)
    assert client.watermark({"WAREHOUSE_URL": "http://w.test"}) is None  # nothing loaded yet
    assert asked == ["http://w.test/healthz"] * 2


def test_an_error_answer_is_raised_not_taken_for_a_missing_watermark(healthz):
    answers, _ = healthz
    answers.append(FakeResponse({"error": "down"}, status_code=503))

    with pytest.raises(RuntimeError, match="warehouse answered 503 to /healthz"):
        client.watermark({"WAREHOUSE_URL": "http://w.test"})
