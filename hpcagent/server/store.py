"""SQLite storage of the embedded server.

Each server process has one long-lived connection (WAL, ``synchronous=NORMAL``), used only from
its database thread, so its requests run their statements serially; every writing request is
one :meth:`Store.write` (``BEGIN IMMEDIATE`` ... ``COMMIT``, ``app.atomic``), and the writers of
all the processes of ``--workers N`` take turns through a flock on ``server.db.writer``, so each
request is one atomic transaction across processes. A request's changes are committed before
its reply is sent, so a SIGTERM loses nothing that a client saw acknowledged.

Tasks, projects, queues and workers are stored as JSON documents (orjson) with the columns that
filters need copied next to them. Queue entries and events are plain rows.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from hpcagent.server import task_query
from hpcagent.server.fields import (
    INVALID_MODEL_ID,
    INVALID_PROJECT_ID,
    INVALID_QUEUE_ID,
    INVALID_TASK_ID,
    ApiFault,
)
from hpcagent.server.task_query import TASK_SORT_COLUMNS as TASK_SORT_COLUMNS
from hpcagent.server.task_query import where_in

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS projects_name ON projects(name);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT, status TEXT NOT NULL,
    created TEXT NOT NULL, doc BLOB NOT NULL, started TEXT, last_update TEXT);
-- (tasks_project(project) was a prefix of tasks_project_status; Store drops it.)
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks(created);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks(name);
-- The task table's status filter in creation order, and task counts per project and status
-- (projects.get_all_ex include_stats), read from the indexes alone.
CREATE INDEX IF NOT EXISTS tasks_status_created ON tasks(status, created);
CREATE INDEX IF NOT EXISTS tasks_project_status ON tasks(project, status);
CREATE TABLE IF NOT EXISTS queues (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS queues_name ON queues(name);
CREATE TABLE IF NOT EXISTS queue_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, task TEXT NOT NULL,
    added TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS queue_entries_queue ON queue_entries(queue, seq);
CREATE INDEX IF NOT EXISTS queue_entries_task ON queue_entries(task);
-- queues.get_next_task's pop ids (an hpcagent extension, routes/queues.py): a pop repeated with
-- the same id answers the entry the first one took, so a client may resend a pop whose reply it
-- lost. Kept POP_ID_KEEP_S.
CREATE TABLE IF NOT EXISTS pops (
    pop_id TEXT PRIMARY KEY, queue TEXT NOT NULL, task TEXT NOT NULL, added TEXT NOT NULL,
    at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pops_at ON pops(at);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, last_activity REAL NOT NULL, doc BLOB NOT NULL);
-- The machine_stats of workers.status_report, a bounded history per worker (worker_stats.py).
CREATE TABLE IF NOT EXISTS worker_stats (
    worker TEXT NOT NULL, ts REAL NOT NULL, task TEXT, stats BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS worker_stats_worker ON worker_stats(worker, ts);
CREATE INDEX IF NOT EXISTS worker_stats_ts ON worker_stats(ts);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT, task TEXT, created TEXT NOT NULL,
    doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS models_task ON models(task);
-- Files-store URLs of deleted tasks/models, deleted after a grace period: the SDK deletes them
-- itself right after tasks.delete (as with ClearML, whose server deletes them asynchronously).
CREATE TABLE IF NOT EXISTS file_deletions (url TEXT NOT NULL, due REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, type TEXT NOT NULL,
    ts INTEGER NOT NULL, iter INTEGER, metric TEXT, variant TEXT, doc BLOB NOT NULL,
    value REAL);
CREATE INDEX IF NOT EXISTS events_task ON events(task, type, ts);
-- The retention sweep's oldest-first reads (server.event_retention_days, delete_events_before).
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
-- One scalar per (task, metric, variant, iteration), as in ClearML: a re-sent scalar (a client
-- retrying a batch whose reply it lost) replaces the earlier one instead of doubling the point.
-- Rows written by every process over this database (one write transaction adds its own): the
-- web UI's live polls tell "something changed" (all) and "a document changed" (documents, all
-- but events coming in) by them, whichever worker process wrote (ui/live.py).
CREATE TABLE IF NOT EXISTS changes (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO changes(name, n) VALUES ('all', 0), ('documents', 0);
CREATE UNIQUE INDEX IF NOT EXISTS events_scalar_point ON events(task, metric, variant, iter)
    WHERE type = 'training_stats_scalar';
"""

#: Each task's number of log events, kept by triggers (Store._add_log_counts). A log event is
#: never replaced (only scalars have a unique key), so counting inserts and deletes is exact.
LOG_COUNTS = (
    "CREATE TABLE log_counts (task TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER log_counts_add AFTER INSERT ON events WHEN new.type = 'log' BEGIN "
    "INSERT INTO log_counts(task, n) VALUES (new.task, 1) "
    "ON CONFLICT(task) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER log_counts_remove AFTER DELETE ON events WHEN old.type = 'log' BEGIN "
    "UPDATE log_counts SET n = n - 1 WHERE task = old.task; END",
)
CHECKPOINT_INTERVAL_S = 0.5
#: The database file is read through a memory map up to this size: a connection whose page
#: cache another process's write made stale (``--workers N``) reads pages back from the OS's
#: cache without a system call and a copy each.
MMAP_BYTES = 1 << 30
#: How long a pop id is remembered (a client repeats a pop within minutes; a day is plenty).
POP_ID_KEEP_S = 24 * 3600.0
#: Task columns added after the first schema (Store._add_task_columns); they may be NULL.
LATER_TASK_COLUMNS = ("started", "last_update")


def _later_columns(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    started, last_update = doc.get("started"), doc.get("last_update")
    return (
        started if isinstance(started, str) else None,
        last_update if isinstance(last_update, str) else None,
    )


#: The one statement that stores a task document with its columns (:func:`task_row`); the
#: benchmarks' data generator inserts with it too, so its databases never drift from the server's.
TASK_INSERT = (
    "INSERT OR REPLACE INTO tasks(id, name, project, status, created, doc, started, last_update) "
    "VALUES (?,?,?,?,?,?,?,?)"
)
#: The one statement that stores events (``events.add_batch`` and the data generator).
#: OR REPLACE: only scalars have a unique key (events_scalar_point).
EVENT_INSERT = (
    "INSERT OR REPLACE INTO events(task, type, ts, iter, metric, variant, doc, value) "
    "VALUES (?,?,?,?,?,?,?,?)"
)


def task_row(doc: dict[str, Any]) -> tuple[Any, ...]:
    """The :data:`TASK_INSERT` parameters of a task document."""
    return (
        doc["id"],
        doc.get("name") or "",
        doc.get("project"),
        doc["status"],
        doc["created"],
        dumps(doc),
        *_later_columns(doc),
    )


def scalar_value(event: dict[str, Any]) -> float | None:
    """A scalar event's value as the ``events.value`` column keeps it (None: not a number)."""
    value = event.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond a double
        return None


def dumps(value: Any) -> bytes:
    """Serialise a document (orjson; non-str keys allowed)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class Store:
    """The server's database. Not thread-safe by design: use it from one thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # The processes of one server (``--workers N``) take turns to write: SQLite's own lock
        # makes a waiting writer poll with sleeps of 1-100 ms (its busy handler), a flock on
        # this file hands the turn over as soon as the writer before is done.
        self._writer_lock = os.open(f"{path}.writer", os.O_RDWR | os.O_CREAT, 0o600)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see write()).
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self.conn.executescript(SCHEMA)
        self._depth = 0
        #: Rows that events.add_batch inserted (of ``conn.total_changes``): each write
        #: transaction adds its rows to the shared ``changes`` counters, events apart.
        self.event_changes = 0
        self._add_task_columns()
        self._add_event_values()
        self._add_log_counts()
        # WAL checkpoints run in a background thread (own connection; sqlite releases the GIL
        # during I/O), so a request never pays for copying the WAL into the database file.
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _add_task_columns(self) -> None:
        """Give a database made before ``started``/``last_update`` were columns those columns
        (filled from the documents), and index them (sorting the task table by them in SQL)."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(tasks)")}
        missing = [c for c in LATER_TASK_COLUMNS if c not in have]
        if missing:
            with self.write() as conn:
                for column in missing:
                    conn.execute(f"ALTER TABLE tasks ADD COLUMN {column} TEXT")
                rows = conn.execute("SELECT id, doc FROM tasks").fetchall()
                conn.executemany(
                    "UPDATE tasks SET started=?, last_update=? WHERE id=?",
                    [(*_later_columns(orjson.loads(doc)), task_id) for task_id, doc in rows],
                )
        for column in LATER_TASK_COLUMNS:
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS tasks_{column} ON tasks({column})")
        # A listing filtered by project or status and sorted by creation or last update reads
        # these in order, one cursor per project/status (task_query.py); status rides in the
        # project ones so a status filter is checked without reading the row.
        for column in task_query.MERGED_ORDERS:
            self.conn.execute(
                f"CREATE INDEX IF NOT EXISTS tasks_project_{column} "
                f"ON tasks(project, {column}, status)"
            )
        self.conn.execute(
            "CREATE INDEX IF NOT EXISTS tasks_status_last_update ON tasks(status, last_update)"
        )
        self.conn.execute("DROP INDEX IF EXISTS tasks_project")

    def _add_event_values(self) -> None:
        """Give a database made before scalar values were a column that column (filled from
        the documents), and the index that answers a chart's sampled series from the index
        alone (event_reads.scalar_histogram: 100,000 points in ~0.1 s, not ~1 s of documents;
        ``type`` is in it too, else SQLite reads each row for it despite the WHERE)."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(events)")}
        if "value" not in have:
            with self.write() as conn:
                conn.execute("ALTER TABLE events ADD COLUMN value REAL")
                rows = conn.execute(
                    "SELECT seq, doc FROM events WHERE type='training_stats_scalar'"
                ).fetchall()
                conn.executemany(
                    "UPDATE events SET value=? WHERE seq=?",
                    [(scalar_value(orjson.loads(doc)), seq) for seq, doc in rows],
                )
        self.conn.execute(
            "CREATE INDEX IF NOT EXISTS events_scalar_values "
            "ON events(task, metric, variant, iter, ts, value, type) "
            "WHERE type = 'training_stats_scalar'"
        )

    def _add_log_counts(self) -> None:
        """Keep each task's number of console-log events in ``log_counts`` (triggers on
        ``events``), so ``events.get_task_log``'s ``total`` is one row, not a count of a log
        that may have millions of lines; a database made before gets them counted once."""
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='log_counts'"
        ).fetchone()
        if row is not None:
            return
        with self.write() as conn:
            for statement in LOG_COUNTS:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO log_counts(task, n) "
                "SELECT task, COUNT(*) FROM events WHERE type='log' GROUP BY task"
            )

    def log_count(self, task_id: str) -> int:
        """How many console-log events the task has."""
        row = self.conn.execute("SELECT n FROM log_counts WHERE task=?", (task_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            while not self._stop.wait(CHECKPOINT_INTERVAL_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or locked: try again next round
                    continue
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the checkpointer, checkpoint the WAL fully and close the connection."""
        self._stop.set()
        self._checkpointer.join(timeout=30)
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()
            os.close(self._writer_lock)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (``BEGIN IMMEDIATE``); nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        fcntl.flock(self._writer_lock, fcntl.LOCK_EX)  # see __init__: wakes at once, no polling
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)
            raise
        self._depth = 1
        rows, events = self.conn.total_changes, self.event_changes
        try:
            yield self.conn
            rows = self.conn.total_changes - rows
            if rows:
                documents = rows - (self.event_changes - events)
                self.conn.execute(
                    "UPDATE changes SET n = n + (CASE name WHEN 'all' THEN ? ELSE ? END)",
                    (rows, documents),
                )
        except BaseException:
            self._depth = 0
            try:
                self.conn.execute("ROLLBACK")
            finally:
                fcntl.flock(self._writer_lock, fcntl.LOCK_UN)
            raise
        self._depth = 0
        try:
            self.conn.execute("COMMIT")
        finally:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def change_counts(self) -> tuple[int, int]:
        """``(rows, document rows)`` written so far by every process over this database (rows
        of events.add_batch count in the first only); they only grow."""
        counts = dict(self.conn.execute("SELECT name, n FROM changes").fetchall())
        return int(counts.get("all", 0)), int(counts.get("documents", 0))

    # ---- generic documents -------------------------------------------------------------------

    def _get_doc(self, table: str, doc_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(f"SELECT doc FROM {table} WHERE id=?", (doc_id,)).fetchone()  # noqa: S608
        if row is None:
            return None
        doc: dict[str, Any] = orjson.loads(row[0])
        return doc

    def _all_docs(
        self, table: str, where: str = "", args: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        sql = f"SELECT doc FROM {table} {where} ORDER BY created"  # noqa: S608
        return [orjson.loads(r[0]) for r in self.conn.execute(sql, args)]

    def _query_docs(
        self, table: str, filters: tuple[tuple[str, list[str] | None], ...]
    ) -> list[dict[str, Any]]:
        """Documents whose ``column IN values`` for every filter whose values are not None."""
        where, args = where_in(filters)
        return self._all_docs(table, where, tuple(args))

    # ---- tasks -------------------------------------------------------------------------------

    def get_task(self, task_id: str) -> dict[str, Any]:
        """The task document; ``400/101`` when there is none."""
        doc = self._get_doc("tasks", task_id) if isinstance(task_id, str) else None
        if doc is None:
            raise ApiFault(INVALID_TASK_ID, f"Invalid task id: {task_id}", {"id": task_id})
        return doc

    def task_exists(self, task_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM tasks WHERE id=?", (task_id,)).fetchone()
        return row is not None

    def put_task(self, doc: dict[str, Any]) -> None:
        self.conn.execute(TASK_INSERT, task_row(doc))

    def delete_task(self, task_id: str) -> int:
        self.conn.execute("DELETE FROM queue_entries WHERE task=?", (task_id,))
        deleted = self.conn.execute("DELETE FROM events WHERE task=?", (task_id,)).rowcount
        self.conn.execute("DELETE FROM tasks WHERE id=?", (task_id,))
        self.conn.execute("DELETE FROM log_counts WHERE task=?", (task_id,))
        return int(deleted)

    def query_tasks(
        self,
        ids: list[str] | None,
        projects: list[str] | None,
        statuses: list[str] | None,
    ) -> list[dict[str, Any]]:
        """Tasks filtered in SQL by id/project/status (other filters are applied by the caller)."""
        return self._query_docs("tasks", (("id", ids), ("project", projects), ("status", statuses)))

    def iter_tasks(
        self,
        ids: list[str] | None,
        projects: list[str] | None,
        statuses: list[str] | None,
        order: list[tuple[str, bool]],
    ) -> Iterator[dict[str, Any]]:
        """Tasks filtered in SQL by id/project/status (other filters are the caller's), streamed
        in ``order`` (``(column, descending)`` pairs over :data:`TASK_SORT_COLUMNS`, then
        ``created``) from in-order indexes (:mod:`~hpcagent.server.task_query`), so a caller
        that wants one page reads about as many documents as it needs."""
        return task_query.stream(self.conn, ids, projects, statuses, order)

    def task_status_counts(self) -> dict[str | None, dict[str, int]]:
        """``{project id (None: no project): {status: tasks}}`` over every task."""
        counts: dict[str | None, dict[str, int]] = {}
        rows = self.conn.execute("SELECT project, status, COUNT(*) FROM tasks GROUP BY 1, 2")
        for project, status, count in rows:
            counts.setdefault(project, {})[str(status)] = int(count)
        return counts

    def stale_tasks(self, status: str, before: str) -> list[str]:
        """Ids of the tasks in ``status`` whose ``last_update`` (ISO-8601 text) is before
        ``before``, read from the ``(status, last_update)`` index."""
        rows = self.conn.execute(
            "SELECT id FROM tasks WHERE status=? AND last_update < ?", (status, before)
        )
        return [str(r[0]) for r in rows]

    def delete_events_before(self, cutoff_ms: int, limit: int) -> int:
        """Delete at most ``limit`` events whose timestamp (ms) is before ``cutoff_ms``, oldest
        first, in one short transaction; returns how many went (``limit``: maybe more left).
        Tasks keep their documents (``last_metrics`` included): only the event rows go."""
        with self.write() as conn:
            cur = conn.execute(
                "DELETE FROM events WHERE seq IN "
                "(SELECT seq FROM events WHERE ts < ? ORDER BY ts LIMIT ?)",
                (cutoff_ms, limit),
            )
        return int(cur.rowcount)

    # ---- models ------------------------------------------------------------------------------

    def get_model(self, model_id: str) -> dict[str, Any]:
        """The model document; ``400/201`` when there is none."""
        doc = self._get_doc("models", model_id) if isinstance(model_id, str) else None
        if doc is None:
            raise ApiFault(INVALID_MODEL_ID, f"Invalid model id: {model_id}", {"id": model_id})
        return doc

    def put_model(self, doc: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO models(id, name, project, task, created, doc) "
            "VALUES (?,?,?,?,?,?)",
            (
                doc["id"],
                doc.get("name") or "",
                doc.get("project"),
                doc.get("task"),
                doc["created"],
                dumps(doc),
            ),
        )

    def delete_model(self, model_id: str) -> int:
        return int(self.conn.execute("DELETE FROM models WHERE id=?", (model_id,)).rowcount)

    def query_models(
        self, ids: list[str] | None, projects: list[str] | None, tasks: list[str] | None
    ) -> list[dict[str, Any]]:
        """Models filtered in SQL by id/project/task (other filters are applied by the caller)."""
        return self._query_docs("models", (("id", ids), ("project", projects), ("task", tasks)))

    # ---- deferred file deletions ---------------------------------------------------------------

    def defer_file_deletions(self, urls: list[str], due: float) -> None:
        self.conn.executemany(
            "INSERT INTO file_deletions(url, due) VALUES (?,?)", [(u, due) for u in urls]
        )

    def take_due_file_deletions(self, now: float) -> list[str]:
        """Remove and return the URLs whose grace period is over."""
        with self.write():
            rows = self.conn.execute("SELECT url FROM file_deletions WHERE due<=?", (now,))
            urls = [str(r[0]) for r in rows]
            self.conn.execute("DELETE FROM file_deletions WHERE due<=?", (now,))
        return urls

    # ---- projects ----------------------------------------------------------------------------

    def get_project(self, project_id: str) -> dict[str, Any]:
        doc = self._get_doc("projects", project_id) if isinstance(project_id, str) else None
        if doc is None:
            raise ApiFault(
                INVALID_PROJECT_ID, f"Invalid project id: {project_id}", {"id": project_id}
            )
        return doc

    def put_project(self, doc: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO projects(id, name, created, doc) VALUES (?,?,?,?)",
            (doc["id"], doc["name"], doc["created"], dumps(doc)),
        )

    def all_projects(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        if ids is None:
            return self._all_docs("projects")
        return self._all_docs("projects", f"WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))

    def project_by_name(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT doc FROM projects WHERE name=?", (name,)).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    # ---- queues ------------------------------------------------------------------------------

    def get_queue(self, queue_id: str) -> dict[str, Any]:
        """The queue document (without entries); ``400/701`` when there is none."""
        doc = self._get_doc("queues", queue_id) if isinstance(queue_id, str) else None
        if doc is None:
            raise ApiFault(INVALID_QUEUE_ID, f"Invalid queue id: {queue_id}", {"id": queue_id})
        return doc

    def put_queue(self, doc: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO queues(id, name, created, doc) VALUES (?,?,?,?)",
            (doc["id"], doc["name"], doc["created"], dumps(doc)),
        )

    def delete_queue(self, queue_id: str) -> None:
        self.conn.execute("DELETE FROM queue_entries WHERE queue=?", (queue_id,))
        self.conn.execute("DELETE FROM queues WHERE id=?", (queue_id,))

    def all_queues(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        if ids is None:
            return self._all_docs("queues")
        return self._all_docs("queues", f"WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))

    def queue_by_name(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT doc FROM queues WHERE name=? ORDER BY created LIMIT 1", (name,)
        ).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def entries(self, queue_id: str) -> list[dict[str, Any]]:
        """The queue's entries, oldest first, as ``{task, added}``."""
        rows = self.conn.execute(
            "SELECT task, added FROM queue_entries WHERE queue=? ORDER BY seq", (queue_id,)
        )
        return [{"task": t, "added": a} for t, a in rows]

    def num_entries(self, queue_id: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM queue_entries WHERE queue=?", (queue_id,)
        ).fetchone()
        return int(row[0])

    def add_entry(self, queue_id: str, task_id: str, added: str) -> None:
        self.conn.execute(
            "INSERT INTO queue_entries(queue, task, added) VALUES (?,?,?)",
            (queue_id, task_id, added),
        )

    def remove_entries(self, task_id: str, queue_id: str | None = None) -> int:
        """Remove the task from one queue (or every queue); returns how many entries went."""
        if queue_id is None:
            cur = self.conn.execute("DELETE FROM queue_entries WHERE task=?", (task_id,))
        else:
            cur = self.conn.execute(
                "DELETE FROM queue_entries WHERE task=? AND queue=?", (task_id, queue_id)
            )
        return int(cur.rowcount)

    def move_entry(self, queue_id: str, task_id: str, new_pos: Callable[[int], int]) -> int | None:
        """Move the task's first entry in the queue to ``new_pos(current)`` (clamped to the
        queue); returns the position it now has, or None when the task is not in the queue.

        Call inside write(). The queue keeps the set of ``seq`` numbers it had: they are handed
        out again in the new order, so no other queue's entries are touched.
        """
        rows = self.conn.execute(
            "SELECT seq, task, added FROM queue_entries WHERE queue=? ORDER BY seq", (queue_id,)
        ).fetchall()
        index = next((i for i, row in enumerate(rows) if row[1] == task_id), None)
        if index is None:
            return None
        seqs = [int(row[0]) for row in rows]
        moved = rows.pop(index)
        target = min(max(new_pos(index), 0), len(rows))
        rows.insert(target, moved)
        self.conn.execute("DELETE FROM queue_entries WHERE queue=?", (queue_id,))
        self.conn.executemany(
            "INSERT INTO queue_entries(seq, queue, task, added) VALUES (?,?,?,?)",
            [(seq, queue_id, row[1], row[2]) for seq, row in zip(seqs, rows, strict=True)],
        )
        return target

    def pop_entry(self, queue_id: str) -> tuple[str, str] | None:
        """Remove and return the oldest ``(task, added)`` of the queue; call inside write()."""
        row = self.conn.execute(
            "SELECT seq, task, added FROM queue_entries WHERE queue=? ORDER BY seq LIMIT 1",
            (queue_id,),
        ).fetchone()
        if row is None:
            return None
        self.conn.execute("DELETE FROM queue_entries WHERE seq=?", (row[0],))
        return str(row[1]), str(row[2])

    def recorded_pop(self, pop_id: str) -> tuple[str, str, str] | None:
        """``(queue, task, added)`` of the pop made with ``pop_id``, if one was."""
        row = self.conn.execute(
            "SELECT queue, task, added FROM pops WHERE pop_id=?", (pop_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    def record_pop(self, pop_id: str, queue_id: str, task_id: str, added: str, now: float) -> None:
        """Remember a pop (call inside write(), with the pop); forget the expired ones."""
        self.conn.execute("DELETE FROM pops WHERE at<?", (now - POP_ID_KEEP_S,))
        self.conn.execute(
            "INSERT INTO pops(pop_id, queue, task, added, at) VALUES (?,?,?,?,?)",
            (pop_id, queue_id, task_id, added, now),
        )

    # ---- workers -----------------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> dict[str, Any] | None:
        return self._get_doc("workers", worker_id)

    def put_worker(self, doc: dict[str, Any], last_activity: float) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO workers(id, last_activity, doc) VALUES (?,?,?)",
            (doc["id"], last_activity, dumps(doc)),
        )

    def delete_worker(self, worker_id: str) -> int:
        return int(self.conn.execute("DELETE FROM workers WHERE id=?", (worker_id,)).rowcount)

    def active_workers(self, since: float) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT doc FROM workers WHERE last_activity>=? ORDER BY id", (since,)
        )
        return [orjson.loads(r[0]) for r in rows]

    def add_worker_stats(
        self, worker_id: str, ts: float, task: str | None, stats: dict[str, Any], keep: int
    ) -> None:
        """Record one report's ``machine_stats``; the worker keeps its newest ``keep`` rows."""
        self.conn.execute(
            "INSERT INTO worker_stats(worker, ts, task, stats) VALUES (?,?,?,?)",
            (worker_id, ts, task, dumps(stats)),
        )
        self.conn.execute(
            "DELETE FROM worker_stats WHERE worker=? AND ts <= (SELECT ts FROM worker_stats "
            "WHERE worker=? ORDER BY ts DESC LIMIT 1 OFFSET ?)",
            (worker_id, worker_id, keep),
        )

    def prune_worker_stats(self, before: float) -> None:
        self.conn.execute("DELETE FROM worker_stats WHERE ts < ?", (before,))

    def worker_stats(
        self, worker_ids: list[str] | None, since: float, until: float
    ) -> list[tuple[str, float, str | None, dict[str, Any]]]:
        """``(worker, ts, task, machine_stats)`` rows in ``[since, until]``, oldest first."""
        sql = "SELECT worker, ts, task, stats FROM worker_stats WHERE ts >= ? AND ts <= ?"
        args: list[Any] = [since, until]
        if worker_ids:
            sql += f" AND worker IN ({','.join('?' * len(worker_ids))})"
            args.extend(worker_ids)
        rows = self.conn.execute(sql + " ORDER BY ts", args)
        return [(str(r[0]), float(r[1]), r[2], orjson.loads(r[3])) for r in rows]
