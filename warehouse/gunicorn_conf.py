"""gunicorn settings for the warehouse service. One worker, always: it is the only process
allowed to open the DuckDB file; concurrency comes from threads (DuckDB releases the GIL)."""

import os

bind = f"127.0.0.1:{os.environ.get('WAREHOUSE_PORT', '18100')}"
workers = 1
threads = int(os.environ.get("WAREHOUSE_HTTP_THREADS", "8"))
worker_class = "gthread"
timeout = 300  # a large load may take minutes
graceful_timeout = 60
preload_app = False
control_socket_disable = True
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
