"""benchmarks/datagen.py and server_scale_bench.py stay runnable and in step with the server:
a small generated database opens without migration, its kept log counts match its events,
and the bench runs every call against a real server on it (no figure is asserted)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from hpcagent.server.store import Store

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:  # the benchmarks import each other, as when run there
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema(db: Path) -> list[tuple[str, ...]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(
            conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name != 'sqlite_stat1'"
            )
        )
    finally:
        conn.close()


def test_datagen_event_rows_interleave_each_log_in_order() -> None:
    """Each task gets exactly its lines, in line order within its lifetime, as valid JSON
    documents; neighbouring tasks' lines interleave."""
    datagen = _load("datagen")
    tasks = [(f"t{i:031d}", 1_000_000.0 + i * 10, 1_000_000.0 + i * 10 + 60) for i in range(150)]
    counts = [(i * 7) % 23 for i in range(150)]
    rows = list(datagen.event_rows(tasks, counts, random.Random(3)))
    assert len(rows) == sum(counts)
    seen: dict[str, list[tuple[int, int]]] = {}
    for task_id, kind, ts, iter_, metric, variant, doc, value in rows:
        assert (kind, iter_, metric, variant, value) == ("log", None, None, None, None)
        event = orjson.loads(doc)
        assert (event["task"], event["timestamp"], event["type"]) == (task_id, ts, "log")
        seen.setdefault(task_id, []).append((ts, int(event["msg"].split()[0])))
    for (task_id, created, last_update), n in zip(tasks, counts, strict=True):
        lines = seen.get(task_id, [])
        assert [line for _, line in lines] == list(range(n))
        assert all(created * 1000 <= ts <= last_update * 1000 for ts, _ in lines)
        assert [ts for ts, _ in lines] == sorted(ts for ts, _ in lines)
    order = [row[0] for row in rows]
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert switches > len(seen)  # interleaved, not one task after another


def test_datagen_and_scale_bench_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "lab.db"
    argv = ["datagen.py", "--db", str(db), "--tasks", "400", "--events", "6000",
            "--projects", "7", "--long-logs", "2", "--queued", "30"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    _load("datagen").main()
    summary = json.loads(Path(f"{db}.json").read_text())
    assert (summary["tasks"], summary["events"], summary["queued"]) == (400, 6000, 30)
    conn = sqlite3.connect(db)
    try:
        indexes_before = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("SELECT COUNT(*) FROM events WHERE type='log'").fetchone() == (6000,)
        assert conn.execute("SELECT SUM(n) FROM log_counts").fetchone() == (6000,)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone() == (400,)
    finally:
        conn.close()
    Store(db).close()  # the server's schema: nothing to add
    conn = sqlite3.connect(db)
    try:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == indexes_before
    finally:
        conn.close()
    # the indexes and triggers dropped while loading are back, as the server creates them
    Store(tmp_path / "fresh.db").close()
    assert _schema(db) == _schema(tmp_path / "fresh.db")
    conn = sqlite3.connect(db)
    try:  # the counts written in bulk are what the trigger would have kept
        assert not conn.execute(
            "SELECT task, COUNT(*) FROM events WHERE type='log' GROUP BY task "
            "EXCEPT SELECT task, n FROM log_counts"
        ).fetchall()
        assert conn.execute("SELECT COUNT(*) FROM log_counts WHERE n = 0").fetchone() == (0,)
        assert conn.execute("SELECT DISTINCT typeof(doc) FROM events").fetchall() == [("blob",)]
    finally:
        conn.close()

    monkeypatch.setattr(sys, "argv", ["bench", "--db", str(db), "--repeat", "3", "--warmup", "1",
                                      "--retention-batches", "1"])  # fmt: skip
    capsys.readouterr()
    _load("server_scale_bench").main()
    out = capsys.readouterr().out
    figures = [line for line in out.splitlines() if " p50 " in line]
    assert len(figures) == 10, out  # 5 task listings, 3 logs, the pop, the retention batch
    assert "(15 tasks)" in out
    assert all(" first " in line for line in figures[:-1])  # not the retention line
    assert "(an entry)" in out
