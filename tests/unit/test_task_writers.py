"""Who writes what on a task: the submitter and the executor never wipe each other's keys.

``tasks.edit`` replaces ``runtime`` whole (clearml-api.md §3), so two read-merge-write writers
lose keys when they interleave. The submitter therefore records its job only in the
``properties`` section (``tasks.edit_hyper_params``, item-wise), and the executor alone merges
``runtime`` (docs/structure.md, "Who writes what on a task"). These tests interleave the two
writers at the worst points against the embedded server.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from hpcagent.api import ApiClient
from hpcagent.executor.main import merge_runtime
from hpcagent.executor.task_info import TaskInfo, runtime_record, should_run
from hpcagent.scheduler.registry import job_identity
from hpcagent.submitter import taskops

JOB = job_identity({"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[3-4]"})
WORKER = "node3:slurm-4242"


def _new_task(client: ApiClient) -> str:
    tid = str(client.send("tasks.create", {"name": "writers", "type": "training"})["id"])
    # what the user or the SDK put there before: must survive everything below
    client.send("tasks.edit", {"task": tid, "force": True, "runtime": {"user_key": "kept"}})
    prop = {"section": "properties", "name": "owner", "value": "alice", "type": "str"}
    client.send("tasks.edit_hyper_params", {"task": tid, "hyperparams": [prop]})
    return tid


def _submitter_records(client: ApiClient, tid: str, nodes: str = "") -> None:
    taskops.record_job(
        client,
        tid,
        job_id="4242",
        scheduler="slurm",
        queue_name="gpu",
        worker_id="login:hpcagent-slurm",
        nodes=nodes,
    )


class Interleaving:
    """A client whose ``tasks.edit`` first lets ``meanwhile`` run: the other writer acts
    between the executor's read and its write, the worst moment."""

    def __init__(self, client: ApiClient, meanwhile: Any) -> None:
        self.client = client
        self.meanwhile = meanwhile

    def send(self, endpoint: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if endpoint == "tasks.edit":
            self.meanwhile()
        return self.client.send(endpoint, dict(body or {}))

    def send_lines(self, endpoint: str, items: Any, repeat: bool = True) -> list[dict[str, Any]]:
        return self.client.send_lines(endpoint, items)


def _check_all_keys(client: ApiClient, tid: str) -> None:
    task = client.send("tasks.get_all", {"id": [tid]})["tasks"][0]
    assert task["runtime"] == {
        "user_key": "kept",
        "_exec_agent_hostname": "node3",  # the compute node, never the login node
        "hpcagent_worker": WORKER,
        "job_scheduler": "slurm",
        "job_id": "4242",
        "job_nodes": "node[3-4]",
    }
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    assert props == {
        "owner": "alice",
        "job-id": "4242",
        "job-scheduler": "slurm",
        "job-queue": "gpu",
        "job-worker": "login:hpcagent-slurm",
        "job-nodes": "node[3-4]",
    }
    # and the executor's ownership check reads the submitter's record
    info = TaskInfo.from_task({**task, "status": "in_progress"})
    assert should_run(info, JOB, force=False)[0] is True
    other = job_identity({"SLURM_JOB_ID": "9999"})
    assert should_run(info, other, force=False)[0] is False


@pytest.mark.parametrize("order", ["submitter-first", "executor-first", "inside-executor"])
def test_interleaved_writes_keep_every_key(client: ApiClient, order: str) -> None:
    tid = _new_task(client)
    keys = runtime_record(JOB, WORKER, "node3")
    if order == "submitter-first":
        _submitter_records(client, tid)
        merge_runtime(client, tid, keys)
        _submitter_records(client, tid, nodes="node[3-4]")
    elif order == "executor-first":
        merge_runtime(client, tid, keys)
        _submitter_records(client, tid)
        _submitter_records(client, tid, nodes="node[3-4]")
    else:  # both submitter writes land between the executor's read and its edit

        def both() -> None:
            _submitter_records(client, tid)
            _submitter_records(client, tid, nodes="node[3-4]")

        merge_runtime(Interleaving(client, both), tid, keys)
    _check_all_keys(client, tid)


def test_concurrent_writers_keep_every_key(client: ApiClient) -> None:
    """Both writers hammering one task from two threads (real HTTP, real server)."""
    tid = _new_task(client)
    keys = runtime_record(JOB, WORKER, "node3")
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            for i in range(20):
                _submitter_records(client, tid, nodes="node[3-4]" if i % 2 else "")
            _submitter_records(client, tid, nodes="node[3-4]")
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=submitter)
    thread.start()
    for _ in range(20):
        merge_runtime(client, tid, keys)
    thread.join(timeout=60)
    assert not errors
    _check_all_keys(client, tid)
