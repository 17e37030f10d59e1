"""Dump each closed hour of raw clicks to S3, recompute it from the dump, and repair the warehouse."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

from click_api.windows import Windows
from spark_jobs.session import parse_utc, submit_options
from warehouse import client as warehouse_client

REPO = Path(__file__).resolve().parents[1]
WINDOWS = Windows.from_env(os.environ)
LATENESS_S = WINDOWS.rollup_lateness
LOOKBACK_S = WINDOWS.rollup_lookback
MARGIN_S = int(os.environ.get("RECONCILE_MARGIN_S", "120"))
STAGING_DIR = os.environ.get("ROLLUP_STAGING_DIR", str(REPO / ".local" / "staging"))
START_DATE = datetime.fromisoformat(os.environ.get("RECONCILE_START_DATE", "2026-01-01T00:00:00+00:00"))
DEFAULT_DRIFT_THRESHOLD = "0.0001"
HOUR = timedelta(hours=1)
DAG_ID = "reconcile_clicks_hourly"
MISSING = "missing"  # conf "dump": from the first hour that has no dump to the last (none if all have one)
# Late hours one run takes up at most (each queues up to 1 + the horizon's hours of runs behind it);
# the others stay pending for the runs after it.
MAX_LATE_HOURS = 4

PLAN = "{{{{ ti.xcom_pull(task_ids='plan_hour')['{}'] }}}}"
DUMP = "{{{{ ti.xcom_pull(task_ids='plan_dump', key='dump')['{}'] }}}}"
log = logging.getLogger(__name__)


def _flag(value) -> bool:
    return value.strip().lower() not in ("false", "0", "no", "off") if isinstance(value, str) else bool(value)


def plan(conf: dict, data_interval_start: datetime | None, environ) -> dict:
    """The hour a run reconciles and how: ``conf`` ``hour`` (or ``start``/``end``) of a manual run,
    else the data interval; ``conf`` ``dump`` false recomputes from the existing dumps only,
    ``"missing"`` dumps only from the first to the last hour without a dump (the run's own included), and
    ``drift_threshold`` overrides RECONCILE_DRIFT_THRESHOLD for that run."""
    windows = Windows.from_env(environ)
    if conf.get("hour"):
        start = parse_utc(conf["hour"])
    elif conf.get("start") or conf.get("end"):
        if not (conf.get("start") and conf.get("end")):
            raise ValueError('a manual run\'s conf needs "hour", or both "start" and "end" (ISO-8601, UTC)')
        start = parse_utc(conf["start"])
        if parse_utc(conf["end"]) - start != HOUR:
            raise ValueError(f"a reconciliation covers one hour, not [{conf['start']}, {conf['end']})")
    elif data_interval_start is not None:
        # Through the ISO text: Airflow passes a pendulum DateTime, whose arithmetic drops the zone.
        start = parse_utc(data_interval_start.isoformat())
    else:
        raise ValueError('a run without a data interval needs "hour" in its conf')
    if start != start.replace(minute=0, second=0, microsecond=0):
        raise ValueError(f"{start.isoformat()} is not the start of an hour")
    threshold = float(conf.get("drift_threshold", environ.get("RECONCILE_DRIFT_THRESHOLD") or DEFAULT_DRIFT_THRESHOLD))
    if threshold < 0:
        raise ValueError("the drift threshold must not be negative")
    return {
        "start": start.isoformat(),
        "end": (start + HOUR).isoformat(),
        "dump": MISSING if conf.get("dump") == MISSING else _flag(conf.get("dump", True)),
        "drift_threshold": threshold,
        "horizon_s": windows.duplicate_horizon,
        "late_after_s": windows.late_after,
        "raw_click_ttl_s": windows.raw_click_ttl,
        "output": f"{STAGING_DIR}/reconcile_clicks/{start:%Y%m%dT%H}",
    }


def dump_range(window: dict, earlier: list[datetime], dumped: set[datetime], now: datetime,
               late: list[datetime] = ()) -> dict | None:
    """The hours to dump: one range ending with the run's hour (the hour itself and any earlier hour
    of the duplicate horizon without a dump), and ``also`` the ``late`` hours before that range (see
    the late_click_hours the run takes up), comma-separated; only hours Cassandra still holds in
    full. None when nothing is to be dumped, or the run's conf said not to dump."""
    if not window["dump"]:
        return None
    hour = parse_utc(window["start"])
    from click_api.windows import oldest_held

    # An hour Cassandra no longer holds whole would replace a complete dump with a partial one.
    oldest_whole = oldest_held(now, window["raw_click_ttl_s"])
    wanted = [h for h in [*earlier, hour] if h not in dumped or h == hour and window["dump"] != MISSING]
    wanted = [h for h in wanted if h >= oldest_whole]
    if not wanted:  # every hour has a dump, or is gone from Cassandra
        return None
    start, end = min(wanted), max(wanted) + HOUR
    return {"start": start.isoformat(), "end": end.isoformat(),
            "also": ",".join(h.isoformat() for h in sorted(late) if oldest_whole <= h < start)}


def hours_to_recompute(late: list[datetime], horizon_s: int) -> list[datetime]:
    """The hours to recompute once the ``late`` hours are dumped again: each late hour, and every
    hour whose duplicate horizon reaches one (its impressions may have been clicked first in the
    late clicks)."""
    from spark_jobs.raw_dumps import horizon_hours

    hours = set()
    for hour in late:
        reached = hour
        while hour in horizon_hours(reached, horizon_s) or reached == hour:
            hours.add(reached)
            reached += HOUR
    return sorted(hours)


def late_run_id(hour: datetime, replays: dict, origin: str) -> str:
    """The run that reconciles ``hour`` again for the late ``replays`` the run ``origin`` took up: the
    same ID on a retry of the task, so it triggers nothing twice, and a new one for new replays."""
    digest = hashlib.sha256(json.dumps(replays, sort_keys=True).encode()).hexdigest()[:8]
    return f"late__{hour:%Y%m%dT%H}__{digest}__{origin}"


def _hours_text(hours) -> str:
    return ", ".join(f"{h:%Y-%m-%dT%H:%MZ}" for h in sorted(hours))


@contextlib.contextmanager
def _click_store():
    """The click service's Cassandra store, for late_click_hours (written by its spool replayer)."""
    from click_api.storage import CassandraStore, connect

    cluster = connect(os.environ.get("CASSANDRA_HOST", "127.0.0.1").split(","), int(os.environ.get("CASSANDRA_PORT", "9042")),
                      os.environ.get("CASSANDRA_LOCAL_DC", "datacenter1"))
    try:
        yield CassandraStore(cluster.connect(), os.environ.get("CASSANDRA_KEYSPACE", "clickagg"), WINDOWS.raw_click_ttl,
                             int(os.environ.get("RAW_CLICK_SHARDS", "16")))
    finally:
        cluster.shutdown()


def _late_marks() -> dict[datetime, list[str]]:
    """The hours with late replayed clicks no run has taken up yet, each with its replay passes' IDs."""
    with _click_store() as store:
        return store.pending_late_hours()


def _take_late_marks(replays: dict[datetime, list[str]]) -> None:
    with _click_store() as store:
        store.take_late_hours(replays)


def _store():
    from spark_jobs import raw_dumps

    return raw_dumps.DumpStore(raw_dumps.s3_client(os.environ), os.environ.get("S3_BUCKET", "clickagg-raw"))


def record_failure(context) -> None:
    """on_failure_callback: record the failed run in meta_reconciliations, so the metric shows it."""
    ti = context["ti"]
    window = ti.xcom_pull(task_ids="plan_hour")
    if not window:
        return
    detail = f"{ti.task_id} failed: {context.get('exception')}"
    failed = Path(window["output"]) / "_FAILED"
    if failed.exists():
        detail += f" ({failed.read_text().strip()})"
    try:
        warehouse_client.call("POST", "/internal/reconciliations/clicks-hour/failed",
                              {"hour": window["start"], "detail": detail, "context": {"run_id": context.get("run_id")}}, 60)
    except Exception:  # the task has failed already; do not hide why behind a second error
        log.exception("could not record the failed reconciliation of %s", window["start"])


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # Created paused: on a machine shared with tests it must not start dumping by itself; `make run`
    # (or the UI) unpauses it, as it does the minute rollup.
    is_paused_upon_creation=True,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__
    + f"""

Each run takes one closed UTC hour (its data interval, or `{{"hour": "..."}}` in a manual run's conf):

1. **wait** until the hour closed plus the minute rollup's lookback ({LOOKBACK_S}s), its lateness
   ({LATENESS_S}s) and `RECONCILE_MARGIN_S` ({MARGIN_S}s): no minute rollup touches the hour after that;
2. **dump** the hour from Cassandra to S3 (`spark_jobs/dump_raw_clicks.py`), plus any earlier hour of the
   duplicate horizon that has no dump yet, and any earlier hour into which the click service replayed late
   spooled clicks that no run has taken up (`late_click_hours` in Cassandra; at most {MAX_LATE_HOURS} a run);
   data under a new run prefix, then
   the manifest, then the old runs are deleted. Hours older than `RAW_CLICK_TTL_S` are never dumped again
   (Cassandra no longer holds them);
3. **verify** that every dump the recompute needs has a manifest and exactly its files;
4. **recompute** the hour from the dumps (`spark_jobs/reconcile_clicks.py`), checking row count and checksum
   against the manifest, deduplicating against the earlier hours' dumps within `RECONCILE_DUPLICATE_HORIZON_S`;
   clicks stored after every minute rollup had passed are counted here in their own minute;
5. **compare and repair** in the warehouse, in one transaction: report, replace the hour, refresh its hour and
   day rows, record the report in `meta_reconciliations` (also on `GET /metrics` of the warehouse service);
6. **check the drift**: when billable clicks plus unique users differed by more than `RECONCILE_DRIFT_THRESHOLD`
   (a share of the hour's total), the hour **has already been repaired and recorded**, and this task fails
   so that someone looks at why;
7. **check the quality** of the repaired hour, as the minute rollup checks its window (keys unique and not
   null, counts possible): a violation fails the run;
8. **reconcile the late hours**: when step 2 dumped hours again for late clicks, trigger a run of this DAG for
   each of those hours and each settled hour whose duplicate horizon reaches one (`late__<hour>__...`, with
   `"dump": "missing"` and this run's drift threshold; they queue behind this run), then mark the late replays
   taken up. A run that fails before that leaves them pending for the next run.

A missing dump, or a dump that does not match its manifest, fails the run (no retry) with a message saying
which, and is recorded as `failed` in `meta_reconciliations`. A dump that retention deleted
(`DUMP_RETENTION_S`) cannot be recomputed once Cassandra's copy has expired too.
`delete_expired_dumps` deletes the dumps (manifest first, then data) that are older than `DUMP_RETENTION_S`.

Manual runs: `{{"hour": "2026-11-27T10:00:00Z"}}` (or `start`/`end` one hour apart); `"dump": false` to
recompute from the existing dumps only, `"dump": "missing"` to dump only from the first hour without a dump;
`"drift_threshold": 0.5` to override the threshold for the run.
Clearing and re-running a run replaces the same dump and finds nothing left to repair.
""",
    tags=["clickagg", "reconciliation"],
)
def reconcile_clicks_hourly():
    failure = {"on_failure_callback": record_failure}

    @task
    def plan_hour(dag_run=None, data_interval_start=None) -> dict:
        """Decide the hour, the output folder and the threshold (conf of a manual run, else the data interval)."""
        return plan(dag_run.conf or {}, data_interval_start, os.environ)

    @task.sensor(poke_interval=30, timeout=3 * 3600, mode="reschedule")
    def wait_for_hour_to_settle(window: dict) -> PokeReturnValue:
        """Wait until no minute rollup will touch the hour again."""
        ready_at = datetime.fromisoformat(window["end"]) + timedelta(seconds=LOOKBACK_S + LATENESS_S + MARGIN_S)
        return PokeReturnValue(is_done=datetime.now(timezone.utc) >= ready_at)

    @task.branch(**failure)
    def plan_dump(window: dict, ti=None, dag_run=None) -> str:
        """Choose the hours to dump (the run's hour, earlier ones without a dump, and earlier hours with
        late replayed clicks no run has taken up), or none; and the hours to reconcile after the repair."""
        from spark_jobs import raw_dumps

        store = _store()
        hour = parse_utc(window["start"])
        earlier = raw_dumps.horizon_hours(hour, window["horizon_s"])
        dumped = {h for h in [*earlier, hour] if store.read_manifest(h) is not None}
        late: dict[datetime, list[str]] = {}
        # Runs that dump only missing hours (those this task triggers) leave late replays alone, and
        # so do backfill runs: Airflow runs them beside the scheduled ones, which may be recomputing
        # the hours a new dump would replace.
        if window["dump"] is True and getattr(dag_run, "run_type", None) != "backfill":
            earlier_late = sorted((h, passes) for h, passes in _late_marks().items() if h < hour)
            late = dict(earlier_late[:MAX_LATE_HOURS])
            if later := [h for h, _ in earlier_late[MAX_LATE_HOURS:]]:
                log.warning("clicks were also replayed late into %s: left pending for the next runs", _hours_text(later))
        hours = dump_range(window, earlier, dumped, datetime.now(timezone.utc), sorted(late))
        dumping = set()
        if hours:
            dumping = set(raw_dumps.hours_between(parse_utc(hours["start"]), parse_utc(hours["end"])))
            dumping |= {parse_utc(h) for h in hours["also"].split(",") if h}
        if gone := sorted(set(late) - dumping):
            log.error("clicks were replayed late into %s, which Cassandra no longer holds whole: those hours cannot be "
                      "dumped again, and their late clicks are not counted", _hours_text(gone))
        if taken := {h: passes for h, passes in late.items() if h in dumping}:
            log.warning("clicks were replayed into %s after every minute rollup had passed them: dumping those hours "
                        "again, then reconciling them and the hours their duplicate horizon reaches", _hours_text(taken))
            # The run's own hour is recomputed after the new dumps, and an hour that has not settled yet
            # is left to its own scheduled run (a triggered one would hold the run slot until it settles).
            settled = datetime.now(timezone.utc) - HOUR - timedelta(seconds=LOOKBACK_S + LATENESS_S + MARGIN_S)
            ti.xcom_push(key="late", value={
                "hours": [h.isoformat() for h in hours_to_recompute(sorted(taken), window["horizon_s"])
                          if h != hour and h <= settled],
                "drift_threshold": window["drift_threshold"],
                "replays": {h.isoformat(): passes for h, passes in sorted(taken.items())},
            })
        if hours is None:
            log.warning("not dumping: recomputing %s from the existing dumps (conf dump=false, every hour has a dump "
                        "with dump=missing, or Cassandra no longer holds the hours in full)", window["start"])
            return "verify_dumps"
        ti.xcom_push(key="dump", value=hours)
        log.info("dumping [%s, %s)%s", hours["start"], hours["end"], f" and {hours['also']}" if hours["also"] else "")
        return "dump_raw_clicks"

    spark = {**submit_options(os.environ, s3=True), **failure}
    dump = SparkSubmitOperator(
        task_id="dump_raw_clicks",
        application=str(REPO / "spark_jobs" / "dump_raw_clicks.py"),
        application_args=["--start", DUMP.format("start"), "--end", DUMP.format("end"), "--also-hours=" + DUMP.format("also")],
        name="dump_raw_clicks",
        **spark,
    )

    @task(trigger_rule="none_failed_min_one_success", **failure)
    def verify_dumps(window: dict) -> dict:
        """Fail (without retrying) unless the hour and the earlier hours of the horizon each have a
        published dump whose files are exactly those its manifest lists."""
        from airflow.sdk.exceptions import AirflowFailException

        from spark_jobs import raw_dumps

        store = _store()
        hour = parse_utc(window["start"])
        rows = {}
        try:
            for h in [*raw_dumps.horizon_hours(hour, window["horizon_s"]), hour]:
                manifest = store.require_manifest(h)
                store.check_files(manifest)
                rows[h.isoformat()] = manifest.row_count
        except (raw_dumps.DumpMissing, raw_dumps.DumpMismatch) as error:
            log.error("reconciliation of %s cannot run: %s", window["start"], error)
            raise AirflowFailException(str(error)) from error
        return rows

    recompute = SparkSubmitOperator(
        task_id="recompute_from_dumps",
        application=str(REPO / "spark_jobs" / "reconcile_clicks.py"),
        application_args=[
            "--start", PLAN.format("start"), "--end", PLAN.format("end"), "--output", PLAN.format("output"),
            "--horizon-s", PLAN.format("horizon_s"), "--late-after-s", PLAN.format("late_after_s"),
        ],
        name="reconcile_clicks",
        **spark,
    )

    @task(**failure)
    def compare_and_repair(window: dict) -> dict:
        """Compare the warehouse's hour with the recomputation and repair it, in one transaction."""
        import shutil

        summary = json.loads((Path(window["output"]) / "summary.json").read_text())
        report = warehouse_client.call(
            "POST",
            "/internal/reconciliations/clicks-hour",
            {"hour": window["start"], "output": window["output"], "drift_threshold": window["drift_threshold"],
             "context": summary},
            timeout=1800,
        )
        shutil.rmtree(window["output"], ignore_errors=True)
        log.info("reconciliation of %s: %s: %s", window["start"], report["status"], report["detail"]["message"])
        return report

    @task
    def check_drift(report: dict) -> None:
        """Fail the run (without retrying) when the drift was over the threshold: repaired, but look at why."""
        from airflow.sdk.exceptions import AirflowFailException

        if report["status"] == "failed":
            message = f"drift over threshold in {report['hour_at']}: {report['detail']['message']}"
            log.error(message)
            raise AirflowFailException(message)

    @task
    def check_quality(window: dict) -> None:
        """Fail the run when the repaired hour has a duplicated or null key, or an impossible count."""
        warehouse_client.require_quality(window["start"], window["end"])

    @task
    def reconcile_late_hours(ti=None) -> dict | None:
        """Trigger a run of this DAG for each hour plan_dump's late hours reach (the late hours, dumped
        again by this run, and the hours their duplicate horizon reaches, this run's own hour aside):
        each recomputes its hour from the dumps as they are (dumping only an hour that has none), with
        this run's drift threshold, and queues behind this run. Then mark the late replays taken up;
        until then they stay pending, and the next run takes them up again."""
        plan = ti.xcom_pull(task_ids="plan_dump", key="late")
        if not plan:
            return None
        from infra.airflow_api import AirflowAPI

        api = AirflowAPI.from_env()
        conf = {"dump": MISSING, "drift_threshold": plan["drift_threshold"]}
        runs = [
            api.trigger_run(DAG_ID, late_run_id(parse_utc(hour), plan["replays"], ti.run_id), {"hour": hour, **conf},
                            f"late replayed clicks, taken up by {ti.run_id}")
            for hour in plan["hours"]
        ]
        _take_late_marks({parse_utc(h): passes for h, passes in plan["replays"].items()})
        log.info("reconciling again, after this run: %s", ", ".join(runs) or "no other hour")
        return {"runs": runs, **plan}

    @task
    def delete_expired_dumps() -> dict:
        """Delete the S3 dumps (manifest first, then data) of hours older than DUMP_RETENTION_S."""
        result = _store().delete_expired(datetime.now(timezone.utc), Windows.from_env(os.environ).dump_retention)
        log.info("retention: deleted %d hours before %s", len(result["hours_deleted"]), result["cutoff"])
        return result

    window = plan_hour()
    branch = plan_dump(window)
    verified = verify_dumps(window)
    wait_for_hour_to_settle(window) >> branch >> [dump, verified]
    dump >> verified >> recompute
    report = compare_and_repair(window)
    recompute >> report
    check_drift(report)
    report >> check_quality(window)
    report >> reconcile_late_hours()
    delete_expired_dumps()


reconcile_clicks_hourly()
