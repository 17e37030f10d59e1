"""Benchmark /click next to a bare Flask 302 served with the same gunicorn settings.

    python -m infra.bench.bench_click [--seconds 30] [--concurrency 32] [--fixed-rate 1000]

Three timed phases, each after a short warm-up:
  1. bare:  a Flask app that only redirects (infra/bench/bare_app.py), started here under gunicorn
            with click_api/gunicorn_conf.py on a free port, at full speed;
  2. max:   the running click service (`make up`), valid clicks of distinct impressions, full speed;
  3. fixed: the click service at a fixed rate (1,000 clicks/s), for its latency.
The load generator runs on the same two cores as the server, Cassandra and Redis: the CPU each
of them used is measured per phase and printed. Results go to docs/benchmarks/click-<UTC>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

from click_api import config, loadgen
from infra.bench.machine import CLK_TCK, machine_busy_seconds, machine_info, services_status

REPO = Path(__file__).resolve().parents[2]
SHARED_CORES_NOTE = (
    "The load generator, the server, Cassandra and Redis share the same cores: the client's CPU "
    "(column 'loadgen') is taken from the server, so these are lower bounds of what the server "
    "does on cores of its own."
)
TARGETS = {
    "ours_vs_bare_min": 0.70,
    "ours_min_per_s": 2000,
    "fixed_p99_max_ms": 20.0,
}


# ---------------------------------------------------------------- machine and processes


def pid_from_file(name: str) -> int | None:
    path = Path(os.environ.get("STATE_DIR", REPO / ".local")) / "run" / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (gunicorn's master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


class CpuMeter:
    """CPU used by each group of processes between start() and stop(), in % of one core."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups

    def start(self) -> None:
        self.began = time.monotonic()
        self.before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self.machine_before = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.began
        used = {name: cpu_seconds(pids) - self.before[name] for name, pids in self.groups.items()}
        used["machine"] = machine_busy_seconds() - self.machine_before
        used["other"] = max(0.0, used["machine"] - sum(v for k, v in used.items() if k != "machine"))
        return {name: round(100 * seconds / wall, 1) for name, seconds in used.items()}


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_json(url)
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited during start-up (code {process.returncode})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.3)


class BareServer:
    """The bare Flask 302 app under gunicorn with click_api/gunicorn_conf.py, on its own port."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> BareServer:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        self.process = subprocess.Popen(
            [gunicorn, "-c", "click_api/gunicorn_conf.py", "--bind", f"127.0.0.1:{self.port}",
             "infra.bench.bare_app:create_app()"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            wait_healthy(f"http://127.0.0.1:{self.port}/healthz", 60, self.process)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the master and its workers
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


# ---------------------------------------------------------------- phases


def run_phase(name: str, plan, options: loadgen.RunOptions, meter: CpuMeter, warmup_plan, warmup_s: float) -> dict:
    """Warm up (not measured), then run ``plan`` with ``options`` and measure it."""
    print(f"==> {name}: {warmup_s:g}s warm-up", flush=True)
    warm = loadgen.run_plan(warmup_plan, loadgen.RunOptions(
        options.host, options.port, options.concurrency, options.rate, warmup_s, options.timeout, 0))
    warm_errors = sum(1 for c in warm.clicks if not c.as_expected)
    pace = f"{options.rate:g}/s" if options.rate else "full speed"
    print(f"==> {name}: {options.duration:g}s at {pace}, {options.concurrency} connections", flush=True)
    meter.start()
    result = loadgen.run_plan(plan, options, out=lambda line: print("    " + line, flush=True))
    cpu = meter.stop()
    summary = loadgen.summarize(result.clicks, result.elapsed_s)
    return {
        "name": name,
        "port": options.port,
        "concurrency": options.concurrency,
        "target_rate_per_s": options.rate,
        "duration_s": options.duration,
        "elapsed_s": summary["elapsed_s"],
        "sent": summary["clicks_sent"],
        "answered": summary["answered"],
        "answered_per_s": summary["answered_per_s"],
        "errors": summary["errors"],
        "unexpected_status": summary["unexpected_status"],
        "by_http_status": summary["by_http_status"],
        "latency_ms": summary["latency_ms"],
        "schedule_lag_ms": summary["schedule_lag_ms"],
        "plan_exhausted": result.plan_exhausted,
        "warmup_clicks": len(warm.clicks),
        "warmup_errors": warm_errors,
        "cpu_percent_of_one_core": cpu,
        "http_loop": result.loop,
    }


def check_targets(bare: dict, ours: dict, fixed: dict) -> dict[str, dict]:
    ratio = ours["answered_per_s"] / bare["answered_per_s"] if bare["answered_per_s"] else 0.0
    failures = sum(p["errors"] + p["unexpected_status"] for p in (bare, ours, fixed))
    held = fixed["answered_per_s"] >= 0.95 * fixed["target_rate_per_s"]
    return {
        "ours_vs_bare_throughput": {"value": round(ratio, 3), "target": f">= {TARGETS['ours_vs_bare_min']}",
                                    "met": ratio >= TARGETS["ours_vs_bare_min"]},
        "ours_valid_clicks_per_s": {"value": ours["answered_per_s"], "target": f">= {TARGETS['ours_min_per_s']}",
                                    "met": ours["answered_per_s"] >= TARGETS["ours_min_per_s"]},
        "p99_ms_at_fixed_rate": {"value": fixed["latency_ms"]["p99"], "target": f"< {TARGETS['fixed_p99_max_ms']}",
                                 "rate_held": held,
                                 "met": held and (fixed["latency_ms"]["p99"] or 1e9) < TARGETS["fixed_p99_max_ms"]},
        "errors": {"value": failures, "target": "== 0", "met": failures == 0},
    }


def print_table(phases: list[dict], targets: dict[str, dict]) -> None:
    header = (f"{'phase':<34}{'clicks/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
              "   CPU % of one core: loadgen / server / cassandra / redis / other")
    print("\n" + header)
    print("-" * len(header))
    for p in phases:
        lat, cpu = p["latency_ms"], p["cpu_percent_of_one_core"]
        print(
            f"{p['name']:<34}{p['answered_per_s']:>10.0f}{_num(lat['p50'])}{_num(lat['p90'])}{_num(lat['p99'])}"
            f"{_num(lat['max'])}{p['errors'] + p['unexpected_status']:>8}   "
            f"{cpu['loadgen']:.0f} / {cpu['server']:.0f} / {cpu.get('cassandra', 0):.0f} / "
            f"{cpu.get('redis', 0):.0f} / {cpu['other']:.0f}"
        )
    for p in phases:
        rate = p["target_rate_per_s"]
        if rate and p["answered_per_s"] < 0.95 * rate:
            print(f"  {p['name']}: the rate was not held ({p['answered_per_s']:.0f}/s answered, requests left up to "
                  f"{p['schedule_lag_ms']['max'] / 1000:.1f}s late): its latencies are those of an overloaded service")
    print("\ntargets:")
    for name, t in targets.items():
        print(f"  {name:<28} {t['value']!s:>10}  (target {t['target']})  {'met' if t['met'] else 'MISSED'}")
    print("\nnote: " + SHARED_CORES_NOTE)


def _num(value: float | None) -> str:
    return f"{'-':>9}" if value is None else f"{value:>9.2f}"


def gunicorn_settings() -> dict:
    conf = runpy.run_path(str(REPO / "click_api" / "gunicorn_conf.py"))
    return {k: conf[k] for k in ("workers", "threads", "worker_class", "keepalive", "backlog") if k in conf}


# ---------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.bench.bench_click", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of each timed phase")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up before each phase")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the load generator")
    parser.add_argument("--fixed-rate", type=float, default=1000, help="clicks/s of the latency phase")
    parser.add_argument("--ads", type=int, default=1000, help="ads registered for the run (Zipf popularity)")
    parser.add_argument("--port", type=int, help="port of the click service (default $CLICK_API_PORT)")
    parser.add_argument("--server-pid", type=int, help="gunicorn master of that service (default: from its pid file)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    args = parser.parse_args(argv)
    if "CLICK_API_PORT" not in os.environ:
        print("error: CLICK_API_PORT is not set: run `make bench-click` (it sources infra/env.sh)", file=sys.stderr)
        return 2
    cfg = config.from_env(os.environ)
    port = args.port or int(os.environ["CLICK_API_PORT"])
    started = datetime.now(timezone.utc)
    machine = machine_info()
    services = services_status()
    click_pid = args.server_pid or (pid_from_file("click_api") if port == int(os.environ["CLICK_API_PORT"]) else None)
    try:
        ready = get_json(f"http://127.0.0.1:{port}/readyz")
    except OSError as error:
        print(f"error: the click service does not answer on port {port} ({error}); start it with `make up`",
              file=sys.stderr)
        return 2
    if click_pid is None or not all(v == "ok" for v in ready["checks"].values()):
        print(f"error: the click service (pid {click_pid}), Cassandra and Redis must be up (readyz: {ready}); "
              "run `make up`", file=sys.stderr)
        return 2

    run_id = f"{started:%y%m%d%H%M%S}{uuid.uuid4().hex[:4]}"
    ads = loadgen.make_ads(run_id, args.ads, advertisers=10, prefix="bench")
    print(f"==> registering {len(ads)} ads in Cassandra (run {run_id})", flush=True)
    from click_api.storage import CassandraStore, connect

    cluster = connect(cfg["CASSANDRA_HOSTS"], cfg["CASSANDRA_PORT"], cfg["CASSANDRA_LOCAL_DC"])
    try:
        store = CassandraStore(cluster.connect(), cfg["CASSANDRA_KEYSPACE"], cfg["WINDOWS"].raw_click_ttl,
                               cfg["RAW_CLICK_SHARDS"])
        loadgen.register_ads(store, ads)
    finally:
        cluster.shutdown()

    began = time.perf_counter()

    def plan(rate: float | None, seconds: float) -> list[loadgen.PlannedClick]:
        return loadgen.mint_plan(cfg, ads, loadgen.plan_size(None, rate, seconds), loadgen.Mix(), None, 1.1)

    plans = {
        "max": plan(None, args.seconds),
        "fixed": plan(args.fixed_rate, args.seconds),
        "warm bare": plan(None, args.warmup),
        "warm max": plan(None, args.warmup),
        "warm fixed": plan(args.fixed_rate, args.warmup),
    }
    print(f"==> minted {sum(map(len, plans.values()))} distinct impressions in {time.perf_counter() - began:.1f}s "
          "(before any timed phase)", flush=True)
    print("note: " + SHARED_CORES_NOTE, flush=True)

    groups = {"loadgen": [os.getpid()], "cassandra": [pid_from_file("cassandra") or -1],
              "redis": [pid_from_file("redis") or -1]}
    phases = []
    bare_port = free_port()
    with BareServer(bare_port, Path(os.environ.get("LOG_DIR", REPO / ".local" / "log")) / "bench_bare.log") as bare:
        meter = CpuMeter({**groups, "server": bare.pids})
        # The bare app stores nothing, so it is sent the very requests /click gets next.
        phases.append(run_phase("bare Flask 302, full speed", plans["max"],
                                loadgen.RunOptions("127.0.0.1", bare_port, args.concurrency, None, args.seconds,
                                                   progress_every=0 if args.quiet else 1.0),
                                meter, plans["warm bare"], args.warmup))
    meter = CpuMeter({**groups, "server": process_tree(click_pid)})
    phases.append(run_phase("/click, full speed", plans["max"],
                            loadgen.RunOptions("127.0.0.1", port, args.concurrency, None, args.seconds,
                                               progress_every=0 if args.quiet else 1.0),
                            meter, plans["warm max"], args.warmup))
    phases.append(run_phase(f"/click, fixed {args.fixed_rate:g}/s", plans["fixed"],
                            loadgen.RunOptions("127.0.0.1", port, args.concurrency, args.fixed_rate, args.seconds,
                                               progress_every=0 if args.quiet else 1.0),
                            meter, plans["warm fixed"], args.warmup))

    targets = check_targets(*phases)
    command = "python -m infra.bench.bench_click " + " ".join(argv if argv is not None else sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        command = f"make bench-click SECONDS={args.seconds:g}  ->  {command}"
    print_table(phases, targets)
    report = {
        "benchmark": "click",
        "started_at": started.isoformat(timespec="seconds"),
        "command": command,
        "seconds_per_phase": args.seconds,
        "warmup_seconds": args.warmup,
        "machine": {**machine, "loadavg_at_end": os.getloadavg()},
        "services_running": services,
        "click_service": {"port": port, "pid": click_pid, "worker_pids": process_tree(click_pid)[1:],
                          "readyz": ready},
        "gunicorn": gunicorn_settings(),
        "load_generator": {
            "process": "one Python process, asyncio, keep-alive HTTP/1.1 (click_api/loadgen.py)",
            "same_machine": True,
            "ads": args.ads,
            "ad_popularity": "Zipf s=1.1",
            "clicks": "valid, distinct impressions, browser user agents",
        },
        "note": SHARED_CORES_NOTE,
        "phases": phases,
        "targets": targets,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"click-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
