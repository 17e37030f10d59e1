"""The scheduler's work (loads, checks, compactions, reconciliations) on one thread of lower CPU priority.

The warehouse service answers advertisers and runs the scheduler's loads on the same cores. A
request asks for milliseconds of CPU and a person waits for it; a load asks for seconds and the
next scheduled run is a minute away. So batch work runs on a thread of its own whose nice value
is raised once, when it starts: the kernel then gives a request's thread most of a contended
core, and the load mostly runs on what the requests leave.

On Linux, nice is a property of the thread, not of the process: raising it here leaves the HTTP
threads at the process's own priority. An unprivileged thread cannot lower its nice value again,
which is why the batch work keeps one dedicated thread instead of raising and restoring the
priority of whichever HTTP thread received the call.

DuckDB's own worker threads are shared by every query and keep the process's priority, so a load
on them would compete with the requests as an equal. The service therefore runs DuckDB with one
thread by default (``WAREHOUSE_THREADS=1``): each statement runs on the thread that issued it,
the requests' statements at the usual priority and the loads' at this one. Concurrent requests
still use every core. Measured in docs/benchmarks.md (the metrics API).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# 10 and 19 measured the same for the requests (docs/benchmarks.md); 10 leaves the loads a larger
# share beside the other processes of a shared machine (Spark, Cassandra).
DEFAULT_NICE = 10


class BatchThread:
    """Run callables one at a time on a thread whose nice value is raised by ``nice`` (0: unchanged)."""

    def __init__(self, nice: int = DEFAULT_NICE):
        self.nice = nice
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse-batch",
                                            initializer=self._lower_priority)

    def _lower_priority(self) -> None:
        if self.nice <= 0:
            return
        if not sys.platform.startswith("linux"):
            # Elsewhere the nice value belongs to the whole process: the requests would lose priority too.
            log.warning("batch work keeps the service's CPU priority: per-thread nice values need Linux")
            return
        thread = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + self.nice)
        except OSError as error:  # not allowed: run at the usual priority
            log.warning("batch work keeps the service's CPU priority: %s", error)

    def run(self, work: Callable[..., T], *args, **kwargs) -> T:
        """Run ``work`` on the batch thread and return its result (or raise its exception) here."""
        return self._executor.submit(work, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def run_in_app(work: Callable[..., T], *args, **kwargs) -> T:
    """Run ``work`` on the batch thread of the current Flask app (``app.extensions["batch"]``)."""
    from flask import current_app

    return current_app.extensions["batch"].run(work, *args, **kwargs)
