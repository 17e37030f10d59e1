import json
import os
import socket
from datetime import datetime, timedelta, timezone

import pytest

from click_api.events import Click
from click_api.spool import ACTIVE_SUFFIX, SEALED_SUFFIX, Spool, decode, encode

CLICKED_AT = datetime(2024, 5, 1, 12, 0, 0, 123_000, tzinfo=timezone.utc)


def make_click(n: int, **changes) -> Click:
    fields = {
        "click_id": f"{n:032x}",
        "impression_id": f"{n + 1000:032x}",
        "ad_id": "ad-1",
        "advertiser_id": "adv-1",
        "clicked_at": CLICKED_AT + timedelta(seconds=n),
        "issued_at": datetime(2024, 5, 1, 11, 59, 30, tzinfo=timezone.utc),
        "user_id": "u-1",
        "fingerprint": "f" * 32,
        "referrer": "https://news.example/",
        "status": "valid",
        "reason": None,
    }
    fields.update(changes)
    return Click(**fields)


class Saved:
    """A save function that records clicks by ID, like Cassandra's keyed writes."""

    def __init__(self, fail_on: str | None = None):
        self.clicks: dict[str, Click] = {}
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, click: Click) -> None:
        self.calls += 1
        if click.click_id == self.fail_on:
            raise ConnectionError("cassandra is down")
        self.clicks[click.click_id] = click


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool")


def files(spool: Spool) -> list[str]:
    return sorted(path.name for path in spool.directory.iterdir())


def test_encode_then_decode_gives_back_the_click():
    click = make_click(1)

    assert decode(encode(click)) == click


def test_encode_then_decode_keeps_absent_fields_absent():
    click = make_click(2, user_id=None, referrer=None, status="invalid", reason="bot_user_agent")

    assert decode(encode(click)) == click


def test_encoded_click_is_one_json_line_with_iso_timestamps():
    line = encode(make_click(1))

    assert "\n" not in line
    assert json.loads(line)["clicked_at"] == "2024-05-01T12:00:01.123000+00:00"


def test_append_writes_one_line_per_click_in_an_active_file(spool):
    spool.append(make_click(1))
    spool.append(make_click(2))

    [name] = files(spool)
    assert name.endswith(ACTIVE_SUFFIX)
    lines = (spool.directory / name).read_text().splitlines()
    assert [decode(line) for line in lines] == [make_click(1), make_click(2)]


def test_depth_counts_spooled_clicks(spool):
    for n in range(3):
        spool.append(make_click(n))

    assert spool.depth() == 3


def test_replay_stores_every_click_once_and_empties_the_spool(spool):
    clicks = [make_click(n) for n in range(5)]
    for click in clicks:
        spool.append(click)
    saved = Saved()

    count = spool.replay(saved)

    assert count == 5
    assert saved.calls == 5
    assert list(saved.clicks.values()) == clicks
    assert spool.depth() == 0
    assert files(spool) == []


def test_second_replay_stores_nothing(spool):
    spool.append(make_click(1))
    spool.replay(Saved())
    saved = Saved()

    assert spool.replay(saved) == 0
    assert saved.calls == 0


def test_appends_after_a_replay_are_replayed_next_time(spool):
    spool.append(make_click(1))
    spool.replay(Saved())
    spool.append(make_click(2))
    saved = Saved()

    assert spool.replay(saved) == 1
    assert list(saved.clicks) == [make_click(2).click_id]


def test_torn_last_line_is_skipped(spool):
    sealed = spool.directory / f"other-host-1-0{SEALED_SUFFIX}"
    sealed.write_text(encode(make_click(1)) + "\n" + encode(make_click(2))[:40])
    saved = Saved()

    count = spool.replay(saved)

    assert count == 1
    assert list(saved.clicks.values()) == [make_click(1)]
    assert not sealed.exists()


def test_failed_save_keeps_the_file_for_a_later_replay(spool):
    clicks = [make_click(n) for n in range(3)]
    for click in clicks:
        spool.append(click)

    with pytest.raises(ConnectionError):
        spool.replay(Saved(fail_on=clicks[1].click_id))

    [name] = files(spool)
    assert name.endswith(SEALED_SUFFIX)
    assert spool.depth() == 3
    saved = Saved()
    assert spool.replay(saved) == 3
    assert list(saved.clicks.values()) == clicks
    assert files(spool) == []


def test_failure_in_one_file_keeps_earlier_files_replayed(spool):
    first, second = make_click(1), make_click(2)
    spool.append(first)
    spool.seal()
    spool.append(second)

    failing = Saved(fail_on=second.click_id)

    with pytest.raises(ConnectionError):
        spool.replay(failing)

    assert list(failing.clicks.values()) == [first]
    saved = Saved()
    assert spool.replay(saved) == 1
    assert list(saved.clicks.values()) == [second]


def test_orphaned_active_file_of_a_dead_worker_is_sealed_and_replayed(spool):
    orphan = spool.directory / f"{socket.gethostname()}-999999-0{ACTIVE_SUFFIX}"
    orphan.write_text(encode(make_click(7)) + "\n")
    saved = Saved()

    assert spool.replay(saved) == 1
    assert list(saved.clicks.values()) == [make_click(7)]
    assert files(spool) == []


def test_file_claimed_by_a_dead_replayer_is_given_back(spool):
    claimed = spool.directory / f"h-1-0{SEALED_SUFFIX}.replaying-{socket.gethostname()}-999999"
    claimed.write_text(encode(make_click(3)) + "\n")
    saved = Saved()

    assert spool.replay(saved) == 1
    assert list(saved.clicks.values()) == [make_click(3)]
    assert files(spool) == []


def test_active_file_of_a_live_writer_is_left_alone(spool):
    writer = Spool(spool.directory)  # another worker, still running: it holds its file's lock
    writer.append(make_click(4))
    saved = Saved()

    assert spool.replay(saved) == 0
    assert files(spool) == [writer.active_path.name]


def test_a_worker_restarted_with_the_dead_ones_pid_loses_none_of_its_clicks(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: 8)  # a container restart hands out the same pid
    dead = Spool(tmp_path / "spool")
    for n in range(3):
        dead.append(make_click(n))
    with pytest.raises(ConnectionError):
        dead.replay(Saved(fail_on=make_click(0).click_id))  # sealed, then given back unreplayed
    restarted = Spool(tmp_path / "spool")
    restarted.append(make_click(10))
    restarted.seal()
    saved = Saved()

    assert restarted.replay(saved) == 4
    assert set(saved.clicks) == {make_click(n).click_id for n in (0, 1, 2, 10)}


def test_a_torn_line_of_a_crashed_worker_never_swallows_another_click(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: 8)
    crashed = Spool(tmp_path / "spool")
    crashed.append(make_click(0))
    crashed._file.write(b'{"click_id":"00000')  # the append it died in: never answered
    crashed._file.flush()
    crashed._file.close()  # the process is gone: so is its lock
    restarted = Spool(tmp_path / "spool")
    restarted.append(make_click(1))
    saved = Saved()

    assert restarted.replay(saved) == 2
    assert set(saved.clicks) == {make_click(0).click_id, make_click(1).click_id}
    assert not (restarted.directory / "rejected.lines").exists()


def test_corrupt_line_in_one_file_does_not_block_the_other_files(spool):
    (spool.directory / f"a-1-0{SEALED_SUFFIX}").write_text('{"click_id": "cut\n')
    (spool.directory / f"b-1-0{SEALED_SUFFIX}").write_text(encode(make_click(1)) + "\n")
    saved = Saved()

    spool.replay(saved)

    assert list(saved.clicks.values()) == [make_click(1)]


def test_the_replayer_reports_the_spool_depth_while_cassandra_is_down_and_drains_it_when_back(tmp_path):
    from prometheus_client import REGISTRY

    from click_api.wiring import Services, replay_once
    from tests.fakes import FakeStore

    spool = Spool(str(tmp_path))
    for n in range(3):
        spool.append(make_click(n))
    store = FakeStore()
    store.down = True
    services = Services(store=store, deduper=None, spool=spool, clicks=None)

    with pytest.raises(ConnectionError):
        replay_once(services)
    assert REGISTRY.get_sample_value("clickagg_spool_depth") == 3

    store.down = False
    assert replay_once(services) == 3
    assert REGISTRY.get_sample_value("clickagg_spool_depth") == 0
    assert sorted(store.clicks) == [make_click(n).click_id for n in range(3)]


def test_clicks_replayed_after_the_rollups_passed_their_minute_are_marked_counted_and_logged_by_hour(tmp_path, caplog):
    from prometheus_client import REGISTRY

    from click_api.windows import Windows
    from click_api.wiring import Services, replay_once
    from tests.fakes import FakeStore

    spool = Spool(str(tmp_path))
    for n in (0, 1, 2):  # 12:00:00 to 12:00:02 on 2024-05-01
        spool.append(make_click(n))
    spool.append(make_click(3, clicked_at=CLICKED_AT + timedelta(minutes=55)))  # 12:55, well within the bound
    store = FakeStore()
    services = Services(store=store, deduper=None, spool=spool, clicks=None)
    before = REGISTRY.get_sample_value("clickagg_clicks_replayed_late_total") or 0
    now = CLICKED_AT.replace(microsecond=0) + timedelta(minutes=58)  # 12:58: 680 s after 12:00 has long passed

    assert replay_once(services, Windows(), clock=lambda: now) == 4

    [(hour, passes)] = store.late.items()
    assert hour == CLICKED_AT.replace(minute=0, second=0, microsecond=0) and list(passes.values()) == [now]
    assert REGISTRY.get_sample_value("clickagg_clicks_replayed_late_total") - before == 3
    [line] = [r.getMessage() for r in caplog.records if "replayed clicks of the hour" in r.getMessage()]
    assert line.startswith("3 replayed clicks of the hour 2024-05-01T12:00Z")
    assert "the next run of reconcile_clicks_hourly counts them" in line
    assert line.endswith("the hours after it in the duplicate horizon, up to 2024-05-01T15:00Z")


def test_a_late_click_whose_hour_cannot_be_marked_stays_in_the_spool(tmp_path):
    from click_api.windows import Windows
    from click_api.wiring import Services, replay_once
    from tests.fakes import FakeStore

    class MarkFails(FakeStore):
        def mark_late_hour(self, hour, replay_id, replayed_at):
            raise ConnectionError("cassandra timed out")

    spool = Spool(str(tmp_path))
    spool.append(make_click(0))
    services = Services(store=MarkFails(), deduper=None, spool=spool, clicks=None)

    with pytest.raises(ConnectionError):
        replay_once(services, Windows(), clock=lambda: CLICKED_AT + timedelta(hours=1))

    assert spool.depth() == 1
    store = FakeStore()
    assert replay_once(Services(store=store, deduper=None, spool=spool, clicks=None), Windows(),
                       clock=lambda: CLICKED_AT + timedelta(hours=1)) == 1
    assert list(store.late) == [CLICKED_AT.replace(minute=0, second=0, microsecond=0)]


def test_a_failed_file_creation_leaves_the_spool_usable(spool, monkeypatch):
    import errno

    from click_api import spool as spool_module

    real = spool_module._fsync_dir
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def fsync_dir_once_failing(directory):
        if failures:
            raise failures.pop()
        real(directory)

    monkeypatch.setattr(spool_module, "_fsync_dir", fsync_dir_once_failing)
    with pytest.raises(OSError):
        spool.append(make_click(1))  # answered 503: nothing was promised
    spool.append(make_click(2))
    saved = Saved()

    assert spool.replay(saved) == 1
    assert list(saved.clicks) == [make_click(2).click_id]
    assert not [name for name in files(spool) if name.endswith(".new")]


def test_a_file_another_replayer_holds_is_skipped_until_it_lets_go(spool):
    import fcntl

    sealed = spool.directory / f"h-1-x-0{SEALED_SUFFIX}"
    sealed.write_text(encode(make_click(5)) + "\n")
    other = open(sealed, "rb")
    fcntl.flock(other, fcntl.LOCK_EX)  # another worker's replayer, about to claim it

    assert spool.replay(Saved()) == 0
    other.close()
    saved = Saved()
    assert spool.replay(saved) == 1
    assert list(saved.clicks) == [make_click(5).click_id]
