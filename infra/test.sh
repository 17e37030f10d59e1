#!/usr/bin/env bash
# Run the whole test suite against the running services (make test starts them first).
# The scheduled DAGs are paused while tests run, so their Spark jobs do not compete for the two
# cores; the end-to-end tests unpause them for their own runs. `make run` unpauses them again.
set -euo pipefail
SERVICE=test
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# The end-to-end tests look at Airflow's UI through Chromium.
"$REPO_ROOT/infra/install.sh" browser

say "pausing the scheduled rollup while tests run"
for dag in rollup_clicks_minute reconcile_clicks_hourly; do
  PYTHONPATH="$REPO_ROOT" "$VENV/bin/python" -m infra.airflow_api pause "$dag"
done

say "lint"
"$VENV/bin/ruff" check .

say "tests (unit, then integration and end-to-end against the real services)"
if ! PYTHONPATH="$REPO_ROOT" "$VENV/bin/python" -m pytest "$@"; then
  # The services' own logs often say why; show their last errors before the services are stopped.
  for log in "$LOG_DIR"/{airflow,warehouse,click_api}.log; do
    [[ -f "$log" ]] || continue
    say "last errors in $log:"
    grep -n -E "ERROR|CRITICAL|Traceback|OperationalError" "$log" | tail -n 15 || true
  done
  exit 1
fi
