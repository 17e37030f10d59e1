# Helpers shared by the infra scripts. Sourced, never executed.
# shellcheck source=infra/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

say() { printf '[%s] %s\n' "${SERVICE:-infra}" "$*"; }
die() { printf '[%s] ERROR: %s\n' "${SERVICE:-infra}" "$*" >&2; exit 1; }

pidfile() { echo "$RUN_DIR/$1.pid"; }

# Print the pid of a service this project started, if it is still alive.
running_pid() {
  local f; f=$(pidfile "$1")
  [[ -f "$f" ]] || return 1
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
  rm -f "$f"; return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start when someone else already listens on a port we need.
require_free_port() {
  local port=$1 var=$2
  if port_open "$port"; then
    die "port $port is already in use by another program. Stop it, or pick another port: export $var=<free port>"
  fi
}

# Wait until a command succeeds, up to a timeout, showing progress; fail with the log's tail.
wait_until() {
  local what=$1 timeout=$2 log=$3; shift 3
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - start >= timeout )); then
      [[ -n "$log" && -f "$log" ]] && tail -n 30 "$log" >&2
      die "$what not ready after ${timeout}s; see $log"
    fi
    if [[ -n "${SERVICE_PID:-}" ]] && ! kill -0 "$SERVICE_PID" 2>/dev/null; then
      [[ -n "$log" && -f "$log" ]] && tail -n 30 "$log" >&2
      die "$what exited during start-up; see $log"
    fi
    sleep 1
  done
  say "$what ready in $((SECONDS - start))s"
}

# Start a long-running command in its own process group, recording its pid.
spawn() {
  local name=$1 log=$2; shift 2
  setsid "$@" >>"$log" 2>&1 < /dev/null &
  SERVICE_PID=$!
  echo "$SERVICE_PID" > "$(pidfile "$name")"
}

# Stop a service this project started (its whole process group), waiting for it to exit.
stop_service() {
  local name=$1 timeout=${2:-60} pid
  if ! pid=$(running_pid "$name"); then say "not running"; return 0; fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  local start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS - start >= timeout )); then
      say "did not stop in ${timeout}s; killing"; kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    fi
    sleep 0.5
  done
  rm -f "$(pidfile "$name")"
  say "stopped (pid $pid)"
}

status_line() {
  local name=$1 port=$2 log=$3 pid state
  if pid=$(running_pid "$name"); then state="running"; else pid="-"; state="stopped"; fi
  printf '%-12s %-8s port %-6s pid %-8s log %s\n' "$name" "$state" "$port" "$pid" "$log"
}

require_java17() {
  [[ -x "$JAVA_HOME/bin/java" ]] || die "no JDK 17 at $JAVA_HOME. Install it (apt-get install openjdk-17-jdk-headless) or set CLICKAGG_JAVA_HOME"
  "$JAVA_HOME/bin/java" -version 2>&1 | grep -q 'version "17' ||
    die "$JAVA_HOME is not JDK 17 (Cassandra 5.0 and Spark 3.5 need 17). Set CLICKAGG_JAVA_HOME to a JDK 17"
}

require_venv() {
  [[ -x "$VENV/bin/python" ]] || die "no Python environment at $VENV; run: make install"
}

apt_install() {
  [[ $(id -u) == 0 ]] || die "installing $* needs root: sudo apt-get install -y $*"
  if [[ ! -f "$STATE_DIR/.apt-updated" ]]; then
    apt-get update -q >/dev/null || die "apt-get update failed: are Debian's package servers reachable?"
    touch "$STATE_DIR/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
    die "apt-get install $* failed (see the output above)"
}

# maven_copy_dependencies POM OUTPUT_DIR WHAT [extra mvn args...]: fetch a pom's runtime jars into
# OUTPUT_DIR, Maven's own output going to $LOG_DIR/maven.log (it colours its output even when quiet).
maven_copy_dependencies() {
  local pom=$1 output=$2 what=$3
  shift 3
  command -v mvn >/dev/null || die "Maven is missing: apt-get install -y maven"
  mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$output" "$@" >>"$LOG_DIR/maven.log" 2>&1 ||
    die "Maven could not fetch $what (is Maven Central reachable? see $LOG_DIR/maven.log)"
}
