"""The executor's final status never overwrites one the task set itself (issue 21): it reads
the status first, and sends its call without ``force`` as clearml-agent does. The same rule
against the real server and the SDK is in tests/e2e/test_sdk_tasks.py."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest

from hpcagent.executor.main import Executor
from hpcagent.executor.options import ExecuteOptions, ExecutorConfig


class _Client:
    def __init__(self, status: str) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def send(self, endpoint: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((endpoint, dict(body or {})))
        if endpoint == "tasks.get_all":
            return {"tasks": [{"id": "t", "status": self.status}]}
        return {}

    def send_lines(self, endpoint: str, items: Any, repeat: bool = True) -> list[dict[str, Any]]:
        return []


def _executor(client: _Client, env: dict[str, str] | None = None) -> Executor:
    opts = ExecuteOptions(task_id="t", worker_id="w")
    return Executor(ExecutorConfig(), client, opts, env=env or {}, echo=io.BytesIO())


@pytest.mark.parametrize("set_by_task", ["failed", "completed", "stopped", "published"])
def test_a_status_the_task_set_is_left(set_by_task: str) -> None:
    client = _Client(set_by_task)
    _executor(client)._end("completed", "worker execution done", "")
    assert [c for c, _ in client.calls] == ["tasks.get_all"]


@pytest.mark.parametrize("action", ["completed", "failed", "stopped"])
def test_in_progress_ends_without_force(action: str) -> None:
    client = _Client("in_progress")
    _executor(client)._end(action, "why", "msg")
    endpoint, body = client.calls[-1]
    assert endpoint == f"tasks.{action}"
    assert body["force"] is False
    assert (body["status_reason"], body["status_message"]) == ("why", "msg")


def test_other_ranks_write_nothing() -> None:
    client = _Client("in_progress")
    _executor(client, env={"SLURM_JOB_ID": "5", "SLURM_PROCID": "1"})._end("completed", "done", "")
    assert client.calls == []
