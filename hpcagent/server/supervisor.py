"""``hpcagent server --workers N``: N server processes over one listening socket and one database.

The parent (:class:`Supervisor`) has prepared the data dir once (keys, token secret, schema made
or migrated: :func:`~hpcagent.server.runner.prepare_data_dir`) and bound the socket; it starts
listening before any worker exists (a client that connects during the start waits in the
backlog, it is never refused), then forks N workers. Each worker is a whole server
(:func:`~hpcagent.server.runner.open_app` + uvicorn) accepting from the shared socket: the
kernel gives a new connection to whichever worker takes it first, so an idle worker takes more.

What the workers share is in SQLite, never in memory: the store (WAL; every writing request is
one ``BEGIN IMMEDIATE`` transaction, so SQLite lets one writer in at a time and a pop, a status
change or a pop id is exactly-once across processes), sign-in failures and signed-out UI
sessions (:mod:`hpcagent.server.shared`), the web UI's change counters (``Store.change_counts``).
Tokens are JWTs signed with the data dir's secret and the key pairs are re-read from
``credentials.json``, so any worker verifies what another issued. Per worker: the connection
cap, the token cache, the files sweeper's turn (each due deletion is taken by one worker).

The parent starts the companions (``--services-agent``) once, after forking. A worker that ends
by itself is started again (one that exits with an error within :data:`FAILED_START_S` of its
start stops the server: it cannot start). SIGTERM/SIGINT to the parent: the companions stop
first while the workers still answer, then every worker gets SIGTERM (in-flight requests
finish, their connections close), SIGKILL after :data:`STOP_WAIT_S`; the parent checkpoints
the WAL last. A second signal skips the wait for the companions. The workers ignore SIGINT: a
terminal's Ctrl-C reaches the whole process group, and the order is the parent's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from hpcagent.errors import ServerError
from hpcagent.process import fork_worker

log = logging.getLogger("hpcagent.server")

#: A worker that exits with an error status this soon after its start could not start: the
#: server stops (one killed by a signal is started again at any time).
FAILED_START_S = 5.0
#: How long the workers get to finish their requests after SIGTERM (uvicorn's graceful
#: shutdown is 30 s), before SIGKILL.
STOP_WAIT_S = 60.0
LISTEN_BACKLOG = 2048
_POLL_S = 0.5


class Supervisor:
    """Forks and watches the worker processes of one server (see the module's doc)."""

    def __init__(
        self,
        workers: int,
        sock: socket.socket,
        worker: Callable[[], int],
        companions: tuple[Callable[[], None], Callable[[], None]],
        database: Path,
    ) -> None:
        """``worker`` is a worker's whole life in the forked process (returns its exit status);
        ``companions`` starts and stops the companions; ``database`` is checkpointed last."""
        self.workers = workers
        self.sock = sock
        self.worker = worker
        self.start_companions, self.stop_companions = companions
        self.database = database
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started)
        self.signals = 0

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; raises :class:`ServerError` when a worker cannot start."""
        self.sock.listen(LISTEN_BACKLOG)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.workers):
                self._spawn(index)
            self.start_companions()
            while not self.signals:
                self._reap(restart=True)
                time.sleep(_POLL_S)
            self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_all()
            _checkpoint(self.database)
        log.info("all %d server workers stopped", self.workers)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1:  # a second signal: the workers stop now
            self._signal_all(signal.SIGTERM)

    def _spawn(self, index: int) -> None:
        pid = fork_worker(self._worker_body)
        self.children[pid] = (index, time.monotonic())
        log.debug("worker %d is process %d", index, pid)

    def _worker_body(self) -> int:
        """A worker's life in the forked process: SIGTERM ends it, SIGINT is the supervisor's."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self.worker()

    def _reap(self, *, restart: bool) -> None:
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            index, started = self.children.pop(pid, (-1, 0.0))
            if index < 0 or not restart or self.signals:  # stopping: never start again
                continue
            code = os.waitstatus_to_exitcode(status)
            if code > 0 and time.monotonic() - started < FAILED_START_S:
                raise ServerError(f"server worker {index} could not start (exit status {code})")
            log.error("server worker %d (process %d) ended with %d; starting it again",
                      index, pid, code)  # fmt: skip
            self._spawn(index)

    def _stop(self) -> None:
        """Companions first (the workers still answer them), then the workers."""
        stopper = threading.Thread(target=self.stop_companions, name="companions", daemon=True)
        stopper.start()
        while stopper.is_alive() and self.signals < 2:
            self._reap(restart=True)
            stopper.join(_POLL_S)
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while self.children and time.monotonic() < deadline:
            self._reap(restart=False)
            time.sleep(_POLL_S)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill_all(self) -> None:
        """SIGKILL the workers still alive (they did not stop in time, or the start failed)."""
        if not self.children:
            return
        log.warning("killing %d server workers that did not stop", len(self.children))
        self._signal_all(signal.SIGTERM)
        time.sleep(1.0)
        self._signal_all(signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def _checkpoint(path: Path) -> None:
    """Copy the WAL into the database and truncate it, once every worker is gone."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("final WAL checkpoint failed: %s", exc)
