"""A read-only SQL shell on the warehouse, through the warehouse service (so it works while loads run).

    python -m warehouse.cli                      # interactive; end a statement with ';', quit with \\q
    python -m warehouse.cli -c "SELECT count(*) FROM fct_clicks_minute"
"""

from __future__ import annotations

import argparse
import os
import sys

import requests


def render(columns: list[str], rows: list[list], truncated: bool) -> str:
    """Format a result as an aligned text table."""
    cells = [[("NULL" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)), line]
    out += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{', truncated' if truncated else ''})")
    return "\n".join(out)


def run(url: str, query: str) -> tuple[bool, str]:
    try:
        response = requests.post(f"{url}/sql", json={"sql": query}, timeout=300)
    except requests.ConnectionError:
        return False, f"cannot reach the warehouse service at {url}: is it running? (make up)"
    body = response.json()
    if response.status_code != 200:
        return False, f"error: {body.get('error')}"
    return True, render(body["columns"], body["rows"], body["truncated"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make sql", description="Read-only SQL on the click warehouse.")
    parser.add_argument("-c", "--command", help="run one statement and exit")
    args = parser.parse_args(argv)
    url = os.environ.get("WAREHOUSE_URL", "http://127.0.0.1:18100")
    if args.command:
        ok, text = run(url, args.command)
        print(text, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print(f"clickagg warehouse at {url} (read-only). Tables: fct_clicks_minute, fct_clicks_hour, fct_clicks_day,")
    print("dim_ads, meta_watermarks, meta_loads. End statements with ';'. \\q quits.")
    buffer: list[str] = []
    while True:
        try:
            line = input("clickagg> " if not buffer else "     ...> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("\\q", "quit", "exit") and not buffer:
            return 0
        buffer.append(line)
        if line.rstrip().endswith(";"):
            ok, text = run(url, "\n".join(buffer).rstrip().rstrip(";"))
            print(text)
            buffer = []


if __name__ == "__main__":
    sys.exit(main())
