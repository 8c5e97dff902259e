"""One long-running process per state folder: its lock, pid file and log file, and its signals.

``hpcagent-slurm`` and ``hpcagent daemon`` each keep a state folder (ledger, scripts, job
config). :func:`single_instance` is what both do around their loop: take the folder's lock
(a second process on the same folder is refused, so two never pull for one ledger), write
the pid file, turn SIGTERM/SIGINT into a stop event, and undo all three on the way out.
:class:`InstanceFiles` is the one place that names those files; the CLI's ``--detached``,
``--stop`` and ``--status`` read the same names.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hpcagent.errors import UsageError


@dataclass(frozen=True)
class InstanceFiles:
    """The names of a long-running command's files in its state folder."""

    pid: str
    log: str
    lock: str

    def pid_in(self, state_dir: Path) -> Path:
        return state_dir / self.pid

    def log_in(self, state_dir: Path) -> Path:
        return state_dir / self.log

    def lock_in(self, state_dir: Path) -> Path:
        return state_dir / self.lock


#: ``hpcagent-slurm`` (docs/submitter.md).
SUBMITTER_FILES = InstanceFiles(
    pid="hpcagent-slurm.pid", log="hpcagent-slurm.log", lock="submitter.lock"
)
#: ``hpcagent daemon``, one state folder per worker id (docs/daemon.md).
DAEMON_FILES = InstanceFiles(pid="daemon.pid", log="daemon.log", lock="daemon.lock")


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` (None when missing or not a number)."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> list[bytes]:
    """The argv of process ``pid`` from /proc ([] when it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


@contextmanager
def single_instance(state_dir: Path, files: InstanceFiles, busy: str) -> Iterator[threading.Event]:
    """Hold ``state_dir``'s lock, pid file and SIGTERM/SIGINT for the ``with`` block.

    Yields the event that SIGTERM or SIGINT sets (the loop stops when it is set). Raises
    :class:`UsageError` with the message ``busy`` when another process holds the lock. On
    exit the signal handlers are restored, the pid file is removed if it still holds this
    process's pid (a ``--detached`` parent wrote the same pid before), and the lock released.
    Signal handlers can only be installed from the main thread; elsewhere (tests that run the
    loop in a thread) the event is only set by the caller.
    """
    lock = FileLock(str(files.lock_in(state_dir)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(busy) from None
    pid_file = files.pid_in(state_dir)
    stop = threading.Event()
    old: dict[signal.Signals, Any] = {}
    try:
        pid_file.write_text(f"{os.getpid()}\n")

        def handler(signum: int, _frame: object) -> None:
            stop.set()

        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if read_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)
        lock.release()
