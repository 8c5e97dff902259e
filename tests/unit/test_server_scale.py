"""The server at lab scale (issue 18): tasks.get_all pages come from in-order indexes (one
cursor per project/status, merged) in exactly SQL's order, and event retention deletes old
events in batches while keeping recent ones and the tasks."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from hpcagent.server import retention, task_query
from hpcagent.server.app import Ctx, all_routes
from hpcagent.server.retention import EventRetention
from hpcagent.server.store import EVENT_INSERT, Store

PROJECTS = ["pa", "pb", "pc"]
STATUSES = ["created", "queued", "completed", "failed"]


def _task(index: int, rng: random.Random) -> dict[str, Any]:
    # few distinct timestamps: ties in last_update/created are common, NULLs too
    def stamp() -> str:
        return f"2026-01-{rng.randint(1, 4):02d}T00:00:00"

    return {
        "id": f"t{index:03d}", "name": f"task {index}", "status": rng.choice(STATUSES),
        "project": rng.choice([*PROJECTS, None]), "created": stamp(),
        "last_update": rng.choice([stamp(), stamp(), None]), "started": None,
        "system_tags": ["archived"] if index % 7 == 0 else [], "tags": [],
    }  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "server.db")
    rng = random.Random(18)
    with s.write():
        for index in range(120):
            s.put_task(_task(index, rng))
    yield s
    s.close()


def _reference(docs: list[dict[str, Any]], order: list[tuple[str, bool]]) -> list[str]:
    """The listing's order as SQL defines it: NULL first ascending, last descending, then
    ``created`` ascending (SQLite's stable sort is not assumed: ids break full ties)."""
    rows = sorted(docs, key=lambda d: (d["created"], d["id"]))
    for column, desc in reversed(order):
        rows.sort(key=lambda d, c=column: (d[c] is not None, d[c] or ""), reverse=desc)
    return [d["id"] for d in rows]


@pytest.mark.parametrize(
    ("projects", "statuses"),
    [
        (["pa"], None),
        (["pa", "pc"], ["completed", "failed"]),
        (None, ["queued", "created"]),
        (["pb"], ["completed"]),
        (None, None),
    ],
)
@pytest.mark.parametrize(
    "order",
    [
        [("last_update", True)],
        [("last_update", False)],
        [("created", True)],
        [],
        [("last_update", True), ("name", False)],
    ],
)
def test_merged_streams_keep_sql_order(
    store: Store, projects: list[str] | None, statuses: list[str] | None, order: Any
) -> None:
    every = list(task_query.stream(store.conn, None, None, None, []))
    docs = [
        d for d in every
        if (projects is None or d["project"] in projects)
        and (statuses is None or d["status"] in statuses)
    ]  # fmt: skip
    got = [d["id"] for d in task_query.stream(store.conn, None, projects, statuses, order)]
    want = _reference(docs, order)
    assert sorted(got) == sorted(want)
    # equal sort keys may come in either order only among full ties (same keys and created)
    key = {d["id"]: (*tuple(d[c] for c, _ in order), d["created"]) for d in docs}
    assert [key[i] for i in got] == [key[i] for i in want]


def test_the_first_page_reads_an_index_in_order(store: Store) -> None:
    """Each merged cursor is an in-order index search, never a sort of every match."""
    for column in ("last_update", "created"):
        sql = (
            f"SELECT {column}, created, doc FROM tasks WHERE project IN (?) "
            f"AND +status IN (?,?) ORDER BY {column} DESC, created"
        )
        plan = str(store.conn.execute("EXPLAIN QUERY PLAN " + sql, ["pa", "a", "b"]).fetchall())
        assert f"tasks_project_{column}" in plan
        assert "TEMP B-TREE FOR ORDER BY" not in plan  # only the tie-break ("RIGHT PART")
        sql = (
            f"SELECT {column}, created, doc FROM tasks WHERE status IN (?) "
            f"ORDER BY {column} DESC, created"
        )
        plan = str(store.conn.execute("EXPLAIN QUERY PLAN " + sql, ["completed"]).fetchall())
        assert f"tasks_status_{column}" in plan
        assert "TEMP B-TREE FOR ORDER BY" not in plan


def test_get_all_pages_filters_and_hides(store: Store) -> None:
    """Pages of the merged listing are the slices of the whole listing; archived tasks are
    filtered as before (``-archived``), and only_fields still projects."""
    handler = all_routes()["tasks.get_all"]
    ctx = Ctx(store=store, endpoint="tasks.get_all")
    body = {"project": ["pa", "pb"], "status": ["completed", "failed", "created"],
            "order_by": ["-last_update"], "system_tags": ["-archived"]}  # fmt: skip
    whole = [t["id"] for t in handler(ctx, body)["tasks"]]
    assert whole
    assert not any(int(i[1:]) % 7 == 0 for i in whole)
    pages = [
        [t["id"] for t in handler(ctx, {**body, "page": page, "page_size": 7})["tasks"]]
        for page in range(len(whole) // 7 + 2)
    ]
    assert [i for page in pages for i in page] == whole
    one = handler(ctx, {**body, "page": 0, "page_size": 3, "only_fields": ["name"]})["tasks"]
    assert [set(t) for t in one] == [{"id", "name"}] * 3


def _events(store: Store, task: str, stamps: list[int]) -> None:
    rows = [(task, "log", ts, None, None, None, b'{"msg":"x"}', None) for ts in stamps]
    with store.write() as conn:
        conn.executemany(EVENT_INSERT, rows)


def test_retention_deletes_old_events_in_batches_and_keeps_tasks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_800_000_000.0
    day_ms = retention.DAY_MS
    old = [int(now * 1000) - 40 * day_ms + i for i in range(23)]
    recent = [int(now * 1000) - 2 * day_ms + i for i in range(5)]
    _events(store, "t001", old[:13] + recent)
    _events(store, "t002", old[13:])
    monkeypatch.setattr(retention, "BATCH", 4)
    calls: list[str] = []

    async def in_db(fn: Any, *args: Any) -> Any:
        calls.append(fn.__name__)
        return fn(*args)

    deleted = asyncio.run(EventRetention(store, 30).sweep(in_db, now=now))
    assert deleted == len(old)
    assert len(calls) == len(old) // 4 + 1  # one short transaction per batch
    left = [r[0] for r in store.conn.execute("SELECT ts FROM events ORDER BY ts")]
    assert left == recent
    assert store.get_task("t001")["id"] == "t001"
    assert store.get_task("t002")["id"] == "t002"
    assert asyncio.run(EventRetention(store, 30).sweep(in_db, now=now)) == 0


def test_retention_off_starts_nothing_and_refuses_negative(store: Store) -> None:
    async def in_db(fn: Any, *args: Any) -> Any:
        return fn(*args)

    assert EventRetention(store, 0).start(in_db) is None
    with pytest.raises(ValueError, match="negative"):
        EventRetention(store, -1)


def test_log_totals_are_kept_and_migrated(tmp_path: Path) -> None:
    """events.get_task_log's total is a kept count (triggers), right after inserts, a retention
    sweep and a task deletion, and counted once for a database made before it was kept."""
    path = tmp_path / "server.db"
    store = Store(path)
    rng = random.Random(1)
    with store.write():
        for index in range(3):
            store.put_task(_task(index, rng))
    handler = all_routes()["events.get_task_log"]
    ctx = Ctx(store=store, endpoint="events.get_task_log")

    def total(task: str) -> int:
        return int(handler(ctx, {"task": task, "batch_size": 2})["total"])

    _events(store, "t000", [1000, 2000, 3000])
    _events(store, "t001", [1500])
    with store.write() as conn:  # a scalar is no log line
        conn.execute(EVENT_INSERT, ("t000", "training_stats_scalar", 1, 1, "m", "v", b"{}", 1.0))
    assert (total("t000"), total("t001"), total("t002")) == (3, 1, 0)
    assert store.delete_events_before(2500, 10) == 4  # the scalar, 2 lines of t000, 1 of t001
    assert (total("t000"), total("t001")) == (1, 0)
    with store.write():
        store.delete_task("t000")
    assert store.log_count("t000") == 0
    _events(store, "t002", [5, 6])
    store.conn.executescript(
        "DROP TRIGGER log_counts_add; DROP TRIGGER log_counts_remove; DROP TABLE log_counts;"
    )  # as a database from before the counts
    store.close()
    store = Store(path)
    try:
        assert store.log_count("t002") == 2
        assert store.log_count("t001") == 0
    finally:
        store.close()


def test_server_applies_the_configured_retention(tmp_path: Path) -> None:
    """A real ``hpcagent server`` reading ``server.event_retention_days`` from its
    configuration sweeps at start: events older than the retention go, recent ones and the
    task stay (events posted through events.add_batch with their own timestamps)."""
    from embedded import EmbeddedServer

    conf = tmp_path / "clearml.conf"
    conf.write_text("server { event_retention_days: 30 }\n")
    server = EmbeddedServer(tmp_path / "data", env={"CLEARML_CONFIG_FILE": str(conf)})
    server.start()
    try:
        # first run: retention on, nothing is old yet; post old and recent lines
        task = server.send("tasks.create", {"name": "retained", "type": "training"})["id"]
        now_ms = int(time.time() * 1000)
        stamps = [now_ms - 90 * retention.DAY_MS + i for i in range(7)]
        stamps += [now_ms - retention.DAY_MS + i for i in range(3)]
        lines = b"\n".join(
            orjson.dumps({"task": task, "type": "log", "timestamp": ts, "msg": f"line {i}"})
            for i, ts in enumerate(stamps)
        )
        reply = server.request("events.add_batch", data=lines)
        assert reply.json()["data"]["added"] == len(stamps)
        server.stop()
        server.start()  # the sweep runs when the server starts, then every SWEEP_INTERVAL_S

        def log() -> dict[str, Any]:
            return server.send("events.get_task_log", {"task": task, "batch_size": 100})

        deadline = time.monotonic() + 60
        while log()["total"] != 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        reply_log = log()
        assert reply_log["total"] == 3
        assert sorted(e["msg"] for e in reply_log["events"]) == ["line 7", "line 8", "line 9"]
        assert server.send("tasks.get_by_id", {"task": task})["task"]["name"] == "retained"
    finally:
        server.stop()
