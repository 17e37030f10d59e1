#!/usr/bin/env bash
# Install what is missing: Debian packages, the Python environment, the Cassandra and Spark jars.
# Re-runnable: each step is skipped when its result is already there.
# `install.sh browser` installs only Debian's Chromium, which the UI check (and so `make test`) drives.
set -euo pipefail
SERVICE=install
source "$(dirname "$0")/lib.sh"

debian_packages() {
  local missing=()
  [[ -x "$JAVA_HOME/bin/java" ]] || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v curl >/dev/null || missing+=(curl)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  require_java17
}

python_env() {
  local stamp="$VENV/.requirements.sha256" want
  want=$(cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/requirements.lock" | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then say "Python environment up to date ($VENV)"; return; fi
  local python=${CLICKAGG_PYTHON:-python3}
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' || die "$python is older than 3.10; set CLICKAGG_PYTHON"
  [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV" || die "could not create $VENV (apt-get install python3-venv?)"
  say "installing Python packages into $VENV (first time: a few minutes; log $LOG_DIR/pip.log)"
  "$VENV/bin/pip" install -r "$REPO_ROOT/requirements.txt" -c "$REPO_ROOT/requirements.lock" >>"$LOG_DIR/pip.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/pip.log" >&2; die "pip install failed (is PyPI reachable?); see $LOG_DIR/pip.log"; }
  echo "$want" > "$stamp"
}

browser() {
  [[ -x "$CLICKAGG_CHROMIUM" ]] && return
  say "installing Debian's Chromium for the Airflow UI check (once; about 100 MB)"
  apt_install chromium
}

case "${1:-all}" in
  all)
    debian_packages
    python_env
    "$REPO_ROOT/infra/cassandra.sh" install
    "$REPO_ROOT/infra/spark.sh" install
    say "everything is installed"
    ;;
  browser) browser ;;
  *) echo "usage: $0 [all|browser]" >&2; exit 2 ;;
esac
