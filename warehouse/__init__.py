"""The DuckDB warehouse: schema, loads, checks, and the service that owns the file."""

from __future__ import annotations

import os

import duckdb


def connect(path: str, read_only: bool = False, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file, creating its folder. Times are naive UTC (no ICU extension needed)."""
    if path != ":memory:" and not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config: dict = {}
    if threads:
        config["threads"] = threads
    return duckdb.connect(path, read_only=read_only, config=config)
