"""A local durable spool for clicks Cassandra could not take, and its replayer.

Each worker process appends to its own file, one JSON line per click, and fsyncs before the
append returns, so a spooled click survives a crash of the process or the machine. The
replayer seals a file (atomic rename), writes every line to Cassandra (idempotent: the click
ID is in the key) and deletes the file only when all its lines are stored.

A file's writer, and a replayer while it works on a file, hold an exclusive lock on it
(``flock``): the kernel drops the lock when the process dies, so an unlocked active or claimed
file is an orphan to seal or give back. Process IDs are not used for that: a restarted worker
may get the dead one's (containers do). Each Spool's names carry a random token, so no two
processes ever write, seal or claim under the same name.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from click_api.events import Click

log = logging.getLogger(__name__)

ACTIVE_SUFFIX = ".active.jsonl"
SEALED_SUFFIX = ".sealed.jsonl"
NEW_SUFFIX = ".new"
CLAIM_MARK = ".replaying-"


def encode(click: Click) -> str:
    record = click.as_dict()
    for field in ("clicked_at", "issued_at"):
        record[field] = record[field].isoformat()
    return json.dumps(record, separators=(",", ":"))


def decode(line: str) -> Click:
    record = json.loads(line)
    for field in ("clicked_at", "issued_at"):
        record[field] = datetime.fromisoformat(record[field])
    return Click(**record)


class Spool:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._file = None
        self._seq = 0

    @property
    def active_path(self) -> Path:
        return self.directory / f"{self.owner}-{self._seq}{ACTIVE_SUFFIX}"

    def append(self, click: Click) -> None:
        """Write one click and fsync it; raise OSError if it could not be made durable."""
        line = (encode(click) + "\n").encode()
        with self._lock:
            if self._file is None:
                self._file = self._open_active()
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def _open_active(self):
        """A new active file, locked under a name no replayer looks at, then renamed: a replayer
        never sees it unlocked, so never seals it from under its writer."""
        fresh = self.active_path.with_name(self.active_path.name + NEW_SUFFIX)
        handle = open(fresh, "xb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            fresh.rename(self.active_path)
            _fsync_dir(self.directory)
        except OSError:
            handle.close()
            fresh.unlink(missing_ok=True)
            self._seq += 1  # the next attempt takes new names, whatever this one left
            raise
        return handle

    def seal(self) -> None:
        """Close the active file and mark it ready for replay; the next append opens a new one."""
        with self._lock:
            if self._file is None:
                return
            path = self.active_path
            path.rename(path.with_name(path.name.replace(ACTIVE_SUFFIX, SEALED_SUFFIX)))  # still locked
            self._file.close()
            self._file = None
            self._seq += 1
            _fsync_dir(self.directory)

    def depth(self) -> int:
        """Clicks waiting in this directory (all workers' files)."""
        total = 0
        for path in self.directory.glob("*.jsonl"):
            try:
                with open(path, "rb") as handle:
                    total += sum(1 for _ in handle)
            except FileNotFoundError:
                continue
        return total

    def replay(self, save: Callable[[Click], None]) -> int:
        """Seal this process's file, store every sealed click, delete what was stored; return the count."""
        self.seal()
        self._seal_orphans()
        stored = 0
        for path in sorted(self.directory.glob(f"*{SEALED_SUFFIX}")):
            claimed = path.with_name(path.name + CLAIM_MARK + self.owner)
            try:
                lock = open(path, "rb")
            except FileNotFoundError:  # another replayer took it
                continue
            with lock:
                # Locked before it is claimed, and until it is gone: no claim is ever seen unlocked.
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.rename(claimed)  # only one replayer wins a file
                except (BlockingIOError, FileNotFoundError):
                    continue
                try:
                    for click in _read(claimed):
                        save(click)
                        stored += 1
                except Exception:
                    claimed.rename(path)  # give it back; it is replayed again later
                    raise
                claimed.unlink()
            log.info("replayed spool file %s", path.name)
        return stored

    def _seal_orphans(self) -> None:
        """Seal the active files, and give back the claims, that no live process on this host holds."""
        host = socket.gethostname()
        for path in self.directory.glob(f"{host}-*{ACTIVE_SUFFIX}"):
            if path != self.active_path and _orphaned(path):
                _rename_if_there(path, path.with_name(path.name.replace(ACTIVE_SUFFIX, SEALED_SUFFIX)),
                                 "its worker is gone")
        for path in self.directory.glob(f"*{SEALED_SUFFIX}{CLAIM_MARK}{host}-*"):
            if _orphaned(path):
                _rename_if_there(path, path.with_name(path.name.split(CLAIM_MARK, 1)[0]), "its replayer is gone")


def _rename_if_there(path: Path, target: Path, why: str) -> None:
    """Rename an orphan, unless another replayer got to it first."""
    try:
        path.rename(target)
    except FileNotFoundError:
        return
    log.warning("%s -> %s: %s", path.name, target.name, why)


def _read(path: Path) -> Iterator[Click]:
    """The clicks of a spool file. A line that cannot be decoded is kept aside in rejected.lines."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n"):
                # A torn last line: the append never returned, so that click was answered 503.
                log.warning("ignoring torn line %d of %s", number, path.name)
                continue
            try:
                yield decode(line)
            except (ValueError, TypeError, KeyError) as error:
                log.error("spool line %d of %s is unreadable (%s); kept in rejected.lines", number, path.name, error)
                with open(path.parent / "rejected.lines", "a", encoding="utf-8") as rejected:
                    rejected.write(line)
                    rejected.flush()
                    os.fsync(rejected.fileno())


def _orphaned(path: Path) -> bool:
    """Whether no process holds the file's lock: its writer or replayer died. False if it is gone."""
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True  # closing the handle lets go of the lock at once
    except (BlockingIOError, FileNotFoundError):
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
