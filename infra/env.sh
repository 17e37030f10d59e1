# Shared settings for every infra script: paths, ports, credentials, Java.
# Sourced, never executed. Every variable can be overridden from the environment;
# the README's configuration table lists them.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
# Everything the project installs or writes at run time lives under STATE_DIR (git-ignored).
export STATE_DIR="${CLICKAGG_STATE_DIR:-$REPO_ROOT/.local}"
export VENV="${CLICKAGG_VENV:-$REPO_ROOT/.venv}"
export LOG_DIR="$STATE_DIR/log"
export RUN_DIR="$STATE_DIR/run"

# Cassandra 5.0 and Spark 3.5 both need Java 17; a newer JDK on the machine must never be picked.
export JAVA_HOME="${CLICKAGG_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
export PATH="$VENV/bin:$JAVA_HOME/bin:$PATH"
# Debian's Chromium, driven headless to check what Airflow's UI shows (infra/airflow_ui.py).
export CLICKAGG_CHROMIUM="${CLICKAGG_CHROMIUM:-/usr/bin/chromium}"

export CASSANDRA_HOST="${CASSANDRA_HOST:-127.0.0.1}"
export CASSANDRA_PORT="${CASSANDRA_PORT:-19042}"
export CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-17000}"
export CASSANDRA_HEAP="${CASSANDRA_HEAP:-1G}"
export CASSANDRA_KEYSPACE="${CASSANDRA_KEYSPACE:-clickagg}"

export REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
export REDIS_PORT="${REDIS_PORT:-16379}"
export REDIS_MAXMEMORY="${REDIS_MAXMEMORY:-512mb}"

export S3_PORT="${S3_PORT:-18333}"
export S3_ENDPOINT="${S3_ENDPOINT:-http://127.0.0.1:$S3_PORT}"
export S3_BUCKET="${S3_BUCKET:-clickagg-raw}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-clickagg}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-clickagg-local-secret}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

export AIRFLOW_PORT="${AIRFLOW_PORT:-18080}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$STATE_DIR/airflow}"
export AIRFLOW_USER="${AIRFLOW_USER:-admin}"
export AIRFLOW_PASSWORD="${AIRFLOW_PASSWORD:-admin}"

export CLICK_API_PORT="${CLICK_API_PORT:-18000}"
export WAREHOUSE_PORT="${WAREHOUSE_PORT:-18100}"
export WAREHOUSE_PATH="${WAREHOUSE_PATH:-$STATE_DIR/warehouse/clickagg.duckdb}"
export WAREHOUSE_URL="${WAREHOUSE_URL:-http://127.0.0.1:$WAREHOUSE_PORT}"

# Not SPARK_JARS_DIR: spark-submit sets that one to its own jars folder for the driver it starts.
export CLICKAGG_SPARK_JARS="${CLICKAGG_SPARK_JARS:-$STATE_DIR/spark/jars}"
export SPARK_MASTER="${SPARK_MASTER:-local[2]}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export SPARK_DRIVER_MEMORY="${SPARK_DRIVER_MEMORY:-2g}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"

# A development secret so the demo works out of the box; production sets its own.
if [[ -z "${CLICK_SIGNING_KEYS:-}" ]]; then
  export CLICK_SIGNING_KEYS="k1:dev-signing-key-change-me"
  export CLICK_SIGNING_KEY_ID="${CLICK_SIGNING_KEY_ID:-k1}"
fi

mkdir -p "$LOG_DIR" "$RUN_DIR"

# The warehouse's /internal endpoints (loads, checks) need this bearer token; made once per machine.
if [[ -z "${WAREHOUSE_ADMIN_TOKEN:-}" ]]; then
  if [[ ! -s "$STATE_DIR/warehouse_admin_token" ]]; then
    mkdir -p "$STATE_DIR"
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE_DIR/warehouse_admin_token")
  fi
  WAREHOUSE_ADMIN_TOKEN="$(cat "$STATE_DIR/warehouse_admin_token")"
fi
export WAREHOUSE_ADMIN_TOKEN
