"""The columns of the embedded server's store: ``started``/``last_update`` (tasks) and ``value``
(scalar events) are added to a database made before they existed, filled from the documents;
the task columns sort tasks.get_all in SQL, the values answer charts from an index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from hpcagent.server.app import Ctx, all_routes
from hpcagent.server.store import Store

OLD_SCHEMA = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT, status TEXT NOT NULL,
    created TEXT NOT NULL, doc BLOB NOT NULL);
"""


def test_old_database_gets_the_sort_columns(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    docs = [
        {"id": "a", "name": "a", "status": "completed", "created": "2026-01-01T00:00:01",
         "started": "2026-01-03T00:00:00", "last_update": "2026-01-05T00:00:00"},
        {"id": "b", "name": "b", "status": "created", "created": "2026-01-01T00:00:02",
         "started": None, "last_update": "2026-01-04T00:00:00"},
        {"id": "c", "name": "c", "status": "failed", "created": "2026-01-01T00:00:03",
         "started": "2026-01-02T00:00:00", "last_update": "2026-01-06T00:00:00"},
    ]  # fmt: skip
    conn.executemany(
        "INSERT INTO tasks(id, name, project, status, created, doc) VALUES (?,?,?,?,?,?)",
        [(d["id"], d["name"], None, d["status"], d["created"], orjson.dumps(d)) for d in docs],
    )
    conn.commit()
    conn.close()
    store = Store(path)
    try:
        columns = {row[1] for row in store.conn.execute("PRAGMA table_info(tasks)")}
        assert {"started", "last_update"} <= columns
        handler = all_routes()["tasks.get_all"]
        ctx = Ctx(store=store, endpoint="tasks.get_all")

        def order(key: str) -> list[str]:
            return [t["id"] for t in handler(ctx, {"order_by": [key]})["tasks"]]

        assert order("started") == ["b", "c", "a"]  # never started sorts first, as ""
        assert order("-started") == ["a", "c", "b"]
        assert order("-last_update") == ["c", "a", "b"]
        # a task written now keeps its columns in step with its document
        task = store.get_task("b")
        task["started"] = "2026-01-09T00:00:00"
        with store.write():
            store.put_task(task)
        assert order("-started") == ["b", "a", "c"]
        plan = store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM tasks ORDER BY started DESC, created"
        ).fetchall()
        assert "tasks_started" in str(plan)
    finally:
        store.close()


def test_every_sort_of_the_task_table_is_a_column() -> None:
    """The web UI offers only sorts that page in SQL (docs/performance.md, Web UI)."""
    from hpcagent.server.store import TASK_SORT_COLUMNS
    from hpcagent.server.ui.table import SORT_KEYS

    assert SORT_KEYS <= TASK_SORT_COLUMNS


OLD_EVENTS = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, type TEXT NOT NULL,
    ts INTEGER NOT NULL, iter INTEGER, metric TEXT, variant TEXT, doc BLOB NOT NULL);
"""


def test_old_database_gets_scalar_values_and_charts_read_the_index(tmp_path: Path) -> None:
    """Scalar values became a column: an older database gets it filled from the documents,
    and a chart's sampled series is read from the covering index, never the documents."""
    path = tmp_path / "server.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA + OLD_EVENTS)
    task = {"id": "t", "name": "t", "status": "completed", "created": "2026-01-01T00:00:01"}
    conn.execute(
        "INSERT INTO tasks(id, name, project, status, created, doc) VALUES (?,?,?,?,?,?)",
        ("t", "t", None, "completed", task["created"], orjson.dumps(task)),
    )
    scalars = [
        {"task": "t", "type": "training_stats_scalar", "metric": "loss", "variant": "train",
         "iter": i, "value": value, "timestamp": 1000 + i}
        for i, value in enumerate([0.5, 2, True, "x", 0.25])
    ]  # fmt: skip
    conn.executemany(
        "INSERT INTO events(task, type, ts, iter, metric, variant, doc) VALUES (?,?,?,?,?,?,?)",
        [("t", e["type"], e["timestamp"], e["iter"], "loss", "train", orjson.dumps(e))
         for e in scalars],
    )  # fmt: skip
    conn.commit()
    conn.close()
    store = Store(path)
    try:
        values = [r[0] for r in store.conn.execute("SELECT value FROM events ORDER BY seq")]
        assert values == [0.5, 2.0, None, None, 0.25]  # a bool or a string is no value
        handler = all_routes()["events.scalar_metrics_iter_histogram"]
        ctx = Ctx(store=store, endpoint="events.scalar_metrics_iter_histogram")
        hist = handler(ctx, {"task": "t"})
        assert hist == {"loss": {"train": {"name": "train", "x": [0, 1, 4], "y": [0.5, 2.0, 0.25]}}}
        plan = store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT iter, AVG(value) FROM events WHERE task='t' "
            "AND type='training_stats_scalar' AND (iter IS NULL OR iter > -2147483648) "
            "AND value IS NOT NULL AND metric IS 'loss' AND variant IS 'train' GROUP BY iter"
        ).fetchall()
        assert "COVERING INDEX events_scalar_values" in str(plan)
    finally:
        store.close()
