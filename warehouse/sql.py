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
    text = " ".join(statements[0].query.split()).upper()
    if kind == duckdb.StatementType.EXPLAIN and text.startswith("EXPLAIN ANALY"):
        raise ReadOnlyError("EXPLAIN ANALYZE runs its statement; use EXPLAIN to see a plan")
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise ReadOnlyError(f"only SELECT queries are allowed here, not {kind.name}")
    cur = con.cursor()
    try:
        # A SELECT can still hide a write (a data-modifying CTE): the transaction refuses it.
        cur.execute("BEGIN TRANSACTION READ ONLY")
        try:
            result = cur.execute(query, params or None)
            columns = [d[0] for d in result.description]
            rows = result.fetchmany(row_limit + 1)
        except duckdb.TransactionException as error:
            raise ReadOnlyError("this query would change the warehouse; only reads are allowed") from error
        finally:
            cur.execute("ROLLBACK")
    finally:
        cur.close()
    truncated = len(rows) > row_limit
    return columns, [[_jsonable(v) for v in row] for row in rows[:row_limit]], truncated
