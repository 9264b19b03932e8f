"""One process per run directory: a lock taken before anything is written into it.

Two launches of one run (a double-submitted array task, two sweeps over one ``run_root``) would
otherwise both train, write ``last-v1.ckpt`` beside each other's files and interleave one
``metrics.csv`` and ``run.json``. The lock is ``flock`` on ``<run_dir>/.lock``: the kernel releases
it when its process ends, however it ends, so the lock of a killed run is taken over by the next
launch without any clean-up; the file records the holder (host, pid) for the message of a refusal.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from datamodules.cache import process_alive

LOCK = ".lock"

log = logging.getLogger(__name__)
_held: dict[Path, RunLock] = {}  # by resolved run directory: a process never locks itself out


class RunLockedError(ValueError):
    """The run directory is locked by another live process (the message names it)."""


class RunLock:
    """The lock of one run directory, held from :meth:`acquire` until :meth:`release` or exit.

    Args:
        run_dir: The run directory (created if needed).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunLockedError` at once naming its holder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.run_dir} is in use by {holder}: wait for that run to end, "
                "or give this one another --run_dir"
            ) from None
        previous = _read_holder(fd)
        if previous.get("pid") not in (None, os.getpid()) and not _alive(previous):
            log.warning(
                "taking over the lock of %s from %s, which has ended", self.run_dir, _describe(previous)
            )
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": datetime.now(UTC).isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays: deleting it would let two processes lock two inodes)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (starting up)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"


def _alive(holder: dict) -> bool:
    # A holder on another host cannot be checked from here; its flock was free, so it has ended.
    return holder.get("host") == socket.gethostname() and process_alive(int(holder["pid"]))


def lock_run(run_dir: str | Path) -> RunLock:
    """Lock ``run_dir`` for this process (again: the lock it already holds)."""
    key = Path(run_dir).resolve()
    if key not in _held:
        lock = RunLock(run_dir)
        lock.acquire()
        _held[key] = lock
    return _held[key]


def release_runs() -> None:
    """Release every run lock this process holds (at the end of one command)."""
    while _held:
        _held.popitem()[1].release()
