"""A small client of Airflow's REST API (v2): log in, trigger a DAG run for an interval, wait for it."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from datetime import datetime

import requests

from infra.airflow_sqlite import BUSY_TIMEOUT_SECONDS

FINISHED = {"success", "failed"}

# Longer than the metadata database's own lock wait, so the API server answers (a 500 to retry)
# before the client gives up on a call that is only queued behind another writer.
DEFAULT_TIMEOUT = BUSY_TIMEOUT_SECONDS + 30


class AirflowError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, text: str):
        super().__init__(f"Airflow {method} {path}: {status} {text[:500]}")
        self.status = status


def login_from_env(env: Mapping[str, str] = os.environ) -> tuple[str, str, str]:
    """The project's Airflow (base URL, user, password), from the variables ``infra/env.sh`` sets;
    ``AIRFLOW_API_URL`` names an API server elsewhere than this machine's ``AIRFLOW_PORT``."""
    url = env.get("AIRFLOW_API_URL") or f"http://127.0.0.1:{env.get('AIRFLOW_PORT', '18080')}"
    return url, env.get("AIRFLOW_USER", "admin"), env.get("AIRFLOW_PASSWORD", "admin")


class AirflowAPI:
    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AirflowAPI:
        return cls(*login_from_env(env))

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = 4,
        backoff: float = 2.0,
        http: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.http = http or requests.Session()
        self.timeout = timeout  # every call, the login too
        self.attempts = attempts
        self.backoff = backoff
        response = self._send("POST", "/auth/token", json={"username": username, "password": password})
        if response.status_code >= 400:
            raise RuntimeError(f"Airflow login as {username!r} failed: {response.status_code} {response.text[:200]}")
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One API call, retried on 5xx, a timeout or a dropped connection: the metadata database can
        be busy for a while (it is SQLite here, and the scheduler writes to it as it starts).

        Every call this client makes is safe to repeat: reads, pausing, clearing, and triggers that
        carry their own run ID (see ``trigger`` for the repeat that finds its run already created).
        """
        response = self._send(method, f"/api/v2{path}", **kwargs)
        if response.status_code >= 400:
            raise AirflowError(method, path, response.status_code, response.text)
        return response.json() if response.content else {}

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        """The response to ``method path``, repeated on 5xx, a timeout or a dropped connection; the
        last attempt's response whatever its status, or AirflowError if none answered."""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as error:
                if attempt == self.attempts:
                    raise AirflowError(method, path, 0, f"no answer after {attempt} attempts: {error}") from error
            else:
                if response.status_code < 500 or attempt == self.attempts:
                    return response
            time.sleep(self.backoff * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Wait until the DAG processor has parsed the DAG."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=self.timeout).status_code == 200:
                    return
            except (requests.Timeout, requests.ConnectionError):
                pass  # busy or restarting: ask again until the deadline
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG {dag_id} did not appear in Airflow within {timeout:.0f}s")
            time.sleep(2)

    def trigger(self, dag_id: str, start: datetime, end: datetime, note: str = "") -> str:
        """Trigger a manual run for the window [start, end) (passed in its conf); return its run ID."""
        run_id = f"manual__{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}__{uuid.uuid4().hex[:8]}"
        return self.trigger_run(dag_id, run_id, {"start": start.isoformat(), "end": end.isoformat()}, note)

    def trigger_run(self, dag_id: str, run_id: str, conf: dict, note: str = "") -> str:
        """Trigger a manual run with this run ID and conf (no logical date); return the run ID.

        Triggering the same run ID again is a no-op: a retried POST whose first attempt did commit,
        or a caller that retries its own work, finds the run it created."""
        try:
            self._call("POST", f"/dags/{dag_id}/dagRuns",
                       json={"dag_run_id": run_id, "logical_date": None, "conf": conf, "note": note or None})
        except AirflowError as error:
            if error.status != 409:
                raise
            self.run_state(dag_id, run_id)  # the run ID is ours, so the run is too
        return run_id

    def clear(self, dag_id: str, run_id: str) -> None:
        """Clear every task of a finished run, so Airflow runs it again from the start."""
        self._call("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def newest_run(self, dag_id: str) -> str | None:
        """The run ID of the DAG's newest run (by the time it runs after), or None when it has none."""
        body = self._call("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 1})
        return body["dag_runs"][0]["dag_run_id"] if body["dag_runs"] else None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600, progress=None) -> str:
        """Poll until the run finishes; return its final state."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            state = self.run_state(dag_id, run_id)
            if progress and state != last:
                progress(f"run {run_id}: {state}")
                last = state
            if state in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} still {state} after {timeout:.0f}s")
            time.sleep(3)


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.airflow_api pause|unpause DAG_ID``: wait for the DAG to be parsed, then (un)pause it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infra.airflow_api")
    parser.add_argument("action", choices=["pause", "unpause"])
    parser.add_argument("dag_id")
    args = parser.parse_args(argv)
    api = AirflowAPI.from_env()
    api.wait_for_dag(args.dag_id)
    api.set_paused(args.dag_id, args.action == "pause")
    print(f"{args.dag_id}: {args.action}d")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
