#!/usr/bin/env bash
# Redis from Debian's redis-server, on the project's port, bound to loopback.
# Usage: infra/redis.sh install|start|stop|status
set -euo pipefail
SERVICE=redis
source "$(dirname "$0")/lib.sh"

DATA_DIR="$STATE_DIR/redis"
LOG="$LOG_DIR/redis.log"

install() {
  if command -v redis-server >/dev/null; then say "redis-server present"; return; fi
  say "installing Debian's redis-server"
  apt_install redis-server
}

ready() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG; }

start() {
  if pid=$(running_pid redis); then say "already running (pid $pid)"; return; fi
  command -v redis-server >/dev/null || install
  require_free_port "$REDIS_PORT" REDIS_PORT
  mkdir -p "$DATA_DIR"
  say "starting on 127.0.0.1:$REDIS_PORT (maxmemory $REDIS_MAXMEMORY, log $LOG)"
  # Redis is only the fast path of deduplication: the guarantee lives in Cassandra,
  # so no persistence is needed and an LRU-style eviction of old keys is acceptable.
  spawn redis "$LOG" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DATA_DIR" \
    --save "" --appendonly no --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy volatile-ttl \
    --daemonize no --protected-mode yes
  wait_until "Redis" 30 "$LOG" ready
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_service redis 30 ;;
  status) status_line redis "$REDIS_PORT" "$LOG" ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
