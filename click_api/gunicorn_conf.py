"""gunicorn settings for the click service; each can be overridden by the variable named."""

import os

bind = f"127.0.0.1:{os.environ.get('CLICK_API_PORT', '18000')}"
workers = int(os.environ.get("CLICK_API_WORKERS", "2"))
# A click's thread mostly waits: about 11 ms for Cassandra's group commit (5 ms window plus
# fsync) of its 15 ms. With 4 threads a worker, 8 clicks in flight held /click near 450/s;
# 16 measured about 20% more on two cores (`make bench-click`), where the CPU is the limit.
threads = int(os.environ.get("CLICK_API_THREADS", "16"))
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
