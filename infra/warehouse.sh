#!/usr/bin/env bash
# The warehouse service: the one process that owns the DuckDB file (loads, SQL, metrics API).
# Usage: infra/warehouse.sh start|stop|status
set -euo pipefail
SERVICE=warehouse
source "$(dirname "$0")/lib.sh"

LOG="$LOG_DIR/warehouse.log"

ready() { curl -sf "$WAREHOUSE_URL/healthz" >/dev/null; }

start() {
  if pid=$(running_pid warehouse); then say "already running (pid $pid)"; return; fi
  require_venv
  require_free_port "$WAREHOUSE_PORT" WAREHOUSE_PORT
  mkdir -p "$(dirname "$WAREHOUSE_PATH")"
  say "starting on $WAREHOUSE_URL (file $WAREHOUSE_PATH, log $LOG)"
  cd "$REPO_ROOT"
  spawn warehouse "$LOG" "$VENV/bin/gunicorn" -c warehouse/gunicorn_conf.py "warehouse.server:create_app()"
  wait_until "warehouse service" 60 "$LOG" ready
}

case "${1:-}" in
  start) start ;;
  stop) stop_service warehouse 60 ;;
  status) status_line warehouse "$WAREHOUSE_PORT" "$LOG" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
