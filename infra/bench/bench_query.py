"""Benchmark the metrics API at the design's scale, on a warehouse of its own, while loads run.

    make bench-query                                   # 10M ads, 100M clicks/day, 30 days (+60 days of day rows)
    make bench-query DAYS=1 ADS=1000000 CLICKS=10000000   # the small run
    python -m infra.bench.bench_query --help

1. Build a separate DuckDB file (never the live warehouse) with DuckDB SQL: ADS ads with Zipf
   popularity, one advertiser (adv-bench) owning 1,000 of them spread over the ranks, CLICKS clicks a
   day as (ad, minute) rows for DAYS days, written in arrival order (minute by minute, as the
   every-minute loads leave them), their hour and day rollups, the hashed users of the last
   USERS_DAYS days, and EXTRA_DAYS more days of day rows before them (for a 90-day day series).
   Every billable click is a distinct user, so unique_users = billable_clicks at every grain.
2. Serve it with the real service: gunicorn -c warehouse/gunicorn_conf.py on its own port.
3. Loop real loads (POST /internal/loads/clicks-minute, replacing the last 11 minutes, as a
   scheduled run with its lookback does) for the whole measurement. Two versions of the window
   alternate, without and with its newest minute, so every load adds or removes a minute's rows.
4. Measure the scenarios with CLIENTS concurrent clients, before compaction (arrival order: the
   two targets only, briefly), then compact every day through POST /internal/compactions/clicks-minute,
   then measure every scenario again.
5. Write docs/benchmarks/query-<UTC timestamp>.json and print a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from infra.bench.machine import CLK_TCK, machine_busy_seconds, machine_info
from warehouse import connect, schema

REPO = Path(__file__).resolve().parents[2]
FIRST_DAY = datetime(2026, 1, 1)  # the first day of minute data is FIRST_DAY; day rows start EXTRA_DAYS earlier
BENCH_ADVERTISER = "adv-bench"
TARGETS_MS = {"ad_minute_30d_hot": 50.0, "advertiser_day_90d": 300.0}
DESIGN = {"ads": 10_000_000, "clicks_per_day": 100_000_000, "days": 30}  # the scale the targets are set for
LOAD_WINDOW = timedelta(minutes=11)  # one scheduled run: its minute plus the 10-minute lookback


# ---------------------------------------------------------------- the machine


def services_running() -> dict:
    """This project's services (from their pid files) and the busiest other processes on the machine."""
    run_dir = Path(os.environ.get("RUN_DIR", REPO / ".local" / "run"))
    ours = {}
    for pidfile in sorted(run_dir.glob("*.pid")):
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
            ours[pidfile.stem] = "running"
        except (OSError, ValueError):
            ours[pidfile.stem] = "stopped"
    top = subprocess.run(["ps", "-eo", "pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"project_services": ours, "top_processes_by_cpu": top.splitlines()[1:9]}


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children that are still alive (gunicorn's master and worker)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


# ---------------------------------------------------------------- building the warehouse


class Builder:
    """Writes the synthetic warehouse with DuckDB SQL; every phase is timed."""

    def __init__(self, path: Path, args):
        self.path, self.args = path, args
        self.timings: dict[str, float] = {}
        self.rows: dict[str, int] = {}

    def timed(self, name: str, sql: str, params=None) -> int:
        began = time.monotonic()
        result = self.con.execute(sql, params or []).fetchone()
        self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - began, 2)
        return result[0] if result else 0

    def build(self) -> dict:
        args = self.args
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (self.path, self.path.with_suffix(".duckdb.wal")):
            leftover.unlink(missing_ok=True)
        self.con = connect(str(self.path), threads=args.threads)
        self.con.execute(f"SET memory_limit = '{args.memory_limit}'")
        self.con.execute(f"SET temp_directory = '{self.path.parent / 'tmp'}'")
        schema.migrate(self.con)
        began = time.monotonic()
        self.ads()
        for day in range(args.days):
            self.minute_day(FIRST_DAY + timedelta(days=day), with_users=day >= args.days - args.users_days)
            print(f"    day {day + 1}/{args.days}: {self.rows['fct_clicks_minute']:,} minute rows so far "
                  f"({time.monotonic() - began:.0f}s)", flush=True)
        self.con.execute("DROP TABLE bench_day")
        self.con.execute("DROP TABLE bench_hours")
        for day in range(args.extra_days):
            self.extra_day(FIRST_DAY - timedelta(days=day + 1))
        end = FIRST_DAY + timedelta(days=args.days)
        self.con.execute("INSERT OR REPLACE INTO meta_watermarks VALUES ('rollup_clicks_minute', ?, now()::TIMESTAMP)",
                         [end])
        self.load_history(end)
        self.con.execute("DROP TABLE bench_ads")
        self.timed("checkpoint", "CHECKPOINT")
        self.con.close()
        self.timings["total"] = round(time.monotonic() - began, 1)
        return {"seconds": self.timings, "rows": self.rows, "file_bytes": self.path.stat().st_size}

    def ads(self) -> None:
        args = self.args
        stride = max(args.ads // args.advertiser_ads, 1)
        advertisers = max(args.ads // 100, 1)
        self.rows["ads"] = self.timed("ads", f"""
            CREATE TABLE bench_ads AS
            WITH h AS (SELECT sum(pow(r, -{args.zipf_s})) AS hsum FROM range(1, {args.ads} + 1) t(r))
            SELECT r, 'ad-' || lpad(r::VARCHAR, 8, '0') AS ad_id,
                   CASE WHEN r % {stride} = 7 % {stride} AND r <= {stride * args.advertiser_ads}
                        THEN '{BENCH_ADVERTISER}'
                        ELSE 'adv-' || lpad((hash(r) % {advertisers})::VARCHAR, 7, '0') END AS advertiser_id,
                   {args.clicks_per_day} / hsum * pow(r, -{args.zipf_s}) AS lam
            FROM range(1, {args.ads} + 1) t(r), h""")
        self.timed("ads", "INSERT INTO dim_ads SELECT ad_id, advertiser_id, ?, ? FROM bench_ads",
                   [FIRST_DAY - timedelta(days=self.args.extra_days), FIRST_DAY + timedelta(days=self.args.days)])

    def minute_day(self, day: datetime, with_users: bool) -> None:
        """One day of (ad, minute) rows: an ad with n clicks gets min(n, 1440) distinct minutes. The
        day is made in a temporary table, and its hours, days and users come from there: reading
        them back from the fact tables would scan every day written so far when they are sorted by ad."""
        order = "minute_at, advertiser_id, ad_id" if self.args.layout == "arrival" else "advertiser_id, ad_id, minute_at"
        self.timed("minute_rows", """
            CREATE OR REPLACE TEMP TABLE bench_day AS
            WITH n AS (SELECT ad_id, advertiser_id, floor(lam * (0.9 + 0.2 * random()) + random())::BIGINT AS n,
                              (random() * 1440)::BIGINT AS off FROM bench_ads),
                 k AS (SELECT ad_id, advertiser_id, n, off, unnest(range(least(n, 1440))) AS k FROM n WHERE n > 0),
                 c AS (SELECT ad_id, advertiser_id,
                              ?::TIMESTAMP + to_minutes(CASE WHEN n >= 1440 THEN k ELSE (off + k * 1440 // n) % 1440 END)
                                  AS minute_at,
                              CASE WHEN n >= 1440 THEN n // 1440 + (k < n % 1440)::BIGINT ELSE 1 END AS clicks
                       FROM k),
                 l AS (SELECT *, floor(0.05 * clicks + random())::BIGINT AS dup,
                              floor(0.03 * clicks + random())::BIGINT AS inv,
                              floor(0.02 * clicks + random())::BIGINT AS exp FROM c)
            SELECT minute_at, ad_id, advertiser_id, greatest(clicks - dup - inv - exp, 0) AS billable_clicks,
                   dup AS duplicate_clicks, exp AS expired_clicks, inv AS invalid_clicks,
                   inv - inv // 2 AS invalid_head_clicks, 0 AS invalid_prefetch_clicks, inv // 2 AS invalid_bot_clicks,
                   greatest(clicks - dup - inv - exp, 0) AS unique_users, now()::TIMESTAMP AS loaded_at
            FROM l""", [day])
        inserted = self.timed("minute_rows", f"INSERT INTO fct_clicks_minute SELECT * FROM bench_day ORDER BY {order}")
        self.rows["fct_clicks_minute"] = self.rows.get("fct_clicks_minute", 0) + inserted
        sums = ", ".join(f"sum({c}) AS {c}" for c in ("billable_clicks", "duplicate_clicks", "expired_clicks",
                                                      "invalid_clicks", "invalid_head_clicks", "invalid_prefetch_clicks",
                                                      "invalid_bot_clicks", "unique_users"))
        self.timed("hour_rows", f"""
            CREATE OR REPLACE TEMP TABLE bench_hours AS
            SELECT date_trunc('hour', minute_at) AS hour_at, ad_id, any_value(advertiser_id) AS advertiser_id, {sums},
                   now()::TIMESTAMP
            FROM bench_day GROUP BY ALL""")
        self.rows["fct_clicks_hour"] = self.rows.get("fct_clicks_hour", 0) + self.timed(
            "hour_rows", "INSERT INTO fct_clicks_hour SELECT * FROM bench_hours ORDER BY advertiser_id, ad_id, hour_at")
        self.rows["fct_clicks_day"] = self.rows.get("fct_clicks_day", 0) + self.timed("day_rows", f"""
            INSERT INTO fct_clicks_day
            SELECT ?::TIMESTAMP AS day_at, ad_id, any_value(advertiser_id) AS advertiser_id, {sums}, now()::TIMESTAMP
            FROM bench_hours GROUP BY ALL ORDER BY advertiser_id, ad_id""", [day])
        if with_users:
            # The hashed user behind each billable click of the day: all distinct. In the order of the
            # minute rows, as the loads (arrival) or the compaction (sorted) leave them.
            self.rows["stg_clicks_minute_users"] = self.rows.get("stg_clicks_minute_users", 0) + self.timed(
                "user_rows", f"""
                INSERT INTO stg_clicks_minute_users
                SELECT minute_at, ad_id, (hash(ad_id, minute_at, k) >> 1)::BIGINT
                FROM (SELECT minute_at, ad_id, advertiser_id, unnest(range(unique_users)) AS k FROM bench_day)
                ORDER BY {order}""")

    def load_history(self, end: datetime) -> None:
        """The meta_loads rows of a scheduled run every minute over the minute data, as a live warehouse has them."""
        self.rows["meta_loads"] = self.timed("load_history", """
            INSERT INTO meta_loads
            SELECT md5(m::VARCHAR), 'fct_clicks_minute', m - ?::INTERVAL, m + INTERVAL 1 MINUTE, 0, 0,
                   m + INTERVAL 1 MINUTE
            FROM unnest(generate_series(?::TIMESTAMP, ?::TIMESTAMP - INTERVAL 1 MINUTE, INTERVAL 1 MINUTE)) t(m)""",
                                            [LOAD_WINDOW - timedelta(minutes=1), FIRST_DAY, end])
        self.timed("load_history", schema.LOAD_HOURS_FROM_LOADS)

    def extra_day(self, day: datetime) -> None:
        """Day rows only, for the days before the minute data (a 90-day series needs them)."""
        self.rows["fct_clicks_day"] = self.rows.get("fct_clicks_day", 0) + self.timed("extra_day_rows", """
            INSERT INTO fct_clicks_day
            WITH n AS (SELECT ad_id, advertiser_id, floor(lam * (0.9 + 0.2 * random()) + random())::BIGINT AS clicks
                       FROM bench_ads),
                 l AS (SELECT *, floor(0.05 * clicks + random())::BIGINT AS dup,
                              floor(0.03 * clicks + random())::BIGINT AS inv,
                              floor(0.02 * clicks + random())::BIGINT AS exp FROM n WHERE clicks > 0)
            SELECT ?::TIMESTAMP, ad_id, advertiser_id, greatest(clicks - dup - inv - exp, 0), dup, exp, inv,
                   inv - inv // 2, 0, inv // 2, greatest(clicks - dup - inv - exp, 0), now()::TIMESTAMP
            FROM l ORDER BY advertiser_id, ad_id""", [day])


def stage_loads(path: Path, folder: Path, end: datetime) -> list[dict]:
    """Stage the last LOAD_WINDOW twice where a rollup job would: without its newest minute, and whole.

    The loop alternates the two, so each load adds or removes one minute of rows and users, as a
    scheduled run adds its newest minute (reloading identical rows would understate the load's work).
    Returns the two load bodies, each with its row count.
    """
    shutil.rmtree(folder, ignore_errors=True)
    start = end - LOAD_WINDOW
    con = connect(str(path), read_only=True)
    minute_cols = ("minute_at, ad_id, advertiser_id, billable_clicks, duplicate_clicks, expired_clicks, invalid_clicks, "
                   "invalid_head_clicks, invalid_prefetch_clicks, invalid_bot_clicks, unique_users")
    bodies = []
    for name, upto in (("without-newest-minute", end - timedelta(minutes=1)), ("whole", end)):
        out = folder / name
        (out / "minute").mkdir(parents=True)
        (out / "users").mkdir(parents=True)
        bounds = f"minute_at >= '{start}' AND minute_at < '{upto}'"  # constants of this script, not input
        con.execute(f"COPY (SELECT {minute_cols} FROM fct_clicks_minute WHERE {bounds}) "
                    f"TO '{out / 'minute' / 'part-0.parquet'}' (FORMAT parquet)")
        con.execute(f"COPY (SELECT minute_at, ad_id, user_hash FROM stg_clicks_minute_users WHERE {bounds}) "
                    f"TO '{out / 'users' / 'part-0.parquet'}' (FORMAT parquet)")
        rows = con.execute(f"SELECT count(*) FROM fct_clicks_minute WHERE {bounds}").fetchone()[0]
        bodies.append({"start": start.isoformat() + "Z", "end": end.isoformat() + "Z", "output": str(out), "rows": rows})
    con.close()
    return bodies


def pick_ads(path: Path, args) -> dict:
    """The hottest ad, ads drawn by popularity, and the benchmark advertiser's ad count."""
    con = connect(str(path), read_only=True)
    hot = con.execute("SELECT ad_id, advertiser_id FROM dim_ads WHERE ad_id = 'ad-00000001'").fetchone()
    rng = random.Random(7)
    # Zipf(s=1) ranks by inverse CDF: P(rank <= x) ~ ln(x) / ln(N).
    ranks = sorted({max(1, int(math.exp(rng.random() * math.log(args.ads)))) for _ in range(args.sample_ads)})
    ids = [f"ad-{r:08d}" for r in ranks]
    sampled = con.execute("SELECT ad_id, advertiser_id FROM dim_ads WHERE list_contains(?, ad_id)", [ids]).fetchall()
    bench_ads = con.execute("SELECT count(*) FROM dim_ads WHERE advertiser_id = ?", [BENCH_ADVERTISER]).fetchone()[0]
    con.close()
    return {"hot": hot, "sampled": sampled, "bench_advertiser_ads": bench_ads}


# ---------------------------------------------------------------- the service and its clients


def service_app():
    """The warehouse service's app as `make up` builds it; BENCH_CHUNK_CACHE_MB=0 turns the closed-day cache off."""
    from warehouse.server import create_app

    app = create_app()
    if os.environ.get("BENCH_CHUNK_CACHE_MB"):
        app.config["API_CHUNK_CACHE_MB"] = int(os.environ["BENCH_CHUNK_CACHE_MB"])
    return app


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """The real warehouse service (gunicorn, warehouse/gunicorn_conf.py) on the benchmark's file and port."""

    def __init__(self, path: Path, port: int, log: Path, threads: int | None, token: str, cache_mb: int | None):
        self.token = token
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "WAREHOUSE_PATH": str(path), "WAREHOUSE_PORT": str(port),
               "WAREHOUSE_ADMIN_TOKEN": self.token, "LOG_LEVEL": "warning"}
        if threads:
            env["WAREHOUSE_THREADS"] = str(threads)
        if cache_mb is not None:
            env["BENCH_CHUNK_CACHE_MB"] = str(cache_mb)
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [gunicorn, "-c", "warehouse/gunicorn_conf.py", "infra.bench.bench_query:service_app()"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the warehouse service did not start; see {log}") from None
                time.sleep(0.5)

    def admin(self, path: str, body: dict, timeout: float = 3600) -> dict:
        response = requests.post(self.url + path, json=body, timeout=timeout,
                                 headers={"Authorization": f"Bearer {self.token}"})
        if response.status_code >= 400:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


class LoadLoop:
    """Real loads of the last window, back to back (or every ``every_s``), in a thread of their own,
    taking the staged bodies in turn."""

    def __init__(self, service: Service, bodies: list[dict], every_s: float):
        self.service, self.bodies, self.every_s = service, bodies, every_s
        self.durations: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        bodies = itertools.cycle([{k: v for k, v in body.items() if k != "rows"} for body in self.bodies])
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                self.service.admin("/internal/loads/clicks-minute", next(bodies), timeout=900)
                self.durations.append(time.monotonic() - began)
            except (RuntimeError, requests.RequestException) as error:
                self.errors.append(str(error)[:200])
            self.stopping.wait(max(0.0, self.every_s - (time.monotonic() - began)))

    def __enter__(self) -> LoadLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def summary(self) -> dict:
        done = sorted(self.durations)
        return {"loads": len(done), "errors": len(self.errors), "first_errors": self.errors[:3],
                "seconds_p50": round(done[len(done) // 2], 2) if done else None,
                "seconds_max": round(done[-1], 2) if done else None}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(service: Service, name: str, requests_of, seconds: float, clients: int, max_requests: int | None) -> dict:
    """Run ``clients`` threads for ``seconds``, each sending requests_of(rng) -> (path, params, headers)."""
    latencies: list[float] = []
    errors: list[str] = []
    sizes: list[int] = []
    firsts: list[tuple[float, float]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    cpu_before, machine_before = cpu_seconds(service.process.pid), machine_busy_seconds()
    client_before = time.process_time()

    def client(n: int) -> None:
        rng = random.Random(n)
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if max_requests is not None and len(latencies) + len(errors) >= max_requests:
                    return
            path, params, headers = requests_of(rng)
            began = time.perf_counter()
            try:
                response = session.get(service.url + path, params=params, headers=headers, timeout=600)
                body = response.content
                elapsed = time.perf_counter() - began
            except requests.RequestException as error:
                with lock:
                    errors.append(str(error)[:200])
                continue
            with lock:
                if response.status_code == 200:
                    latencies.append(elapsed)
                    sizes.append(len(body))
                    firsts.append((began, elapsed))
                else:
                    errors.append(f"{response.status_code}: {body[:200]!r}")

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    ms = [1000 * v for v in latencies]
    result = {
        "scenario": name, "clients": clients, "seconds": round(wall, 1), "requests": len(ms), "errors": len(errors),
        "first_errors": errors[:3], "rps": round(len(ms) / wall, 1),
        # % of one core: the service (queries and loads), this client, and everything on the machine.
        "server_cpu_percent": round(100 * (cpu_seconds(service.process.pid) - cpu_before) / wall, 1),
        "client_cpu_percent": round(100 * (time.process_time() - client_before) / wall, 1),
        "machine_cpu_percent": round(100 * (machine_busy_seconds() - machine_before) / wall, 1),
        "mean_response_bytes": int(sum(sizes) / len(sizes)) if sizes else 0,
    }
    if ms:
        result["first_ms"] = round(1000 * min(firsts)[1], 1)  # the scenario's first request (a cold cache)
        result.update({f"p{int(q * 100)}_ms": round(percentile(ms, q), 1) for q in (0.5, 0.9, 0.99)})
        result["max_ms"] = round(max(ms), 1)
    print(f"    {name:34s} {result['requests']:6d} req {result['rps']:7.1f}/s  p50 {result.get('p50_ms')} "
          f"p99 {result.get('p99_ms')} ms  errors {len(errors)}", flush=True)
    return result


def scenarios(picked: dict, keys: dict, end: datetime, days: int, extra_days: int) -> dict:
    """name -> requests_of(rng) -> (path, params, headers): what each scenario asks for."""

    def fixed(path: str, params: dict, headers: dict):
        return lambda rng: (path, params, headers)

    def utc_days(n: int) -> dict:
        return {"from": (end - timedelta(days=n)).isoformat() + "Z", "to": end.isoformat() + "Z"}

    def local_days(n: int) -> dict:
        return {"from": (end - timedelta(days=n)).date().isoformat(), "to": end.date().isoformat()}

    hot_ad, hot_advertiser = picked["hot"]
    month, week = min(30, days), min(7, days)
    out = {}
    for n in sorted({1, week, month}):
        out[f"ad_minute_{n}d_hot"] = fixed(f"/v1/ads/{hot_ad}/series", {"granularity": "minute", "tz": "UTC",
                                                                         **utc_days(n)}, keys[hot_advertiser])

    def zipf_ad(rng):
        ad_id, advertiser_id = rng.choice(picked["sampled"])
        return f"/v1/ads/{ad_id}/series", {"granularity": "minute", "tz": "UTC", **utc_days(month)}, keys[advertiser_id]

    out[f"ad_minute_{month}d_zipf"] = zipf_ad
    bench = f"/v1/advertisers/{BENCH_ADVERTISER}/series"
    out[f"advertiser_day_{min(90, days + extra_days)}d"] = fixed(
        bench, {"granularity": "day", "tz": "UTC", **utc_days(min(90, days + extra_days))}, keys[BENCH_ADVERTISER])
    out[f"advertiser_day_{month}d_new_york"] = fixed(
        bench, {"granularity": "day", "tz": "America/New_York", **local_days(month)}, keys[BENCH_ADVERTISER])
    out[f"ad_hour_{week}d_kathmandu_hot"] = fixed(
        f"/v1/ads/{hot_ad}/series", {"granularity": "hour", "tz": "Asia/Kathmandu", **local_days(week)},
        keys[hot_advertiser])
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-query", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days of minute data (the design: 30)")
    parser.add_argument("--ads", type=int, default=10_000_000)
    parser.add_argument("--clicks-per-day", type=int, default=100_000_000)
    parser.add_argument("--extra-days", type=int, default=60, help="days of day rows only, before the minute data")
    parser.add_argument("--users-days", type=int, default=1, help="last days whose hashed users are generated")
    parser.add_argument("--advertiser-ads", type=int, default=1000, help="ads of the benchmark advertiser")
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--layout", choices=["arrival", "sorted"], default="arrival",
                        help="arrival: write in time order, measure, compact, measure again; sorted: write compacted")
    parser.add_argument("--seconds", type=float, default=20, help="per scenario")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients (2: one per core)")
    parser.add_argument("--before-seconds", type=float, default=20, help="per target scenario before compaction")
    parser.add_argument("--load-every", type=float, default=0, help="seconds between load starts (0: back to back)")
    parser.add_argument("--sample-ads", type=int, default=50, help="ads drawn by popularity for the zipf scenario")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads of the build")
    parser.add_argument("--service-threads", type=int, default=None,
                        help="DuckDB threads of the service (default: its own, WAREHOUSE_THREADS or 1)")
    parser.add_argument("--memory-limit", default="6GB", help="DuckDB memory limit of the build")
    parser.add_argument("--path", default=str(REPO / ".local" / "bench" / "query" / "warehouse.duckdb"))
    parser.add_argument("--reuse", action="store_true", help="serve an already built --path (same parameters)")
    parser.add_argument("--port", type=int, default=18190)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks"))
    args = parser.parse_args(argv)

    path = Path(args.path).resolve()
    live = Path(os.environ.get("WAREHOUSE_PATH", REPO / ".local" / "warehouse" / "clickagg.duckdb")).resolve()
    if path == live:
        print(f"refusing to build over the live warehouse {live}: pick another --path", file=sys.stderr)
        return 2
    free = shutil.disk_usage(path.parent if path.parent.exists() else REPO).free
    # Rows: (ad, minute) about 0.55 per click, (ad, hour) 0.3, (ad, day) 0.9 per ad; bytes per row as
    # measured on the small runs: 10 for minutes and hours, 22 for days, 6 for hashed users.
    estimate = int(args.days * args.clicks_per_day * (0.55 + 0.3) * 10
                   + (args.days + args.extra_days) * args.ads * 0.9 * 22 + args.users_days * args.clicks_per_day * 6)
    print(f"==> disk: {free / 2**30:.0f} GiB free, this build needs about {estimate / 2**30:.1f} GiB")
    if not args.reuse and estimate > 0.8 * free:
        print("not enough disk: build fewer days (DAYS=3) or free some space", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record: dict = {
        "benchmark": "query", "started_at": stamp, "command": " ".join(["python -m infra.bench.bench_query", *sys.argv[1:]]),
        "parameters": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "machine": machine_info(), "services": services_running(), "targets_p99_ms": TARGETS_MS,
    }
    params_file = path.with_suffix(".params.json")
    build_params = {k: getattr(args, k) for k in ("days", "ads", "clicks_per_day", "extra_days", "users_days",
                                                  "advertiser_ads", "zipf_s", "layout")}
    if args.reuse:
        if not path.exists() or json.loads(params_file.read_text()) != build_params:
            print(f"--reuse: {path} was not built with these parameters", file=sys.stderr)
            return 2
        record["build"] = {"reused": True}
    else:
        print(f"==> building {path}: {args.ads:,} ads, {args.clicks_per_day:,} clicks/day, {args.days} days "
              f"(+{args.extra_days} days of day rows)", flush=True)
        record["build"] = Builder(path, args).build()
        params_file.write_text(json.dumps(build_params))
        print(f"    built in {record['build']['seconds']['total']}s: {record['build']['file_bytes'] / 2**30:.2f} GiB",
              flush=True)
    end = FIRST_DAY + timedelta(days=args.days)
    load_bodies = stage_loads(path, path.parent / "load", end)
    picked = pick_ads(path, args)
    record["data"] = {"hot_ad": picked["hot"], "bench_advertiser_ads": picked["bench_advertiser_ads"],
                      "load_window_rows": [body["rows"] for body in load_bodies]}

    log = path.parent / "service.log"
    port, token = free_port(args.port), os.urandom(16).hex()
    results: dict = {}

    def phase(name: str, cache_mb: int | None, chosen: list[str], clients: int, seconds: float,
              max_requests: int | None, before=None) -> None:
        service = Service(path, port, log, args.service_threads, token, cache_mb)
        print(f"==> {name}: served at {service.url} (log {log}), {clients} clients, loads running", flush=True)
        try:
            if before:
                before(service)
            with LoadLoop(service, load_bodies, args.load_every) as loop:
                results[name] = [measure(service, n, plan[n], seconds, clients, max_requests) for n in chosen]
            results[f"{name}_loads"] = loop.summary()
        finally:
            service.stop()

    keys: dict = {}

    def issue_keys(service: Service) -> None:
        for advertiser in {picked["hot"][1], BENCH_ADVERTISER, *(a[1] for a in picked["sampled"])}:
            key = service.admin("/internal/api-keys", {"advertiser_id": advertiser})["api_key"]
            keys[advertiser] = {"Authorization": f"Bearer {key}"}

    def compact(service: Service) -> None:
        print("==> compacting every day", flush=True)
        results["compactions"] = []
        for day in range(args.days):
            answer = service.admin("/internal/compactions/clicks-minute",
                                   {"day": (FIRST_DAY + timedelta(days=day)).date().isoformat()})
            results["compactions"].append(answer)
            print(f"    {answer['day']}: {answer['minute_rows']:,} minute rows in {answer['seconds']}s", flush=True)

    # The keys must exist before the scenarios are built: issue them on a first, short-lived start.
    bootstrap = Service(path, port, log, args.service_threads, token, 0)
    try:
        issue_keys(bootstrap)
    finally:
        bootstrap.stop()
    plan = scenarios(picked, keys, end, args.days, args.extra_days)
    # The targets' scenarios: at full scale ad_minute_30d_hot and advertiser_day_90d, else the longest ranges built.
    targets = [[n for n in plan if n.startswith("ad_minute_") and n.endswith("d_hot")][-1],
               next(n for n in plan if n.startswith("advertiser_day_") and n.endswith("d"))]
    if args.layout == "arrival" and not args.reuse:
        phase("arrival_order_uncached", 0, targets, 1, args.before_seconds, 20)
        phase("compacted_uncached", 0, list(plan), args.clients, args.seconds, None, before=compact)
    else:
        phase("compacted_uncached", 0, list(plan), args.clients, args.seconds, None)
    phase("compacted_cached", None, list(plan), args.clients, args.seconds, None)
    # Throughput: the two targets again with 1, 2, 4 and 8 clients (cache on, loads running).
    sweep: list = []
    for clients in (1, 2, 4, 8):
        phase(f"sweep_{clients}", None, targets, clients, args.seconds, None)
        sweep += results.pop(f"sweep_{clients}")
        results.setdefault("sweep_loads", []).append(results.pop(f"sweep_{clients}_loads"))
    results["sweep"] = sweep
    record["results"] = results
    size = path.stat().st_size
    record["disk"] = {"file_bytes_after": size, "bytes_per_day_of_minute_data": int(size / max(args.days, 1)),
                      "note": "the file holds every table; the extra days add only day rows"}
    record["machine"]["loadavg_at_end"] = os.getloadavg()
    scale = {"ads": args.ads / DESIGN["ads"], "clicks_per_day": args.clicks_per_day / DESIGN["clicks_per_day"],
             "days": args.days / DESIGN["days"]}
    record["scale_of_design"] = {k: round(v, 4) for k, v in scale.items()}
    record["verdict"] = {
        name: {"p99_ms": next(r.get("p99_ms") for r in results["compacted_cached"] if r["scenario"] == name),
               "target_p99_ms": target, "max_rps": max(r["rps"] for r in results["sweep"] if r["scenario"] == name),
               "full_scale_scenario": full, "this_run_is_a_fraction": name != full or min(scale.values()) < 1}
        for name, (full, target) in zip(targets, TARGETS_MS.items())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"query-{stamp}.json"
    target.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print_table(record)
    print(f"==> wrote {target}")
    return 0


def print_table(record: dict) -> None:
    print(f"\n{'scenario':32s} {'phase':23s} cli    req    rps   first    p50    p90    p99    max errors")
    phases = ("arrival_order_uncached", "compacted_uncached", "compacted_cached", "sweep")
    for phase in phases:
        for r in record["results"].get(phase, []):
            print(f"{r['scenario']:32s} {phase:23s} {r['clients']:3d} {r['requests']:6d} {r['rps']:6.1f} "
                  f"{r.get('first_ms', '-'):>7} "
                  f"{r.get('p50_ms', '-'):>6} {r.get('p90_ms', '-'):>6} {r.get('p99_ms', '-'):>6} "
                  f"{r.get('max_ms', '-'):>6} {r['errors']:7d}")
    for phase in phases:
        if f"{phase}_loads" in record["results"]:
            print(f"loads during {phase}: {record['results'][f'{phase}_loads']}")
    for name, verdict in record["verdict"].items():
        print(f"target {verdict['full_scale_scenario']}: p99 < {verdict['target_p99_ms']} ms; {name} measured "
              f"p99 {verdict['p99_ms']} ms, up to {verdict['max_rps']} requests/s"
              + (f" (a fraction of the design's scale: {record.get('scale_of_design')})"
                 if verdict["this_run_is_a_fraction"] else ""))
    build = record["build"]
    if "seconds" in build:
        print(f"build: {build['seconds']}  rows: {build['rows']}")
    print(f"disk: {record['disk']['file_bytes_after'] / 2**30:.2f} GiB "
          f"({record['disk']['bytes_per_day_of_minute_data'] / 2**20:.0f} MiB per day of minute data)")


if __name__ == "__main__":
    sys.exit(main())
