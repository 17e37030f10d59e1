"""The DuckDB warehouse: schema, loads, checks, and the service that owns the file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

# DuckDB threads of the warehouse service (WAREHOUSE_THREADS): one, so that each statement runs on
# the thread that issued it, at that thread's CPU priority (see warehouse/batch.py).
DEFAULT_THREADS = 1


def connect(path: str, read_only: bool = False, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file, creating its folder, with UTC as the time zone of every cursor.

    Times are stored as naive UTC; with the session time zone set to UTC, ``now()::TIMESTAMP`` and
    casts of offset-carrying values give UTC whatever the host's time zone is.
    """
    if path != ":memory:" and not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config: dict = {}
    if threads:
        config["threads"] = threads
    import duckdb  # here, so that importing warehouse.client (the DAGs do) does not load DuckDB

    con = duckdb.connect(path, read_only=read_only, config=config)
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    return con
