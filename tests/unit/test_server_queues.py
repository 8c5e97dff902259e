"""queues.*, workers.* and projects.* endpoints, plus the atomic-pop concurrency test."""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

import pytest
import requests

Server = Any  # tests/conftest.py::EmbeddedServer


def _err(srv: Server, endpoint: str, body: dict[str, Any]) -> tuple[int, int]:
    reply = srv.request(endpoint, body)
    return reply.status_code, reply.json()["meta"]["result_subcode"]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


def test_projects(srv: Server) -> None:
    name = _name("proj")
    project = srv.send("projects.create", {"name": name, "description": ""})["id"]
    found = srv.send(
        "projects.get_all",
        {
            "name": f"^{name}$",
            "only_fields": ["id"],
            "search_hidden": True,
            "shallow_search": False,
        },
    )
    assert found["projects"] == [{"id": project}]
    assert srv.send("projects.get_by_id", {"project": project})["project"]["name"] == name
    assert srv.send("projects.get_all", {"id": [project]})["projects"][0]["id"] == project
    assert _err(srv, "projects.get_by_id", {"project": "e" * 32}) == (400, 401)
    assert _err(srv, "projects.create", {"name": name}) == (400, 12)
    assert _err(srv, "projects.get_all", {"name": "(("}) == (400, 12)


def test_queue_crud_and_lookup(srv: Server) -> None:
    name = _name("queue")
    queue = srv.send("queues.create", {"name": name, "system_tags": ["k8s-glue"]})["id"]
    assert srv.send(
        "queues.get_all", {"name": f"^{name}$", "only_fields": ["id"], "search_hidden": False}
    )["queues"] == [{"id": queue}]
    doc = srv.send("queues.get_by_id", {"queue": queue})["queue"]
    assert (doc["name"], doc["entries"], doc["system_tags"]) == (name, [], ["k8s-glue"])
    # the SDK first tries the queue *name* as an id and expects a 400
    assert _err(srv, "queues.get_by_id", {"queue": name}) == (400, 701)
    assert _err(srv, "queues.get_next_task", {"queue": "a" * 32}) == (400, 701)
    assert _err(srv, "queues.create", {"name": name}) == (400, 12)
    task = srv.send("tasks.create", {"name": "qtask", "type": "training"})["id"]
    assert srv.send("queues.add_task", {"queue": queue, "task": task}) == {"added": 1}
    assert srv.send("queues.get_num_entries", {"queue": queue}) == {"num": 1}
    entries = srv.send("queues.get_all", {"id": [queue], "only_fields": ["id", "entries"]})
    assert [e["task"] for e in entries["queues"][0]["entries"]] == [task]
    assert _err(srv, "queues.delete", {"queue": queue}) == (400, 702)
    assert srv.send("queues.remove_task", {"queue": queue, "task": task}) == {"removed": 1}
    assert srv.send("queues.delete", {"queue": queue}) == {"deleted": 1}
    assert _err(srv, "queues.get_by_id", {"queue": queue}) == (400, 701)


def test_default_queue(make_embedded_server: Any) -> None:
    srv = make_embedded_server("defaultq")
    assert _err(srv, "queues.get_default", {}) == (400, 707)
    task = srv.send("tasks.create", {"name": "dqtask", "type": "training"})["id"]
    assert _err(srv, "tasks.enqueue", {"task": task}) == (400, 707)
    queue = srv.send("queues.create", {"name": "default", "system_tags": ["default"]})["id"]
    assert srv.send("queues.get_default", {}) == {"id": queue, "name": "default"}
    srv.send("tasks.enqueue", {"task": task})
    assert (
        srv.send("queues.get_next_task", {"queue": queue, "get_task_info": True})["entry"]["task"]
        == task
    )


def test_get_next_task_fifo_and_status_untouched(srv: Server) -> None:
    queue = srv.send("queues.create", {"name": _name("fifo")})["id"]
    ids = [
        srv.send("tasks.create", {"name": f"fifo-{i}", "type": "training"})["id"] for i in range(3)
    ]
    for task_id in ids:
        srv.send("tasks.enqueue", {"task": task_id, "queue": queue})
    popped = []
    while entry := srv.send("queues.get_next_task", {"queue": queue}):
        popped.append(entry["entry"]["task"])
        assert entry["entry"]["added"]
    assert popped == ids
    status = srv.send("tasks.get_all", {"id": ids, "only_fields": ["status"]})["tasks"]
    assert {t["status"] for t in status} == {"queued"}


def test_move_task_in_queue(srv: Server) -> None:
    queue = srv.send("queues.create", {"name": _name("move")})["id"]
    other = srv.send("queues.create", {"name": _name("move-other")})["id"]
    a, b, c, d = (
        srv.send("tasks.create", {"name": f"move-{i}", "type": "training"})["id"] for i in range(4)
    )
    for task_id in (a, b, c, d):
        srv.send("queues.add_task", {"queue": queue, "task": task_id})
        srv.send("queues.add_task", {"queue": other, "task": task_id})

    def order(q: str = queue) -> list[str]:
        doc = srv.send("queues.get_by_id", {"queue": q})["queue"]
        return [e["task"] for e in doc["entries"]]

    assert srv.send("queues.move_task_to_front", {"queue": queue, "task": c}) == {"position": 0}
    assert order() == [c, a, b, d]
    assert srv.send("queues.move_task_to_back", {"queue": queue, "task": c}) == {"position": 3}
    assert order() == [a, b, d, c]
    assert srv.send("queues.move_task_forward", {"queue": queue, "task": d}) == {"position": 1}
    assert order() == [a, d, b, c]
    body = {"queue": queue, "task": a, "count": 2}
    assert srv.send("queues.move_task_backward", body) == {"position": 2}
    assert order() == [d, b, a, c]
    body = {"queue": queue, "task": b, "count": 9}
    assert srv.send("queues.move_task_forward", body) == {"position": 0}
    assert order() == [b, d, a, c]
    assert order(other) == [a, b, c, d]  # the other queue is untouched
    assert _err(srv, "queues.move_task_forward", {**body, "count": 0}) == (400, 12)
    srv.send("queues.remove_task", {"queue": queue, "task": c})
    assert _err(srv, "queues.move_task_to_front", {"queue": queue, "task": c}) == (400, 703)
    assert _err(srv, "queues.move_task_to_front", {"queue": "a" * 32, "task": c}) == (400, 701)
    popped = [srv.send("queues.get_next_task", {"queue": queue})["entry"]["task"] for _ in "xyz"]
    assert popped == [b, d, a]


def test_workers(srv: Server) -> None:
    worker = _name("host") + ":0"
    queue = srv.send("queues.create", {"name": _name("wq")})["id"]
    assert srv.send("workers.register", {"worker": worker, "queues": [queue]}) == {}
    listed = {w["id"]: w for w in srv.send("workers.get_all", {})["workers"]}
    assert listed[worker]["queues"][0]["id"] == queue
    task = srv.send("tasks.create", {"name": "wtask", "type": "training"})["id"]
    srv.send(
        "workers.status_report",
        {
            "worker": worker,
            "task": task,
            "timestamp": 1,
            "is_daemon": True,
            "machine_stats": {"cpu_usage": [1.0]},
        },
    )
    got = srv.send("tasks.get_all", {"id": [task], "only_fields": ["last_worker"]})["tasks"]
    assert got[0]["last_worker"] == worker
    listed = {w["id"]: w for w in srv.send("workers.get_all", {})["workers"]}
    assert listed[worker]["task"]["id"] == task
    assert srv.send("workers.get_runtime_properties", {"worker": worker}) == {
        "runtime_properties": []
    }
    srv.send(
        "workers.set_runtime_properties",
        {"worker": worker, "runtime_properties": [{"key": "force", "value": "on"}]},
    )
    props = srv.send("workers.get_runtime_properties", {"worker": worker})["runtime_properties"]
    assert props == [{"key": "force", "value": "on"}]
    assert srv.send("workers.unregister", {"worker": worker}) == {}
    assert worker not in {w["id"] for w in srv.send("workers.get_all", {})["workers"]}
    assert _err(srv, "workers.status_report", {"worker": 5}) == (400, 12)


def _pop_all(url: str, token: str, queue: str, out: Any) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    got = []
    while True:
        reply = session.post(f"{url}/queues.get_next_task", json={"queue": queue}, timeout=60)
        assert reply.status_code == 200
        data = reply.json()["data"]
        if not data:
            break
        got.append(data["entry"]["task"])
    out.put(got)


@pytest.mark.slow
def test_eight_processes_pop_each_task_exactly_once(embedded_server: Server) -> None:
    srv = embedded_server
    queue = srv.send("queues.create", {"name": "race"})["id"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {srv.token()}"
    ids = []
    for i in range(1000):
        reply = session.post(
            f"{srv.url}/tasks.create", json={"name": f"race-{i}", "type": "training"}
        )
        task_id = reply.json()["data"]["id"]
        session.post(f"{srv.url}/tasks.enqueue", json={"task": task_id, "queue": queue})
        ids.append(task_id)
    assert srv.send("queues.get_num_entries", {"queue": queue})["num"] == 1000
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_pop_all, args=(srv.url, srv.token(), queue, results)) for _ in range(8)
    ]
    for proc in procs:
        proc.start()
    popped: list[str] = []
    per_process = [results.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    for got in per_process:
        popped.extend(got)
    assert len(popped) == len(ids)  # none popped twice
    assert sorted(popped) == sorted(ids)  # none lost
    assert sum(1 for got in per_process if got) > 1  # really concurrent
    assert srv.send("queues.get_num_entries", {"queue": queue})["num"] == 0
