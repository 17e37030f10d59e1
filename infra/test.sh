#!/usr/bin/env bash
# Run the whole test suite against the running services (make test starts them first).
# The minute DAG is paused while tests run, so scheduled Spark jobs do not compete for the two
# cores; the end-to-end test unpauses it for its own runs. `make run` unpauses it again.
set -euo pipefail
SERVICE=test
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

say "pausing the scheduled rollup while tests run"
PYTHONPATH="$REPO_ROOT" "$VENV/bin/python" -m infra.airflow_api pause rollup_clicks_minute

say "lint"
"$VENV/bin/ruff" check .

say "tests (unit, then integration and end-to-end against the real services)"
PYTHONPATH="$REPO_ROOT" "$VENV/bin/python" -m pytest "$@"
