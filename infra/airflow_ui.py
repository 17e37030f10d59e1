"""Look at Airflow's own UI in a real browser: log in, open a DAG's runs, read a run's state, take a screenshot.

The REST API says what Airflow stored; this says what a person opening the UI sees. Chromium comes
from Debian (``/usr/bin/chromium``, or ``CLICKAGG_CHROMIUM``), driven headless by Playwright.

    python -m infra.airflow_ui                      # the newest run of rollup_clicks_minute
    python -m infra.airflow_ui --run-id manual__...  --out runs.png
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from infra.airflow_api import AirflowAPI, login_from_env

DEFAULT_DAG = "rollup_clicks_minute"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# The states the UI writes in a run's State cell (capitalised names of Airflow's DagRunState).
STATES = ("Success", "Failed", "Running", "Queued")
TIMEOUT_MS = 60_000


def log_in(page: Page, base_url: str, user: str, password: str) -> None:
    page.goto(f"{base_url}/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"), timeout=TIMEOUT_MS)


def shown_run_state(page: Page, base_url: str, dag_id: str, run_id: str) -> str:
    """The state the DAG's Runs tab shows for ``run_id``: one of STATES. The tab lists the newest
    runs first, one page of them, so the run must be among the newest."""
    page.goto(f"{base_url}/dags/{dag_id}/runs")
    row = page.locator("tr", has=page.get_by_text(run_id, exact=True))
    try:
        row.wait_for(timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        raise LookupError(f"the Airflow UI lists no run {run_id} among the newest runs of {dag_id}") from None
    cells = row.locator("td").all_inner_texts()
    shown = [state for state in STATES if any(cell.strip() == state for cell in cells)]
    if len(shown) != 1:
        raise RuntimeError(f"the Runs tab's row for {run_id} shows no single state: {cells}")
    return shown[0]


def look(base_url: str, user: str, password: str, dag_id: str, run_id: str, screenshot: Path,
         chromium: str | None = None) -> str:
    """Log in as a person would, open the DAG's runs, return the state shown for ``run_id`` and save
    a screenshot of the page."""
    chromium = chromium or os.environ.get("CLICKAGG_CHROMIUM", DEFAULT_CHROMIUM)
    if not Path(chromium).exists():
        raise FileNotFoundError(f"no Chromium at {chromium}: apt-get install chromium, or set CLICKAGG_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            log_in(page, base_url, user, password)
            state = shown_run_state(page, base_url, dag_id, run_id)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            return state
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m infra.airflow_ui", description=__doc__.splitlines()[0])
    parser.add_argument("--dag", default=DEFAULT_DAG)
    parser.add_argument("--run-id", help="default: the DAG's newest run")
    parser.add_argument("--out", type=Path, default=Path(env.get("STATE_DIR", ".local")) / "airflow-ui.png",
                        help="where the screenshot goes (default: %(default)s)")
    args = parser.parse_args(argv)
    base_url, user, password = login_from_env(env)
    run_id = args.run_id or AirflowAPI(base_url, user, password).newest_run(args.dag)
    if run_id is None:
        print(f"{args.dag} has no runs yet", file=sys.stderr)
        return 1
    try:
        state = look(base_url, user, password, args.dag, run_id, args.out)
    except (LookupError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"the Airflow UI shows {args.dag} run {run_id}: {state}")
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
