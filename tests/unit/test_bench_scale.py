"""benchmarks/datagen.py and server_scale_bench.py stay runnable and in step with the server:
a small generated database opens without migration, its kept log counts match its events,
and the bench runs every call against a real server on it (no figure is asserted)."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

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

    monkeypatch.setattr(sys, "argv", ["bench", "--db", str(db), "--repeat", "3", "--warmup", "1",
                                      "--retention-batches", "1"])  # fmt: skip
    capsys.readouterr()
    _load("server_scale_bench").main()
    out = capsys.readouterr().out
    figures = [line for line in out.splitlines() if " p50 " in line]
    assert len(figures) == 10, out  # 5 task listings, 3 logs, the pop, the retention batch
    assert "(15 tasks)" in out
    assert "(an entry)" in out
