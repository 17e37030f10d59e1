"""Read-only SQL for analysts, run by the warehouse service on its own connection."""

from __future__ import annotations

import datetime as dt
import decimal

import duckdb


class ReadOnlyError(ValueError):
    """The statement would change the warehouse, or is not a single statement."""


def _jsonable(value):
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def run_read_only(con: duckdb.DuckDBPyConnection, query: str, row_limit: int, params: list | None = None):
    """Return (columns, rows, truncated) for one SELECT-like statement; refuse anything else."""
    statements = duckdb.extract_statements(query)
    if len(statements) != 1:
        raise ReadOnlyError("send exactly one SQL statement")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise ReadOnlyError(f"only SELECT queries are allowed here, not {kind.name}")
    cur = con.cursor()
    try:
        result = cur.execute(query, params or None)
        columns = [d[0] for d in result.description]
        rows = result.fetchmany(row_limit + 1)
    finally:
        cur.close()
    truncated = len(rows) > row_limit
    return columns, [[_jsonable(v) for v in row] for row in rows[:row_limit]], truncated
