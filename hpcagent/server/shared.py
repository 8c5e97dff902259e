"""The little state that every process of one server must agree on, kept in SQLite.

``hpcagent server --workers N`` runs N processes over one data dir (docs/server.md). What a
request changes in tasks, queues and events is in the store already; this module holds the
rest, which one process used to keep in memory:

* **failed sign-ins per source address** (:class:`~hpcagent.server.auth.SignInThrottle`): a
  client that spreads its tries over the workers is slowed down as if there were one;
* **signed-out web UI sessions** (:class:`~hpcagent.server.ui.session.UiSessions`): a session
  that signs out at one worker is refused by every other (and after a restart).

It has its own connection (autocommit, ``busy_timeout``), independent of the store's database
thread: sign-ins are answered on the event loop, and each statement here is one short
transaction. Safe to use from several threads (a lock). Without a path (unit tests, an app built
in-process) it is an in-memory database: the same code, one process.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sign_in_failures (
    source TEXT PRIMARY KEY, failures INTEGER NOT NULL, until REAL NOT NULL, last REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sign_in_failures_last ON sign_in_failures(last);
CREATE TABLE IF NOT EXISTS signed_out (fingerprint TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE INDEX IF NOT EXISTS signed_out_until ON signed_out(until);
"""


class SharedState:
    """Sign-in failures and signed-out sessions, shared by the processes of one data dir."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path) if path is not None else ":memory:",
            isolation_level=None,
            check_same_thread=False,
        )
        self._conn.execute("PRAGMA busy_timeout=10000")
        if path is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- failed sign-ins -----------------------------------------------------------------------

    def failures(self, source: str) -> tuple[int, float, float] | None:
        """``(failures, wait until, last failure)`` of ``source``, None when it has none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT failures, until, last FROM sign_in_failures WHERE source=?", (source,)
            ).fetchone()
        return None if row is None else (int(row[0]), float(row[1]), float(row[2]))

    def set_failures(
        self, source: str, failures: int, until: float, last: float, keep: int
    ) -> None:
        """Record ``source``'s failures; at most ``keep`` sources are kept (the oldest go)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO sign_in_failures(source, failures, until, last) "
                "VALUES (?,?,?,?)",
                (source, failures, until, last),
            )
            self._conn.execute(
                "DELETE FROM sign_in_failures WHERE source IN (SELECT source FROM "
                "sign_in_failures ORDER BY last DESC LIMIT -1 OFFSET ?)",
                (keep,),
            )

    def forget_failures(self, source: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sign_in_failures WHERE source=?", (source,))

    # ---- signed-out sessions -------------------------------------------------------------------

    def sign_out(self, fingerprint: str, until: float, now: float) -> None:
        """Refuse the session ``fingerprint`` until ``until`` (its token's end); forget the
        ended ones."""
        with self._lock:
            self._conn.execute("DELETE FROM signed_out WHERE until < ?", (now,))
            self._conn.execute(
                "INSERT OR REPLACE INTO signed_out(fingerprint, until) VALUES (?,?)",
                (fingerprint, until),
            )

    def signed_out(self, fingerprint: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM signed_out WHERE fingerprint=?", (fingerprint,)
            ).fetchone()
        return row is not None
