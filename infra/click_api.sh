#!/usr/bin/env bash
# The click service under gunicorn on loopback (settings: click_api/gunicorn_conf.py).
# Usage: infra/click_api.sh start|stop|status
set -euo pipefail
SERVICE=click_api
source "$(dirname "$0")/lib.sh"

LOG="$LOG_DIR/click_api.log"
export PROMETHEUS_MULTIPROC_DIR="$RUN_DIR/click_api_metrics"
export CLICK_SPOOL_DIR="${CLICK_SPOOL_DIR:-$STATE_DIR/spool}"

ready() { curl -sf "http://127.0.0.1:$CLICK_API_PORT/healthz" >/dev/null; }

start() {
  if pid=$(running_pid click_api); then say "already running (pid $pid)"; return; fi
  require_venv
  require_free_port "$CLICK_API_PORT" CLICK_API_PORT
  rm -rf "$PROMETHEUS_MULTIPROC_DIR"; mkdir -p "$PROMETHEUS_MULTIPROC_DIR" "$CLICK_SPOOL_DIR"
  say "starting on http://127.0.0.1:$CLICK_API_PORT (spool $CLICK_SPOOL_DIR, log $LOG)"
  cd "$REPO_ROOT"
  spawn click_api "$LOG" "$VENV/bin/gunicorn" -c click_api/gunicorn_conf.py "click_api:create_app()"
  wait_until "click service" 60 "$LOG" ready
}

case "${1:-}" in
  start) start ;;
  stop) stop_service click_api 30 ;;
  status) status_line click_api "$CLICK_API_PORT" "$LOG" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
