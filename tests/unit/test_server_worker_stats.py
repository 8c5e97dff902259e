"""workers.get_stats / get_activity_report / get_metric_keys over the machine_stats history of
workers.status_report (ClearML server's API 2.4 shapes), and queues.remove_task's
update_task_status."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hpcagent.server.store import Store

Server = Any  # tests/conftest.py::EmbeddedServer


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


def _report(srv: Server, worker: str, stats: dict[str, Any], task: str | None = None) -> None:
    body: dict[str, Any] = {"worker": worker, "timestamp": int(time.time()), "machine_stats": stats}
    if task:
        body["task"] = task
    srv.send("workers.status_report", body)


def test_stats_history_in_clearml_shapes(srv: Server) -> None:
    worker = f"host-{uuid.uuid4().hex[:8]}:hpcagent-slurm"
    other = f"host-{uuid.uuid4().hex[:8]}:other"
    start = time.time() - 1
    _report(srv, worker, {"cpu_usage": [10.0, 30.0], "memory_used": 100.0})
    _report(srv, worker, {"cpu_usage": [50.0, 70.0], "memory_used": 300.0, "gpu_usage": "n/a"})
    _report(srv, other, {"cpu_usage": [1.0]})
    srv.send("workers.status_report", {"worker": worker, "timestamp": 1})  # no stats: no point
    window = {"from_date": start, "to_date": time.time() + 1, "interval": 3600}
    items = [{"key": "cpu_usage", "category": "avg"}, {"key": "cpu_usage", "category": "max"},
             {"key": "memory_used"}, {"key": "gpu_usage"}]  # fmt: skip
    reply = srv.send("workers.get_stats", {**window, "items": items, "worker_ids": [worker]})
    assert [w["worker"] for w in reply["workers"]] == [worker]
    metrics = {m["metric"]: m for m in reply["workers"][0]["metrics"]}
    assert set(metrics) == {"cpu_usage", "memory_used"}  # a non-numeric value is not a series
    cpu = metrics["cpu_usage"]
    assert len(cpu["dates"]) == 1
    assert start - 3600 <= cpu["dates"][0] <= time.time()
    assert cpu["stats"] == [
        {"aggregation": "avg", "values": [40.0]},
        {"aggregation": "max", "values": [70.0]},
    ]
    assert metrics["memory_used"]["stats"] == [{"aggregation": "avg", "values": [200.0]}]
    # split by variant: one series per core
    split = srv.send(
        "workers.get_stats",
        {**window, "items": items[:1], "worker_ids": [worker], "split_by_variant": True},
    )
    per_core = {m["variant"]: m["stats"][0]["values"] for m in split["workers"][0]["metrics"]}
    assert per_core == {"0": [30.0], "1": [50.0]}
    # one point per interval of 1 s: the dates are the intervals with reports
    fine = srv.send("workers.get_stats", {**window, "interval": 1, "items": items[2:3],
                                          "worker_ids": [worker]})  # fmt: skip
    assert sum(len(m["dates"]) for m in fine["workers"][0]["metrics"]) in (1, 2)
    keys = srv.send("workers.get_metric_keys", {"worker_ids": [worker]})["categories"]
    assert {c["name"]: c["metric_keys"] for c in keys} == {
        "cpu": ["cpu_usage"],
        "memory": ["memory_used"],
    }


def test_activity_report_counts_reporting_and_busy_workers(srv: Server) -> None:
    task = srv.send("tasks.create", {"name": "busy", "type": "training"})["id"]
    idle, busy = (f"w-{uuid.uuid4().hex[:8]}" for _ in range(2))
    start = time.time() - 0.5
    _report(srv, idle, {"memory_used": 1.0})
    _report(srv, busy, {"memory_used": 2.0}, task=task)
    reply = srv.send(
        "workers.get_activity_report",
        {"from_date": start, "to_date": time.time() + 1, "interval": 3600},
    )
    assert reply["total"]["counts"][-1] >= 2
    assert reply["active"]["counts"][-1] >= 1
    assert reply["total"]["dates"] == reply["active"]["dates"]


@pytest.mark.parametrize(
    "body",
    [
        {"to_date": 2, "interval": 1, "items": [{"key": "cpu_usage"}]},
        {"from_date": 1, "to_date": 2, "interval": 0, "items": [{"key": "cpu_usage"}]},
        {"from_date": 3, "to_date": 2, "interval": 1, "items": [{"key": "cpu_usage"}]},
        {"from_date": 0, "to_date": 10**9, "interval": 1, "items": [{"key": "cpu_usage"}]},
        {"from_date": 1, "to_date": 2, "interval": 1, "items": []},
        {"from_date": 1, "to_date": 2, "interval": 1, "items": [{"key": "x", "category": "sum"}]},
        {"from_date": "a", "to_date": 2, "interval": 1, "items": [{"key": "x"}]},
    ],
)
def test_get_stats_refuses_bad_requests(srv: Server, body: dict[str, Any]) -> None:
    reply = srv.request("workers.get_stats", body)
    assert (reply.status_code, reply.json()["meta"]["result_subcode"]) == (400, 12)


def test_history_is_bounded_per_worker(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        with store.write():
            for i in range(30):
                store.add_worker_stats("w", 1000.0 + i, None, {"memory_used": float(i)}, 10)
                store.add_worker_stats("v", 1000.0 + i, None, {"memory_used": float(i)}, 100)
        rows = store.worker_stats(["w"], 0, 10**10)
        assert [r[3]["memory_used"] for r in rows] == [float(i) for i in range(20, 30)]
        assert len(store.worker_stats(["v"], 0, 10**10)) == 30  # another worker's are its own
        with store.write():
            store.prune_worker_stats(1025.0)
        assert len(store.worker_stats(["w"], 0, 10**10)) == 5
    finally:
        store.close()


def test_remove_task_with_update_task_status(srv: Server) -> None:
    queue = srv.send("queues.create", {"name": f"rm-{uuid.uuid4().hex[:8]}"})["id"]
    kept, reset = (srv.send("tasks.create", {"name": n, "type": "training"})["id"]
                   for n in ("kept", "reset"))  # fmt: skip
    for task in (kept, reset):
        srv.send("tasks.enqueue", {"task": task, "queue": queue})
    assert srv.send("queues.remove_task", {"queue": queue, "task": kept})["removed"] == 1
    assert srv.send("tasks.get_by_id", {"task": kept})["task"]["status"] == "queued"
    body = {"queue": queue, "task": reset, "update_task_status": True}
    assert srv.send("queues.remove_task", body)["removed"] == 1
    task = srv.send("tasks.get_by_id", {"task": reset})["task"]
    assert (task["status"], task["execution"]["queue"]) == ("created", None)
    assert srv.send("queues.get_by_id", {"queue": queue})["queue"]["entries"] == []
    assert srv.send("queues.remove_task", body)["removed"] == 0  # gone: nothing to change
