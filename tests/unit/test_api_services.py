"""The thin service helpers (client.tasks/queues/workers/events/projects) on the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcagent.api import ApiClient
from hpcagent.config import load_settings
from hpcagent.errors import ApiError


@pytest.fixture
def client(embedded_server: Any) -> ApiClient:
    return ApiClient(
        embedded_server.url,
        embedded_server.access_key,
        embedded_server.secret_key,
        worker="host:0",
        retries=2,
        backoff_s=0.05,
    )


def test_from_settings_reads_api_and_worker(embedded_server: Any, tmp_path: Path) -> None:
    env = {
        "CLEARML_API_HOST": embedded_server.url,
        "CLEARML_API_ACCESS_KEY": embedded_server.access_key,
        "CLEARML_API_SECRET_KEY": embedded_server.secret_key,
        "CLEARML_WORKER_ID": "node7:gpu0",
    }
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    settings = load_settings(config_file=empty, env=env)
    client = ApiClient.from_settings(settings)
    assert client.host == embedded_server.url
    assert client.worker == "node7:gpu0"
    assert client.retries == settings.api.retries
    assert client.timeout[1] == settings.api.timeout_s
    assert embedded_server.secret_key not in repr(client)
    assert isinstance(client.queues.get_all(), list)


def test_projects_get_or_create_is_idempotent(client: ApiClient) -> None:
    pid = client.projects.get_or_create("Team/Vision")
    assert client.projects.get_or_create("Team/Vision") == pid
    assert client.projects.get_or_create("Team") != pid
    assert client.projects.get_by_id(pid)["name"] == "Team/Vision"


def test_queues_by_name_exact_case_insensitive(client: ApiClient) -> None:
    gpu = client.queues.create("gpu")
    client.queues.create("gpu-long")
    assert client.queues.by_name("GPU")["id"] == gpu
    assert client.queues.resolve(gpu)["id"] == gpu
    with pytest.raises(ApiError) as info:
        client.queues.by_name("gp")
    assert info.value.subcode == 701
    created = client.queues.by_name("a.b+c", create=True)
    assert client.queues.by_name("A.B+C")["id"] == created["id"]


def test_agent_flow_through_helpers(client: ApiClient) -> None:
    pid = client.projects.get_or_create("flow")
    qid = client.queues.create("flow-q")
    assert client.queues.get_next_task(qid) is None  # empty queue: data == {}
    tid = client.tasks.create("flow task", pid)
    client.tasks.edit(tid, script={"entry_point": "a.py", "diff": "print(1)\n"})
    client.tasks.edit(tid, script={"working_dir": "."})  # script is shallow-merged
    assert client.tasks.get_by_id(tid)["script"]["entry_point"] == "a.py"
    assert client.tasks.enqueue(tid, qid)["queued"] == 1
    assert client.queues.get_num_entries(qid) == 1
    entry = client.queues.get_next_task(qid)
    assert entry is not None
    assert entry["task"] == tid
    assert client.queues.get_num_entries(qid) == 0

    client.workers.register(queues=[qid])
    client.workers.status_report(task=tid, queue=qid, queues=[qid])
    assert "host:0" in [w.get("id") for w in client.workers.get_all()]
    client.tasks.started(tid, status_reason="worker started execution")
    client.tasks.ping(tid)
    client.tasks.set_requirements(tid, {"pip": "numpy\n"})
    client.tasks.edit_hyper_params(
        tid, [{"section": "properties", "name": "slurm_job", "value": "42"}]
    )
    params = {(p["section"], p["name"]): p["value"] for p in client.tasks.get_hyper_params(tid)}
    assert params[("properties", "slurm_job")] == "42"
    assert client.events.add_log(tid, ["one", "two"], level="info") == 1
    assert client.events.add_scalars(tid, [("loss", "train", 0.5, 1), ("loss", "train", 0.4, 2)])
    log = client.events.get_task_log(tid, navigate_earlier=False)
    assert "one\ntwo" in [e["msg"] for e in log["events"]]
    client.tasks.completed(tid, status_reason="worker execution done")
    status = client.tasks.get_status(tid)
    assert status["status"] == "completed"
    client.workers.unregister(queues=[qid])
    assert "host:0" not in [w.get("id") for w in client.workers.get_all()]


def test_stop_reset_clone_dequeue(client: ApiClient) -> None:
    qid = client.queues.create("ops-q")
    tid = client.tasks.create("ops task", client.projects.get_or_create("ops"))
    client.tasks.enqueue(tid, qid)
    assert client.tasks.dequeue(tid)["updated"] == 1
    assert client.tasks.get_status(tid)["status"] == "created"
    client.tasks.enqueue(tid, qid)
    client.tasks.stop(tid)
    assert client.tasks.get_status(tid)["status"] == "stopped"
    client.tasks.reset(tid)
    assert client.tasks.get_status(tid)["status"] == "created"
    clone = client.tasks.clone(tid, new_task_name="ops clone")
    assert client.tasks.get_by_id(clone)["name"] == "ops clone"
    client.tasks.update(clone, status_message="hello")
    assert client.tasks.get_status(clone)["status_message"] == "hello"
    client.tasks.failed(clone, status_reason="x")  # force: created -> failed is allowed
    assert client.tasks.get_status(clone)["status"] == "failed"


def test_queue_move_helpers(client: ApiClient) -> None:
    qid = client.queues.create("move-q")
    project = client.projects.get_or_create("move")
    ids = [client.tasks.create(f"move {i}", project) for i in range(3)]
    for tid in ids:
        client.queues.add_task(qid, tid)
    assert client.queues.move_task_to_front(qid, ids[2]) == 0
    assert client.queues.move_task_to_back(qid, ids[0]) == 2
    assert client.queues.move_task_backward(qid, ids[2], count=1) == 1
    assert client.queues.move_task_forward(qid, ids[0], count=5) == 0
    popped = [client.queues.get_next_task(qid) for _ in ids]
    assert [e["task"] for e in popped if e] == [ids[0], ids[1], ids[2]]
    with pytest.raises(ApiError) as err:
        client.queues.move_task_to_front(qid, ids[0])  # no longer in the queue
    assert (err.value.result_code, err.value.subcode) == (400, 703)


def test_add_log_large_output_is_split(client: ApiClient) -> None:
    tid = client.tasks.create("big log", client.projects.get_or_create("logs"))
    lines = [f"{i:06d} " + "x" * 1000 for i in range(3000)]  # ~3 MB of output
    added = client.events.add_log(tid, lines)
    assert added >= 3000 * 1007 // (64 * 1024)
    got: list[str] = []
    ts = None
    while True:
        body: dict[str, Any] = {"batch_size": 500, "navigate_earlier": False}
        if ts is not None:
            body["from_timestamp"] = ts
        events = client.events.get_task_log(tid, **body)["events"]
        events = [e for e in events if ts is None or e["timestamp"] > ts]
        if not events:
            break
        got.extend(e["msg"] for e in events)
        ts = events[-1]["timestamp"]
    assert "\n".join(got).splitlines() == lines
