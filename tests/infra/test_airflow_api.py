"""The Airflow client retries what a busy metadata database refuses, and never makes two runs of one trigger."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from infra.airflow_api import AirflowAPI, AirflowError, login_from_env
from infra.airflow_sqlite import BUSY_TIMEOUT_SECONDS


class Reply:
    def __init__(self, status: int, body: str = "{}", login: bool = False):
        self.login = login  # scripted for the login's POST /auth/token, not for a later call
        self.status_code = status
        self.text = body
        self.content = body.encode()

    def json(self):
        import json

        return json.loads(self.text)


class ScriptedHTTP:
    """Answers each request with the next scripted reply and records what was asked."""

    def __init__(self, replies: list[Reply]):
        self.replies = list(replies)
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.logins = 0
        self.params: list[dict | None] = []
        self.bodies: list[dict | None] = []
        self.timeouts: list[float | None] = []

    def request(self, method, url, **kwargs):
        self.timeouts.append(kwargs.get("timeout"))
        path = url.removeprefix("http://airflow")
        if path == "/auth/token":
            self.logins += 1
            scripted = self.replies and self.replies[0].login
            return self.replies.pop(0) if scripted else Reply(200, '{"access_token": "t"}')
        self.requests.append((method, path.removeprefix("/api/v2")))
        self.params.append(kwargs.get("params"))
        self.bodies.append(kwargs.get("json"))
        return self.replies.pop(0)


def client(*replies: Reply) -> tuple[AirflowAPI, ScriptedHTTP]:
    http = ScriptedHTTP(list(replies))
    return AirflowAPI("http://airflow", "admin", "admin", attempts=3, backoff=0, http=http), http


WINDOW = (datetime(2026, 11, 28, 2, 0, tzinfo=timezone.utc), datetime(2026, 11, 28, 2, 5, tzinfo=timezone.utc))


def test_a_database_error_is_retried_until_the_call_succeeds():
    api, http = client(Reply(500, '{"detail": "Database error"}'), Reply(200, '{"state": "running"}'))
    assert api.run_state("rollup", "r1") == "running"
    assert len(http.requests) == 2


def test_a_persistent_server_error_is_raised_after_the_last_attempt():
    api, http = client(*[Reply(503, "busy")] * 3)
    with pytest.raises(AirflowError) as raised:
        api.run_state("rollup", "r1")
    assert raised.value.status == 503
    assert len(http.requests) == 3


def test_client_errors_are_not_retried():
    api, http = client(Reply(404, '{"detail": "no such run"}'))
    with pytest.raises(AirflowError, match="404"):
        api.run_state("rollup", "r1")
    assert len(http.requests) == 1


def test_a_trigger_whose_first_attempt_committed_returns_the_run_it_created():
    api, http = client(Reply(500, "Database error"), Reply(409, "already exists"), Reply(200, '{"state": "queued"}'))
    run_id = api.trigger("rollup", *WINDOW)
    assert run_id.startswith("manual__20261128T0200-20261128T0205__")
    assert http.requests == [
        ("POST", "/dags/rollup/dagRuns"),
        ("POST", "/dags/rollup/dagRuns"),
        ("GET", f"/dags/rollup/dagRuns/{run_id}"),
    ]


def test_a_trigger_that_conflicts_with_an_unknown_run_is_an_error():
    api, _ = client(Reply(409, "already exists"), Reply(404, "not found"))
    with pytest.raises(AirflowError, match="404"):
        api.trigger("rollup", *WINDOW)


def test_the_newest_run_is_asked_for_by_run_after_descending():
    api, http = client(Reply(200, '{"dag_runs": [{"dag_run_id": "scheduled__2026-11-28T13:00:00+00:00"}]}'),
                       Reply(200, '{"dag_runs": []}'))
    assert api.newest_run("rollup") == "scheduled__2026-11-28T13:00:00+00:00"
    assert http.params[0] == {"order_by": "-run_after", "limit": 1}
    assert api.newest_run("rollup") is None


def test_the_login_comes_from_the_project_environment():
    env = {"AIRFLOW_PORT": "28080", "AIRFLOW_USER": "ops", "AIRFLOW_PASSWORD": "s3cret"}
    assert login_from_env(env) == ("http://127.0.0.1:28080", "ops", "s3cret")
    assert login_from_env({}) == ("http://127.0.0.1:18080", "admin", "admin")
    assert login_from_env({**env, "AIRFLOW_API_URL": "https://airflow.internal"})[0] == "https://airflow.internal"


def test_a_run_triggered_again_with_its_own_run_id_is_the_same_run():
    api, http = client(Reply(200, "{}"), Reply(409, "already exists"), Reply(200, '{"state": "success"}'))

    assert api.trigger_run("reconcile", "late__h1", {"hour": "2026-11-28T02:00:00+00:00"}, "late clicks") == "late__h1"
    assert api.trigger_run("reconcile", "late__h1", {"hour": "2026-11-28T02:00:00+00:00"}) == "late__h1"
    assert http.requests == [("POST", "/dags/reconcile/dagRuns"), ("POST", "/dags/reconcile/dagRuns"),
                             ("GET", "/dags/reconcile/dagRuns/late__h1")]
    assert http.bodies[0] == {"dag_run_id": "late__h1", "logical_date": None,
                              "conf": {"hour": "2026-11-28T02:00:00+00:00"}, "note": "late clicks"}


class Silence(Reply):
    """A call the server never answered in time."""

    def __init__(self, login: bool = False):
        super().__init__(0, login=login)


class SilentHTTP(ScriptedHTTP):
    def request(self, method, url, **kwargs):
        reply = super().request(method, url, **kwargs)
        if isinstance(reply, Silence):
            raise requests.ReadTimeout("read timed out")
        return reply


def test_a_call_that_times_out_is_repeated_until_it_is_answered():
    http = SilentHTTP([Silence(), Reply(200, "{}")])
    api = AirflowAPI("http://airflow", "admin", "admin", attempts=3, backoff=0, http=http)
    api.set_paused("rollup", True)
    assert http.requests == [("PATCH", "/dags/rollup"), ("PATCH", "/dags/rollup")]


def test_a_call_never_answered_is_an_error_that_says_so():
    http = SilentHTTP([Silence()] * 3)
    api = AirflowAPI("http://airflow", "admin", "admin", attempts=3, backoff=0, http=http)
    with pytest.raises(AirflowError, match="no answer after 3 attempts"):
        api.set_paused("rollup", True)
    assert len(http.requests) == 3


def test_every_call_waits_longer_than_the_metadata_database_waits_for_its_lock():
    api, http = client(Reply(200, "{}"))

    api.set_paused("rollup", True)

    assert len(http.timeouts) == 2  # the login and the call
    assert all(t is not None and t > BUSY_TIMEOUT_SECONDS for t in http.timeouts), http.timeouts


def test_a_login_the_server_does_not_answer_in_time_is_repeated():
    http = SilentHTTP([Silence(login=True), Reply(503, "busy", login=True),
                       Reply(200, '{"access_token": "t2"}', login=True)])

    api = AirflowAPI("http://airflow", "admin", "admin", attempts=3, backoff=0, http=http)

    assert http.logins == 3
    assert api.http.headers["Authorization"] == "Bearer t2"


def test_a_refused_login_says_so_without_repeating():
    http = ScriptedHTTP([Reply(401, "bad credentials", login=True)])
    with pytest.raises(RuntimeError, match="login as 'admin' failed: 401"):
        AirflowAPI("http://airflow", "admin", "admin", attempts=3, backoff=0, http=http)
    assert http.logins == 1
