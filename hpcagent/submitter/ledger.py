"""The submitter's crash-safe ledger (SQLite, WAL, ``synchronous=FULL``).

One row per task the submitter took from a queue. States, in order::

    pulled     popped from its queue; nothing submitted yet
    rendered   the script is written (script_path); still nothing submitted
    submitted  sbatch accepted it (job_id); the job is followed until it ends
    finished   the job ended and the task's status is settled (or the task went back)

Every transition is committed before the next side effect, so after ``kill -9`` at any
point a restart knows, for each task, whether a job may exist: ``pulled``/``rendered``
rows are looked up by job name (``job_name``, and the legacy ``clearml_task_<id>``) and
either adopted or put back at the front of their queue; ``submitted`` rows are followed again.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PULLED = "pulled"
RENDERED = "rendered"
SUBMITTED = "submitted"
FINISHED = "finished"
LIVE_STATES = (PULLED, RENDERED, SUBMITTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    task_id     TEXT PRIMARY KEY,
    queue_id    TEXT NOT NULL,
    queue_name  TEXT NOT NULL,
    state       TEXT NOT NULL,
    job_id      TEXT,
    script_path TEXT,
    job_state   TEXT,
    outcome     TEXT,
    pulled_at   REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_state ON entries(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    """One ledger row."""

    task_id: str
    queue_id: str
    queue_name: str
    state: str
    job_id: str | None
    script_path: str | None
    job_state: str | None
    outcome: str | None
    pulled_at: float
    updated_at: float


class Ledger:
    """The ledger in ``<state_dir>/ledger.sqlite`` (one submitter per state folder)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        if not path.exists():  # owner-only, like everything in the state folder
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        # One user at a time, but it may move between threads (start() here, run() there).
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, timeout=30, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def set_popping(self, queue_id: str) -> None:
        """About to pop ``queue_id``: if we die before :meth:`record_pulled`, the restart
        looks for the task that left that queue without a ledger row."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES ('popping', ?)", (queue_id,))

    def clear_popping(self) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM meta WHERE key = 'popping'")

    def popping(self) -> str | None:
        """The queue a pop was in flight for when the last run stopped, if any."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'popping'").fetchone()
        return str(row[0]) if row else None

    def record_pulled(self, task_id: str, queue_id: str, queue_name: str) -> None:
        """A task was popped from ``queue_id`` (replaces a finished row of an earlier run);
        clears the pop-in-flight marker in the same transaction."""
        now = time.time()
        with self._tx() as c:
            c.execute("DELETE FROM meta WHERE key = 'popping'")
            c.execute(
                "INSERT OR REPLACE INTO entries (task_id, queue_id, queue_name, state, job_id,"
                " script_path, job_state, outcome, pulled_at, updated_at)"
                " VALUES (?, ?, ?, ?, NULL, NULL, NULL, NULL, ?, ?)",
                (task_id, queue_id, queue_name, PULLED, now, now),
            )

    def _update(self, task_id: str, **fields: str | None) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as c:
            c.execute(
                f"UPDATE entries SET {cols}, updated_at = ? WHERE task_id = ?",  # noqa: S608 - column names are ours
                (*fields.values(), time.time(), task_id),
            )

    def mark_rendered(self, task_id: str, script_path: Path) -> None:
        self._update(task_id, state=RENDERED, script_path=str(script_path))

    def mark_submitted(self, task_id: str, job_id: str) -> None:
        self._update(task_id, state=SUBMITTED, job_id=job_id)

    def set_job_state(self, task_id: str, job_state: str) -> None:
        self._update(task_id, job_state=job_state)

    def mark_finished(self, task_id: str, outcome: str) -> None:
        """Settled: ``outcome`` says how (completed, failed: ..., requeued, cancelled, ...)."""
        self._update(task_id, state=FINISHED, outcome=outcome)

    def get(self, task_id: str) -> Entry | None:
        row = self._conn.execute("SELECT * FROM entries WHERE task_id = ?", (task_id,)).fetchone()
        return Entry(*row) if row else None

    def live(self) -> list[Entry]:
        """Rows not finished, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM entries WHERE state IN (?, ?, ?) ORDER BY pulled_at",
            LIVE_STATES,
        ).fetchall()
        return [Entry(*r) for r in rows]

    def live_by_queue(self) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT queue_id, COUNT(*) FROM entries WHERE state IN (?, ?, ?) GROUP BY queue_id",
            LIVE_STATES,
        ).fetchall()
        return {str(q): int(n) for q, n in rows}

    def recent(self, limit: int = 50) -> list[Entry]:
        rows = self._conn.execute(
            "SELECT * FROM entries ORDER BY updated_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Entry(*r) for r in rows]

    def prune(self, older_than_s: float) -> int:
        """Delete finished rows not updated for ``older_than_s`` seconds."""
        cutoff = time.time() - older_than_s
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM entries WHERE state = ? AND updated_at < ?", (FINISHED, cutoff)
            )
            return cur.rowcount
