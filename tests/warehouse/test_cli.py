"""The SQL shell's table rendering and its message when the service is down."""

from __future__ import annotations

import socket

from warehouse.cli import main, render, run


def test_render_aligns_a_header_a_separator_and_the_rows():
    text = render(["ad_id", "clicks"], [["ad-1", 3], ["ad-22", None]], truncated=False)

    assert text.split("\n") == [
        "ad_id | clicks",
        "------+-------",
        "ad-1  | 3     ",
        "ad-22 | NULL  ",
        "(2 rows)",
    ]


def test_render_counts_one_row_in_the_singular():
    assert render(["n"], [[12345]], truncated=False).split("\n") == ["n    ", "-----", "12345", "(1 row)"]


def test_render_says_when_the_result_was_truncated():
    assert render(["n"], [[1], [2]], truncated=True).endswith("\n(2 rows, truncated)")


def test_render_of_no_rows_keeps_the_header():
    assert render(["ad_id", "day"], [], truncated=False).split("\n") == ["ad_id | day", "------+----", "(0 rows)"]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_explains_an_unreachable_service():
    url = f"http://127.0.0.1:{unused_port()}"

    ok, text = run(url, "SELECT 1")

    assert ok is False
    assert text.startswith(f"cannot reach the warehouse service at {url}")


def test_main_with_a_command_fails_when_the_service_is_unreachable(monkeypatch, capsys):
    monkeypatch.setenv("WAREHOUSE_URL", f"http://127.0.0.1:{unused_port()}")

    assert main(["-c", "SELECT 1"]) == 1
    assert "cannot reach the warehouse service" in capsys.readouterr().err
