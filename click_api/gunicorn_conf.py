"""gunicorn settings for the click service; each can be overridden by the variable named."""

import os

bind = f"127.0.0.1:{os.environ.get('CLICK_API_PORT', '18000')}"
# A click's thread mostly waits: about 11 ms for Cassandra's group commit (5 ms window plus
# fsync) of its 15 ms, so a worker needs several threads. Past 8 threads, more of them in one
# process mostly contend for its interpreter lock: on two cores 4 workers x 8 threads answered
# about 20% more clicks/s than 2 x 16 (`make bench-click`, docs/benchmarks.md).
workers = int(os.environ.get("CLICK_API_WORKERS", "4"))
threads = int(os.environ.get("CLICK_API_THREADS", "8"))
worker_class = "gthread"
backlog = 2048
keepalive = 5
timeout = 30
graceful_timeout = 20
# Each worker connects to Cassandra and Redis itself: the drivers must not cross a fork.
preload_app = False
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
