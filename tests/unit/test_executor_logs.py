"""Log splitting, CR collapse, batching and the disk spool of the log shipper."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from hpcagent.executor.logs import (
    MAX_EVENT_BYTES,
    LineSplitter,
    LogShipper,
    collapse_cr,
    pack_events,
    request_chunks,
)


def test_collapse_cr_keeps_last_state() -> None:
    assert collapse_cr("10%\r50%\r100%") == "100%"
    assert collapse_cr("plain\r") == "plain"
    assert collapse_cr("a\x1b[0mb\bc") == "abc"


def test_splitter_handles_partial_lines_and_progress() -> None:
    sp = LineSplitter()
    assert sp.feed(b"hel") == []
    assert sp.feed(b"lo\nwor") == ["hello"]
    # a progress bar redrawn many times without newline stays bounded
    for i in range(1000):
        sp.feed(f"\rprogress {i}".encode())
    assert sp.feed(b"\n") == ["progress 999"]
    assert sp.feed(b"tail") == []
    assert sp.flush() == ["tail"]


def test_pack_events_concatenates_and_bounds_size() -> None:
    lines = [(1000 + i, "DEBUG", "x" * 1000) for i in range(200)]
    events = pack_events(lines, "t", "w")
    assert sum(e["msg"].count("\n") + 1 for e in events) == 200
    assert all(len(e["msg"].encode()) <= MAX_EVENT_BYTES for e in events)
    assert events[0]["timestamp"] == 1000
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    chunks = request_chunks(events)
    assert sum(len(c) for c in chunks) == len(events)


class FlakySink:
    """Records delivered events; fails while ``down`` is set."""

    def __init__(self) -> None:
        self.down = False
        self.delivered: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if self.down:
            raise ConnectionError("server down")
        with self.lock:
            self.delivered.extend(events)

    def lines(self) -> list[str]:
        return [line for e in self.delivered for line in e["msg"].split("\n")]


def test_shipper_spools_while_down_and_delivers_exactly_once(tmp_path: Path) -> None:
    sink = FlakySink()
    shipper = LogShipper(
        sink,
        task="t",
        worker="w",
        spool_dir=tmp_path / "spool",
        flush_interval=0.05,
        retry_interval=0.05,
    ).start()
    expected = []
    for i in range(100):
        shipper.emit(f"before {i}")
        expected.append(f"before {i}")
    sink.down = True
    for i in range(300):
        shipper.emit(f"during {i}")
        expected.append(f"during {i}")
    shipper.flush_once()  # fails: goes to the spool
    assert list((tmp_path / "spool").glob("*.jsonl"))
    sink.down = False
    for i in range(50):
        shipper.emit(f"after {i}")
        expected.append(f"after {i}")
    assert shipper.close(timeout=10.0)
    assert sink.lines() == expected
    assert not list((tmp_path / "spool").glob("*.jsonl"))


def test_shipper_memory_spill_and_spool_bound(tmp_path: Path) -> None:
    sink = FlakySink()
    sink.down = True
    shipper = LogShipper(
        sink,
        task="t",
        worker="w",
        spool_dir=tmp_path / "spool",
        mem_limit=10_000,
        spool_max_bytes=50_000,
    )
    for i in range(2000):
        shipper.emit(f"line {i:05d} " + "y" * 40)
    spooled = sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.jsonl"))
    assert 0 < spooled <= 50_000
    sink.down = False
    assert shipper.close(timeout=5.0)
    lines = sink.lines()
    assert any("dropped" in line for line in lines)
    kept = [line for line in lines if line.startswith("line ")]
    assert kept == sorted(kept)  # order preserved, nothing duplicated
    assert len(set(kept)) == len(kept)


def test_lost_reply_is_not_resent(tmp_path: Path) -> None:
    """The server stores a request but the reply is lost: the verifier prevents a duplicate."""
    stored: list[dict[str, Any]] = []
    lose_reply = [True]

    def sink(events: list[dict[str, Any]]) -> None:
        stored.extend(events)
        if lose_reply[0]:
            lose_reply[0] = False
            raise TimeoutError("read timed out")

    def verifier(event: dict[str, Any]) -> bool:
        return any(
            e["timestamp"] == event["timestamp"] and e["msg"] == event["msg"] for e in stored
        )

    shipper = LogShipper(sink, task="t", worker="w", spool_dir=tmp_path / "s", verifier=verifier)
    for i in range(10):
        shipper.emit(f"l{i}")
    assert not shipper.flush_once()  # "failed": spooled
    for i in range(10, 20):
        shipper.emit(f"l{i}")
    assert shipper.close(timeout=5.0)
    lines = [x for e in stored for x in e["msg"].split("\n")]
    assert lines == [f"l{i}" for i in range(20)]
