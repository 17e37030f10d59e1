#!/usr/bin/env bash
# Cassandra 5.0.8, single node on loopback, from Maven Central jars.
# Usage: infra/cassandra.sh install|start|stop|status|wait
set -euo pipefail
SERVICE=cassandra
source "$(dirname "$0")/lib.sh"

HOME_DIR="$STATE_DIR/cassandra"
LIB_DIR="$HOME_DIR/lib"
CONF_DIR="$HOME_DIR/conf"
DATA_DIR="$HOME_DIR/data"
LOG="$LOG_DIR/cassandra.out"

install() {
  if [[ -f "$LIB_DIR/cassandra-all-5.0.8.jar" ]]; then say "jars present in $LIB_DIR"; return; fi
  require_java17
  say "resolving cassandra-all 5.0.8 and its runtime dependencies from Maven Central into $LIB_DIR"
  maven_copy_dependencies "$REPO_ROOT/infra/cassandra/pom.xml" "$LIB_DIR.tmp" cassandra-all
  mv "$LIB_DIR.tmp" "$LIB_DIR"
}

write_conf() {
  mkdir -p "$CONF_DIR" "$DATA_DIR" "$HOME_DIR/tmp"
  sed -e "s|@STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
      -e "s|@NATIVE_PORT@|$CASSANDRA_PORT|g" \
      -e "s|@DATA_DIR@|$DATA_DIR|g" \
      -e "s|@COMMITLOG_WINDOW@|${CASSANDRA_COMMITLOG_WINDOW:-5ms}|g" \
      "$REPO_ROOT/infra/cassandra/cassandra.yaml.in" > "$CONF_DIR/cassandra.yaml"
  cp "$REPO_ROOT/infra/cassandra/logback.xml" "$CONF_DIR/logback.xml"
}

ready() {
  "$VENV/bin/python" - <<PY
from cassandra.cluster import Cluster
from cassandra.policies import DCAwareRoundRobinPolicy
c = Cluster(["$CASSANDRA_HOST"], port=$CASSANDRA_PORT, connect_timeout=2,
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="${CASSANDRA_LOCAL_DC:-datacenter1}"), protocol_version=5)
s = c.connect()
s.execute("SELECT release_version FROM system.local")
c.shutdown()
PY
}

start() {
  if pid=$(running_pid cassandra); then say "already running (pid $pid)"; return; fi
  [[ -d "$LIB_DIR" ]] || install
  require_java17
  require_venv
  require_free_port "$CASSANDRA_PORT" CASSANDRA_PORT
  require_free_port "$CASSANDRA_STORAGE_PORT" CASSANDRA_STORAGE_PORT
  write_conf
  local -a opts
  mapfile -t opts < <(grep '^-' "$REPO_ROOT/infra/cassandra/jvm.options")
  say "starting on 127.0.0.1:$CASSANDRA_PORT (heap $CASSANDRA_HEAP, data $DATA_DIR, log $LOG_DIR/system.log)"
  spawn cassandra "$LOG" "$JAVA_HOME/bin/java" \
    "-Xms$CASSANDRA_HEAP" "-Xmx$CASSANDRA_HEAP" "${opts[@]}" \
    "-javaagent:$LIB_DIR/jamm-0.4.0.jar" \
    "-Djava.io.tmpdir=$HOME_DIR/tmp" \
    "-Dcassandra.config=file://$CONF_DIR/cassandra.yaml" \
    "-Dcassandra.storagedir=$DATA_DIR" \
    "-Dcassandra.logdir=$LOG_DIR" \
    "-Dlogback.configurationFile=file://$CONF_DIR/logback.xml" \
    -cp "$CONF_DIR:$LIB_DIR/*" org.apache.cassandra.service.CassandraDaemon
  wait_until "Cassandra" "${CASSANDRA_START_TIMEOUT:-180}" "$LOG_DIR/system.log" ready
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_service cassandra 90 ;;
  status) status_line cassandra "$CASSANDRA_PORT" "$LOG_DIR/system.log" ;;
  wait) wait_until "Cassandra" "${CASSANDRA_START_TIMEOUT:-180}" "$LOG_DIR/system.log" ready ;;
  *) echo "usage: $0 install|start|stop|status|wait" >&2; exit 2 ;;
esac
