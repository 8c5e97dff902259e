"""tasks.* endpoints of the embedded server, through plain HTTP (real server process)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

Server = Any  # tests/conftest.py::EmbeddedServer


def _err(srv: Server, endpoint: str, body: dict[str, Any]) -> tuple[int, int]:
    reply = srv.request(endpoint, body)
    meta = reply.json()["meta"]
    return reply.status_code, meta["result_subcode"]


def _new_task(srv: Server, **fields: Any) -> str:
    body = {"name": f"t-{uuid.uuid4().hex[:8]}", "type": "training", **fields}
    task_id: str = srv.send("tasks.create", body)["id"]
    return task_id


def _task(srv: Server, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = srv.send("tasks.get_by_id", {"task": task_id})["task"]
    return task


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


def test_create_and_get_by_id(srv: Server) -> None:
    project = srv.send("projects.create", {"name": f"p-{uuid.uuid4().hex[:6]}"})["id"]
    task_id = _new_task(
        srv,
        project=project,
        comment="hello",
        system_tags=["development"],
        script={"repository": "https://x/r.git", "entry_point": "a.py"},
    )
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)
    task = _task(srv, task_id)
    assert task["status"] == "created"
    assert task["project"] == project
    assert task["comment"] == "hello"
    assert task["script"]["entry_point"] == "a.py"
    assert task["user"]
    assert "T" in task["created"]  # ISO-8601
    assert _err(srv, "tasks.get_by_id", {"task": "0" * 32}) == (400, 101)
    assert _err(srv, "tasks.create", {"name": "xyz", "type": "testing", "project": "f" * 32}) == (
        400,
        401,
    )


def test_get_all_filters_and_only_fields(srv: Server) -> None:
    project = srv.send("projects.create", {"name": f"p-{uuid.uuid4().hex[:6]}"})["id"]
    a = _new_task(srv, project=project, name="alpha-one", script={"branch": "main", "x": 1})
    b = _new_task(srv, project=project, name="beta-two", system_tags=["archived"])
    c = _new_task(srv, project=project, name="gamma", system_tags=["hidden"])
    srv.send("tasks.started", {"task": b})

    def ids(**body: Any) -> set[str]:
        return {t["id"] for t in srv.send("tasks.get_all", {"project": [project], **body})["tasks"]}

    assert ids() == {a, b}
    assert ids(search_hidden=True) == {a, b, c}
    assert ids(name="^alpha") == {a}
    assert ids(name="TWO") == {b}  # unanchored, case-insensitive
    assert ids(status=["in_progress"]) == {b}
    assert ids(system_tags=["-archived"]) == {a}
    assert ids(system_tags=["archived"]) == {b}
    assert ids(id=[a, c]) == {a, c}  # explicit ids see hidden tasks
    tasks = srv.send("tasks.get_all", {"id": [a], "only_fields": ["name", "script.branch"]})
    assert tasks["tasks"] == [{"id": a, "name": "alpha-one", "script": {"branch": "main"}}]
    ordered = srv.send(
        "tasks.get_all",
        {"project": project, "order_by": ["-name"], "search_hidden": True, "only_fields": ["name"]},
    )
    assert [t["name"] for t in ordered["tasks"]] == ["gamma", "beta-two", "alpha-one"]


def test_edit_merge_rules_and_status_guard(srv: Server) -> None:
    task_id = _new_task(
        srv,
        script={"repository": "r", "branch": "b"},
        hyperparams={"Args": {"lr": {"value": "1"}}},
        runtime={"a": 1, "b": 2},
        container={"image": "i"},
    )
    reply = srv.send(
        "tasks.edit",
        {"task": task_id, "script": {"version_num": "abc"}, "runtime": {"c": 3}, "method": "get"},
    )
    assert reply["updated"] == 1
    task = _task(srv, task_id)
    assert task["script"] == {"repository": "r", "branch": "b", "version_num": "abc"}
    assert task["runtime"] == {"c": 3}  # replaced whole
    assert task["hyperparams"] == {"Args": {"lr": {"value": "1"}}}  # untouched
    srv.send("tasks.edit", {"task": task_id, "hyperparams": {"General": {}}})
    assert _task(srv, task_id)["hyperparams"] == {"General": {}}
    srv.send("tasks.started", {"task": task_id})
    assert _err(srv, "tasks.edit", {"task": task_id, "comment": "x"}) == (400, 110)
    srv.send("tasks.edit", {"task": task_id, "comment": "x", "force": True})
    assert _task(srv, task_id)["comment"] == "x"


def test_update_and_set_requirements(srv: Server) -> None:
    task_id = _new_task(srv, script={"repository": "r"})
    srv.send("tasks.started", {"task": task_id})
    srv.send(
        "tasks.update",
        {
            "task": task_id,
            "status_message": "pending in slurm job 7",
            "tags": ["x"],
            "name": "renamed",
        },
    )
    task = _task(srv, task_id)
    assert task["status_message"] == "pending in slurm job 7"
    assert task["tags"] == ["x"]
    assert task["name"] == "renamed"
    srv.send("tasks.set_requirements", {"task": task_id, "requirements": {"pip": "numpy\n"}})
    assert _task(srv, task_id)["script"] == {"repository": "r", "requirements": {"pip": "numpy\n"}}
    assert _err(srv, "tasks.set_requirements", {"task": task_id, "requirements": "x"}) == (400, 12)


def test_status_machine_and_status_calls(srv: Server) -> None:
    task_id = _new_task(srv)
    assert _err(srv, "tasks.completed", {"task": task_id}) == (400, 110)  # created -> completed
    reply = srv.send(
        "tasks.started", {"task": task_id, "status_reason": "r1", "status_message": "m1"}
    )
    assert reply["started"] == 1
    assert reply["fields"]["status"] == "in_progress"
    task = _task(srv, task_id)
    assert (task["status_reason"], task["status_message"]) == ("r1", "m1")
    started = task["started"]
    assert started
    # same-status call is allowed and keeps the started time; reason/message overwritten
    srv.send("tasks.started", {"task": task_id, "force": False})
    task = _task(srv, task_id)
    assert task["started"] == started
    assert (task["status_reason"], task["status_message"]) == ("", "")
    srv.send("tasks.completed", {"task": task_id, "status_reason": "done"})
    task = _task(srv, task_id)
    assert task["status"] == "completed"
    assert task["completed"]
    assert _err(srv, "tasks.failed", {"task": task_id}) == (400, 110)  # completed -> failed
    srv.send("tasks.failed", {"task": task_id, "force": True})
    assert _task(srv, task_id)["status"] == "failed"
    srv.send("tasks.stopped", {"task": task_id})
    srv.send("tasks.close", {"task": task_id})
    assert _task(srv, task_id)["status"] == "closed"
    other = _new_task(srv)
    srv.send("tasks.started", {"task": other})
    srv.send("tasks.completed", {"task": other, "publish": True})
    assert _task(srv, other)["status"] == "published"
    assert _err(srv, "tasks.started", {"task": other}) == (400, 110)  # published is final


def test_stop_semantics(srv: Server) -> None:
    queue = srv.send("queues.create", {"name": f"q-{uuid.uuid4().hex[:6]}"})["id"]
    queued = _new_task(srv)
    srv.send("tasks.enqueue", {"task": queued, "queue": queue})
    srv.send("tasks.stop", {"task": queued})
    assert _task(srv, queued)["status"] == "stopped"
    assert srv.send("queues.get_num_entries", {"queue": queue})["num"] == 0
    # in progress with an active worker: only "stopping"
    running = _new_task(srv)
    srv.send("tasks.started", {"task": running})
    srv.send("workers.status_report", {"worker": "w1", "task": running, "timestamp": 1})
    assert _task(srv, running)["last_worker"] == "w1"
    srv.send("tasks.stop", {"task": running})
    task = _task(srv, running)
    assert (task["status"], task["status_message"]) == ("in_progress", "stopping")
    srv.send("tasks.stopped", {"task": running, "status_reason": "task was stopped"})
    assert _task(srv, running)["status"] == "stopped"
    # in progress without any worker: stopped at once
    orphan = _new_task(srv)
    srv.send("tasks.started", {"task": orphan})
    srv.send("tasks.stop", {"task": orphan})
    assert _task(srv, orphan)["status"] == "stopped"
    # created cannot be stopped unless forced
    fresh = _new_task(srv)
    assert _err(srv, "tasks.stop", {"task": fresh}) == (400, 110)
    srv.send("tasks.stop", {"task": fresh, "force": True})
    assert _task(srv, fresh)["status"] == "stopped"


def test_enqueue_dequeue_reset(srv: Server) -> None:
    name = f"q-{uuid.uuid4().hex[:6]}"
    q1 = srv.send("queues.create", {"name": name})["id"]
    q2 = srv.send("queues.create", {"name": name + "-2"})["id"]
    task_id = _new_task(srv, system_tags=["development"])
    reply = srv.send("tasks.enqueue", {"task": task_id, "queue": q1, "verify_watched_queue": False})
    assert (reply["queued"], reply["updated"]) == (1, 1)
    assert reply["fields"]["execution.queue"] == q1
    task = _task(srv, task_id)
    assert task["status"] == "queued"
    assert task["execution"]["queue"] == q1
    assert "development" not in task["system_tags"]
    # enqueue to another queue moves it
    srv.send("tasks.enqueue", {"task": task_id, "queue": q2})
    assert srv.send("queues.get_num_entries", {"queue": q1})["num"] == 0
    assert srv.send("queues.get_num_entries", {"queue": q2})["num"] == 1
    assert _err(srv, "tasks.enqueue", {"task": task_id, "queue": "f" * 32}) == (400, 701)
    reply = srv.send("tasks.dequeue", {"task": task_id})
    assert (reply["dequeued"], reply["updated"]) == (1, 1)
    assert _task(srv, task_id)["status"] == "created"
    # dequeue of a task that is not queued: updated 0 (agent's --require-queue)
    assert srv.send("tasks.dequeue", {"task": task_id})["updated"] == 0
    # enqueue by queue_name, then dequeue to in_progress
    srv.send("tasks.enqueue", {"task": task_id, "queue_name": name})
    reply = srv.send("tasks.dequeue", {"task": task_id, "new_status": "in_progress"})
    assert _task(srv, task_id)["status"] == "in_progress"
    srv.send("tasks.edit", {"task": task_id, "runtime": {"x": 1}, "force": True})
    srv.send("tasks.enqueue", {"task": task_id, "queue": q1, "force": True})
    reply = srv.send("tasks.reset", {"task": task_id})
    assert reply["dequeued"]["removed"] == 1
    task = _task(srv, task_id)
    assert task["status"] == "created"
    assert task["runtime"] == {}
    assert task["execution"]["queue"] is None
    assert task["started"] is None
    # a failed task may be enqueued again (failed -> queued)
    srv.send("tasks.failed", {"task": task_id, "force": True})
    srv.send("tasks.enqueue", {"task": task_id, "queue": q1})
    assert _task(srv, task_id)["status"] == "queued"


def test_clone_hyperparams_delete_ping(srv: Server) -> None:
    source = _new_task(
        srv,
        script={"repository": "r"},
        runtime={"a": 1},
        hyperparams={
            "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1", "type": "str"}}
        },
    )
    srv.send("tasks.started", {"task": source})
    clone = srv.send("tasks.clone", {"task": source, "new_task_name": "cloned"})["id"]
    task = _task(srv, clone)
    assert (task["name"], task["status"], task["parent"]) == ("cloned", "created", source)
    assert task["script"] == {"repository": "r"}
    assert task["runtime"] == {}
    srv.send(
        "tasks.edit_hyper_params",
        {
            "task": clone,
            "hyperparams": [
                {"section": "properties", "name": "k8s-queue", "value": "gpu"},
                {"section": "Args", "name": "epochs", "value": "3"},
            ],
        },
    )
    params = srv.send("tasks.get_hyper_params", {"tasks": [clone]})["params"]
    assert params[0]["task"] == clone
    flat = {(p["section"], p["name"]): p["value"] for p in params[0]["hyperparams"]}
    assert flat == {
        ("Args", "lr"): "0.1",
        ("Args", "epochs"): "3",
        ("properties", "k8s-queue"): "gpu",
    }
    srv.send(
        "tasks.edit_hyper_params",
        {
            "task": clone,
            "replace_hyperparams": "all",
            "hyperparams": [{"section": "A", "name": "b", "value": ""}],
        },
    )
    assert list(_task(srv, clone)["hyperparams"]) == ["A"]
    before = _task(srv, source)["last_update"]
    assert srv.send("tasks.ping", {"task": source}) == {}
    assert _task(srv, source)["last_update"] >= before
    assert _err(srv, "tasks.delete", {"task": source}) == (400, 110)  # in progress
    assert srv.send("tasks.delete", {"task": source, "force": True})["deleted"] is True
    assert srv.send("tasks.delete", {"task": clone})["deleted"] is True
    assert _err(srv, "tasks.get_by_id", {"task": clone}) == (400, 101)


def test_get_all_pages_in_sql_order_as_the_full_sort(srv: Server) -> None:
    """Column sorts (name/status/created/...) stream from SQL and stop at the page; the pages
    are the slices of the full, Python-sorted list (ties in creation order), as before."""
    project = srv.send("projects.create", {"name": f"p-{uuid.uuid4().hex[:6]}"})["id"]
    names = ["bbb", "aaa", "ccc", "aaa", "BBB", "ééé", "bbb"]
    ids = [_new_task(srv, project=project, name=n, tags=["odd"] if i % 2 else []) for i, n in
           enumerate(names)]  # fmt: skip
    srv.send("tasks.enqueue", {"task": ids[2], "queue_name": f"q-{uuid.uuid4().hex[:6]}"})

    def page(order: list[str], number: int, size: int, **extra: Any) -> list[str]:
        body = {"project": [project], "order_by": order, "page": number, "page_size": size}
        return [t["id"] for t in srv.send("tasks.get_all", {**body, **extra})["tasks"]]

    for order in (["name"], ["-name"], ["-created"], ["status", "-name"], ["-last_update"]):
        everything = page(order, 0, 100)
        assert len(everything) == len(ids)
        assert page(order, 0, 3) + page(order, 1, 3) + page(order, 2, 3) == everything
    by_name = page(["name"], 0, 100)
    assert [names[ids.index(i)] for i in by_name] == [
        "BBB",
        "aaa",
        "aaa",
        "bbb",
        "bbb",
        "ccc",
        "ééé",
    ]
    assert by_name[1:3] == [ids[1], ids[3]]  # equal names: creation order
    assert page(["-name"], 0, 100)[4:6] == [ids[1], ids[3]]
    assert page(["name"], 0, 2, tags=["odd"]) == [ids[1], ids[3]]
    assert page(["name"], 1, 2, tags=["odd"]) == [ids[5]]


def test_get_all_filters_by_execution_queue(srv: Server) -> None:
    queue = srv.send("queues.create", {"name": f"q-{uuid.uuid4().hex[:6]}"})["id"]
    task_id = _new_task(srv)
    _new_task(srv)
    srv.send("tasks.enqueue", {"task": task_id, "queue": queue})
    found = srv.send("tasks.get_all", {"execution.queue": [queue]})["tasks"]
    assert [t["id"] for t in found] == [task_id]


def test_projects_get_all_ex_include_stats(srv: Server) -> None:
    project = srv.send("projects.create", {"name": f"p-{uuid.uuid4().hex[:6]}"})["id"]
    empty = srv.send("projects.create", {"name": f"p-{uuid.uuid4().hex[:6]}"})["id"]
    for _ in range(3):
        _new_task(srv, project=project)
    queued = _new_task(srv, project=project)
    srv.send("tasks.enqueue", {"task": queued, "queue_name": f"q-{uuid.uuid4().hex[:6]}"})
    reply = srv.send("projects.get_all_ex", {"id": [project, empty], "include_stats": True})
    stats = {p["id"]: p["stats"]["active"] for p in reply["projects"]}
    assert stats[project] == {"status_count": {"created": 3, "queued": 1}, "total_tasks": 4}
    assert stats[empty] == {"status_count": {}, "total_tasks": 0}
    plain = srv.send("projects.get_all", {"id": [project]})["projects"][0]
    assert "stats" not in plain
