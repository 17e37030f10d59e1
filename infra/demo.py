"""Push a handful of real clicks through the running stack and show them in the warehouse.

Registers two demo ads, mints signed click URLs, clicks them over HTTP (with a repeat and a bot
among them), asks Airflow to run the rollup DAG for the minutes the clicks fell in, waits for it,
and prints the warehouse's rows next to what was sent.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import requests

from click_api import config
from click_api.storage import Ad, CassandraStore, connect
from click_api.tokens import Impression, mint, new_impression_id
from infra.airflow_api import AirflowAPI

DEMO_ADS = [
    Ad("demo-ad-shoes", "demo-advertiser-acme", "https://shop.example.com/shoes?utm_source=clickagg"),
    Ad("demo-ad-boots", "demo-advertiser-acme", "https://shop.example.com/boots"),
]
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def send_clicks(cfg, base_url: str) -> Counter:
    """Click each demo ad a few times; return what the warehouse should count per ad."""
    expected: Counter = Counter()
    http = requests.Session()
    plan = [("demo-ad-shoes", BROWSER, 3), ("demo-ad-boots", BROWSER, 2)]
    for ad_id, agent, count in plan:
        for n in range(count):
            impression = Impression(new_impression_id(), ad_id, int(time.time()), cfg["SIGNING_KEY_ID"], f"demo-user-{n}")
            url = f"{base_url}/click?t={mint(impression, cfg['SIGNING_KEYS'])}"
            first = http.get(url, headers={"User-Agent": agent}, allow_redirects=False, timeout=10)
            print(f"    {ad_id}: {first.status_code} -> {first.headers.get('Location')}")
            if first.status_code != 302:
                raise SystemExit(f"click on {ad_id} answered {first.status_code}: {first.text[:200]}")
            expected[(ad_id, "billable")] += 1
            if n == 0:  # the same impression clicked again: redirected, counted as a duplicate
                again = http.get(url, headers={"User-Agent": agent}, allow_redirects=False, timeout=10)
                print(f"    {ad_id}: {again.status_code} (same impression again)")
                expected[(ad_id, "duplicate")] += 1
    impression = Impression(new_impression_id(), "demo-ad-shoes", int(time.time()), cfg["SIGNING_KEY_ID"])
    bot = http.get(f"{base_url}/click?t={mint(impression, cfg['SIGNING_KEYS'])}", headers={"User-Agent": BOT},
                   allow_redirects=False, timeout=10)
    print(f"    demo-ad-shoes: {bot.status_code} (a crawler's request: redirected, labelled invalid)")
    expected[("demo-ad-shoes", "invalid")] += 1
    return expected


def main() -> int:
    cfg = config.from_env(os.environ)
    click_url = f"http://127.0.0.1:{os.environ.get('CLICK_API_PORT', '18000')}"
    warehouse_url = os.environ.get("WAREHOUSE_URL", "http://127.0.0.1:18100")
    airflow_url = f"http://127.0.0.1:{os.environ.get('AIRFLOW_PORT', '18080')}"

    step("registering the demo ads in Cassandra")
    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    store = CassandraStore(cluster.connect(), cfg["CASSANDRA_KEYSPACE"], cfg["WINDOWS"].raw_click_ttl,
                           cfg["RAW_CLICK_SHARDS"])
    for ad in DEMO_ADS:
        store.put_ad(ad)
        print(f"    {ad.ad_id} ({ad.advertiser_id}) -> {ad.target_url}")
    cluster.shutdown()

    step(f"clicking signed ad links on {click_url}/click")
    started = datetime.now(timezone.utc)
    expected = send_clicks(cfg, click_url)
    start = minute_floor(started)
    end = minute_floor(datetime.now(timezone.utc)) + timedelta(minutes=1)

    step(f"asking Airflow to run rollup_clicks_minute for [{start:%H:%M}, {end:%H:%M}) UTC")
    airflow = AirflowAPI.from_env()
    airflow.wait_for_dag("rollup_clicks_minute")
    airflow.set_paused("rollup_clicks_minute", False)
    airflow.wait_for_dag("reconcile_clicks_hourly")
    airflow.set_paused("reconcile_clicks_hourly", False)  # hourly dumps to S3 and reconciliation
    run_id = airflow.trigger("rollup_clicks_minute", start, end, note="make run demo")
    print("    (the run first waits for its interval to close plus the allowed lateness)")
    state = airflow.wait_for_run("rollup_clicks_minute", run_id, timeout=900, progress=lambda m: print(f"    {m}"))
    if state != "success":
        print(f"the DAG run ended {state}: see {airflow_url}/dags/rollup_clicks_minute", file=sys.stderr)
        return 1

    step("querying the warehouse")
    sql = (
        "SELECT ad_id, sum(billable_clicks) AS billable, sum(duplicate_clicks) AS duplicates, "
        "sum(invalid_clicks) AS invalid, sum(unique_users) AS users_by_minute FROM fct_clicks_minute "
        "WHERE minute_at >= ? AND minute_at < ? AND ad_id LIKE 'demo-ad-%' GROUP BY ad_id ORDER BY ad_id"
    )
    params = [start.replace(tzinfo=None).isoformat(), end.replace(tzinfo=None).isoformat()]
    print(f"    {sql}  -- with {params}")
    result = requests.post(f"{warehouse_url}/sql", json={"sql": sql, "params": params}, timeout=30).json()
    print("    " + " | ".join(result["columns"]))
    matches = True
    for row in result["rows"]:
        print("    " + " | ".join(str(v) for v in row))
        ad_id, billable, duplicates, invalid = row[:4]
        matches &= (billable, duplicates, invalid) == (
            expected[(ad_id, "billable")], expected[(ad_id, "duplicate")], expected[(ad_id, "invalid")]
        )
    matches &= len(result["rows"]) == len(DEMO_ADS)
    print("    sent: " + ", ".join(f"{ad} {kind}={n}" for (ad, kind), n in sorted(expected.items())))
    print("    the warehouse matches what was sent" if matches else
          "    the interval also holds clicks of an earlier demo run in the same minutes")

    step("done")
    print(f"    Airflow UI:   {airflow_url}  (user {os.environ.get('AIRFLOW_USER', 'admin')}, "
          f"password {os.environ.get('AIRFLOW_PASSWORD', 'admin')})")
    print("    SQL shell:    make sql")
    print("    Status, logs: make status")
    return 0


if __name__ == "__main__":
    sys.exit(main())
