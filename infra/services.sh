#!/usr/bin/env bash
# Start, stop or show every service of the project, in dependency order.
# Usage: infra/services.sh up|down|status
set -euo pipefail
SERVICE=services
source "$(dirname "$0")/lib.sh"
INFRA="$REPO_ROOT/infra"

up() {
  "$INFRA/install.sh"
  "$INFRA/cassandra.sh" start
  "$INFRA/redis.sh" start
  "$INFRA/s3.sh" start
  say "applying Cassandra schema migrations"
  (cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT" "$VENV/bin/python" -m click_api.cli migrate)
  "$INFRA/warehouse.sh" start
  "$INFRA/click_api.sh" start
  "$INFRA/airflow.sh" start
  say "all services are up:"
  status
}

down() {
  # Reverse order: nothing is left writing to a service that is already gone.
  "$INFRA/airflow.sh" stop
  "$INFRA/click_api.sh" stop
  "$INFRA/warehouse.sh" stop
  "$INFRA/s3.sh" stop
  "$INFRA/redis.sh" stop
  "$INFRA/cassandra.sh" stop
}

status() {
  for s in cassandra redis s3 warehouse click_api airflow; do "$INFRA/$s.sh" status; done
  "$INFRA/spark.sh" status
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
