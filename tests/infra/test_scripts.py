"""The infra scripts, run as a new user runs them: what they say when something is missing or in the way.

Each test gives the scripts a state folder of its own and ports nothing else uses, so the
project's running services are not touched. They need the machine's JDK 17, Maven and
redis-server, which `make test` installs first.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PASSED_ON = ("PATH", "HOME", "LANG", "CLICKAGG_JAVA_HOME", "CLICKAGG_VENV")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(script: str, *args: str, state: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``infra/<script> args`` with a state folder of its own and only the given settings."""
    clean = {k: v for k, v in os.environ.items() if k in PASSED_ON}
    return subprocess.run([str(REPO / "infra" / script), *args], env={**clean, "CLICKAGG_STATE_DIR": str(state), **env},
                          capture_output=True, text=True, timeout=timeout)


def test_a_port_in_use_is_named_with_the_variable_that_moves_it(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        result = run("warehouse.sh", "start", state=tmp_path, WAREHOUSE_PORT=str(port))

    assert result.returncode == 1
    assert f"port {port} is already in use by another program" in result.stderr
    assert "export WAREHOUSE_PORT=<free port>" in result.stderr
    assert not (tmp_path / "run" / "warehouse.pid").exists()


def test_a_port_the_s3_store_uses_inside_is_named_too(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]  # where the store's volume server would listen

        result = run("s3.sh", "start", state=tmp_path, S3_PORT=str(free_port()), S3_BASE_PORT=str(port - 2))

    assert result.returncode == 1
    assert f"port {port} is already in use by another program" in result.stderr
    assert "export S3_BASE_PORT=<free port>" in result.stderr


def test_a_missing_jdk_17_is_named_with_the_fix(tmp_path):
    result = run("cassandra.sh", "start", state=tmp_path, CLICKAGG_JAVA_HOME=str(tmp_path / "no-jdk"))

    assert result.returncode == 1
    assert f"no JDK 17 at {tmp_path / 'no-jdk'}" in result.stderr
    assert "apt-get install openjdk-17-jdk-headless" in result.stderr and "CLICKAGG_JAVA_HOME" in result.stderr


def test_a_jdk_of_another_version_is_refused(tmp_path):
    java = tmp_path / "jdk21" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text('#!/bin/sh\necho \'openjdk version "21.0.5" 2024-10-15\' >&2\n')
    java.chmod(0o755)

    result = run("spark.sh", "install", state=tmp_path, CLICKAGG_JAVA_HOME=str(tmp_path / "jdk21"))

    assert result.returncode == 1
    assert "is not JDK 17 (Cassandra 5.0 and Spark 3.5 need 17)" in result.stderr


def test_an_unreachable_maven_registry_is_named(tmp_path):
    # Maven reads ${user.home}/.m2/settings.xml: send every download to a port nothing listens on.
    (tmp_path / "home" / ".m2").mkdir(parents=True)
    (tmp_path / "home" / ".m2" / "settings.xml").write_text(
        f"<settings><mirrors><mirror><id>nowhere</id><mirrorOf>*</mirrorOf>"
        f"<url>http://127.0.0.1:{free_port()}/maven2</url></mirror></mirrors></settings>")
    maven_opts = f"-Duser.home={tmp_path / 'home'} -Dmaven.repo.local={tmp_path / 'm2'}"

    result = run("cassandra.sh", "install", state=tmp_path, MAVEN_OPTS=maven_opts)

    assert result.returncode == 1
    assert "Maven could not fetch cassandra-all (is Maven Central reachable?" in result.stderr
    assert not (tmp_path / "cassandra" / "lib").exists()  # nothing half-fetched looks installed


def test_an_unreachable_python_registry_is_named(tmp_path):
    result = run("install.sh", state=tmp_path, timeout=300, CLICKAGG_VENV=str(tmp_path / "venv"),
                 PIP_INDEX_URL=f"http://127.0.0.1:{free_port()}/simple", PIP_RETRIES="0", PIP_TIMEOUT="2")

    assert result.returncode == 1
    assert "pip install failed (is PyPI reachable?)" in result.stderr
    assert not (tmp_path / "venv" / ".requirements.sha256").exists()  # a retry installs again


def test_starting_twice_is_harmless_and_stop_stops_only_what_it_started(tmp_path):
    port = str(free_port())
    first = run("redis.sh", "start", state=tmp_path, REDIS_PORT=port)
    try:
        assert first.returncode == 0, first.stderr
        pid = (tmp_path / "run" / "redis.pid").read_text().strip()

        again = run("redis.sh", "start", state=tmp_path, REDIS_PORT=port)

        assert again.returncode == 0
        assert f"already running (pid {pid})" in again.stdout
        status = run("redis.sh", "status", state=tmp_path, REDIS_PORT=port).stdout
        assert "running" in status and pid in status and port in status
    finally:
        stopped = run("redis.sh", "stop", state=tmp_path, REDIS_PORT=port)
    assert f"stopped (pid {pid})" in stopped.stdout
    assert "not running" in run("redis.sh", "stop", state=tmp_path, REDIS_PORT=port).stdout
