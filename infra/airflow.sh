#!/usr/bin/env bash
# Airflow 3.3 "standalone": scheduler, DAG processor, triggerer and API server (UI) on loopback,
# metadata in SQLite under AIRFLOW_HOME, DAGs from the repo's dags/ folder.
# Usage: infra/airflow.sh start|stop|status|cli <airflow args...>
set -euo pipefail
SERVICE=airflow
source "$(dirname "$0")/lib.sh"

LOG="$LOG_DIR/airflow.log"

configure() {
  mkdir -p "$AIRFLOW_HOME"
  export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__PARALLELISM="${AIRFLOW_PARALLELISM:-4}"
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$AIRFLOW_USER:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
  export AIRFLOW__API__HOST=127.0.0.1
  export AIRFLOW__API__PORT="$AIRFLOW_PORT"
  export AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW_PORT"
  export AIRFLOW__API__WORKERS=1
  export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="${AIRFLOW_LOG_SERVER_PORT:-18793}"
  export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="${AIRFLOW_TRIGGER_LOG_SERVER_PORT:-18794}"
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
  export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
  # Wait for SQLite's write lock instead of failing after 5 s (see infra/airflow_sqlite.py).
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=infra.airflow_sqlite.SYNC
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=infra.airflow_sqlite.ASYNC
  # The jobs import the project's packages (the DAGs only launch them).
  export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export AIRFLOW_CONN_SPARK_DEFAULT="{\"conn_type\": \"spark\", \"host\": \"$SPARK_MASTER\"}"
  local secret="$AIRFLOW_HOME/jwt_secret"
  [[ -s "$secret" ]] || "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(64))' > "$secret"
  AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$secret")"
  export AIRFLOW__API_AUTH__JWT_SECRET
  printf '{"%s": "%s"}\n' "$AIRFLOW_USER" "$AIRFLOW_PASSWORD" > "$AIRFLOW_HOME/passwords.json"
}

ready() { curl -sf "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" | grep -q '"scheduler": *{"status": *"healthy"'; }

start() {
  if pid=$(running_pid airflow); then say "already running (pid $pid)"; return; fi
  require_venv
  [[ -x "$VENV/bin/airflow" ]] || die "airflow is missing from $VENV; run: make install"
  require_free_port "$AIRFLOW_PORT" AIRFLOW_PORT
  require_free_port "${AIRFLOW_LOG_SERVER_PORT:-18793}" AIRFLOW_LOG_SERVER_PORT
  require_free_port "${AIRFLOW_TRIGGER_LOG_SERVER_PORT:-18794}" AIRFLOW_TRIGGER_LOG_SERVER_PORT
  configure
  say "starting scheduler + API server on http://127.0.0.1:$AIRFLOW_PORT (home $AIRFLOW_HOME, log $LOG)"
  spawn airflow "$LOG" "$VENV/bin/airflow" standalone
  wait_until "Airflow" "${AIRFLOW_START_TIMEOUT:-240}" "$LOG" ready
}

case "${1:-}" in
  start) start ;;
  stop) stop_service airflow 60 ;;
  status) status_line airflow "$AIRFLOW_PORT" "$LOG" ;;
  cli) shift; configure; exec "$VENV/bin/airflow" "$@" ;;
  *) echo "usage: $0 start|stop|status|cli <airflow args>" >&2; exit 2 ;;
esac
