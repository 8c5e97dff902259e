"""The job state shown as a queued task's status message never overwrites the message of a task
that ended in the meantime (an executor fails an invalid record within a second of its job
starting, between the tracker's status read and its write). Against the real embedded server
and a real LocalScheduler job (tests/e2e/test_hostile_tasks.py shows it through a daemon).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_submitter_loop import TEMPLATE, Rig

from hpcagent.api import ApiClient
from hpcagent.submitter import taskops
from hpcagent.submitter.options import QueueRef


def test_job_state_never_overwrites_the_message_of_an_ended_task(
    rig: Rig, client: ApiClient, embedded_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    qid = rig.queue("racing")
    tid = rig.task("ends itself", qid)
    rig.pre = "sleep 30"
    s = rig.submitter([QueueRef(qid, "racing", rig.template(TEMPLATE))])
    assert s.pull() == 1
    real_record_job = taskops.record_job

    def executor_fails_meanwhile(c: ApiClient, task_id: str, **kw: Any) -> None:
        # between the tracker's read (queued) and its message write, the executor fails it
        client.send("tasks.failed", {
            "task": task_id, "force": True, "status_reason": "invalid task record",
            "status_message": "the task record cannot be run: script.diff is an object",
        })  # fmt: skip
        real_record_job(c, task_id, **kw)

    monkeypatch.setattr(taskops, "record_job", executor_fails_meanwhile)
    for _ in range(20):  # until the local job is seen RUNNING on its node
        s.tracker.track()
        if rig.get(tid)["status"] == "failed":
            break
    task = rig.get(tid)
    assert task["status"] == "failed"
    assert task["status_message"] == "the task record cannot be run: script.diff is an object"
    entry = s.ledger.get(tid)
    assert entry is not None
    rig.scheduler.cancel([str(entry.job_id)])
    s.shutdown()


def _failed_meanwhile(client: ApiClient, tid: str) -> None:
    client.send("tasks.failed", {
        "task": tid, "force": True, "status_reason": "invalid task record",
        "status_message": "the executor's own reason",
    })  # fmt: skip


def test_the_status_check_and_the_write_are_one_transaction(
    rig: Rig, client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window the CI run hit: the executor ends the task after any read the submitter could
    make and before its write lands. With the embedded server's ``if_status`` the write itself
    is refused, so no read-then-write window is left."""
    qid = rig.queue("racing-write")
    tid = rig.task("ends at the last moment", qid)
    real_send = client.send
    sent: list[dict[str, Any]] = []

    def executor_wins(endpoint: str, body: Any = None) -> dict[str, Any]:
        if endpoint == "tasks.update":
            sent.append(dict(body))
            _failed_meanwhile(client, tid)  # lands just before the update does
        return real_send(endpoint, body)

    monkeypatch.setattr(client, "send", executor_wins)
    assert taskops.set_queued_message(client, tid, "slurm job 7: PENDING (Priority)") is False
    monkeypatch.undo()
    task = rig.get(tid)
    assert (task["status"], task["status_message"]) == ("failed", "the executor's own reason")
    assert [b.get("if_status") for b in sent] == [["queued"]]


def test_a_queued_task_gets_the_job_state_and_other_servers_get_read_then_write(
    rig: Rig, client: ApiClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    qid = rig.queue("plain-write")
    tid = rig.task("waits", qid)
    assert taskops.set_queued_message(client, tid, "slurm job 8: PENDING (Resources)") is True
    assert rig.get(tid)["status_message"] == "slurm job 8: PENDING (Resources)"
    # A server without the extension (a real clearml-server): no if_status is sent, the status
    # is read first, and the fallback is logged once.
    monkeypatch.setattr(client.compat, "has_feature", lambda name: False)
    real_send = client.send
    bodies: list[dict[str, Any]] = []

    def record(endpoint: str, body: Any = None) -> dict[str, Any]:
        if endpoint == "tasks.update":
            bodies.append(dict(body))
        return real_send(endpoint, body)

    monkeypatch.setattr(client, "send", record)
    caplog.set_level("INFO", logger="hpcagent.api.compat")
    assert taskops.set_queued_message(client, tid, "slurm job 8: PENDING (Priority)") is True
    _failed_meanwhile(client, tid)
    assert taskops.set_queued_message(client, tid, "slurm job 8: RUNNING") is False
    assert bodies == [{"task": tid, "status_message": "slurm job 8: PENDING (Priority)"}]
    assert rig.get(tid)["status_message"] == "the executor's own reason"
    assert sum("no conditional tasks.update" in r.message for r in caplog.records) == 1


def test_if_status_of_the_wrong_type_is_a_clear_400(rig: Rig, client: ApiClient) -> None:
    from hpcagent.errors import ApiError

    tid = rig.task("typed", rig.queue("typed-q"))
    with pytest.raises(ApiError) as err:
        client.send("tasks.update", {"task": tid, "status_message": "x", "if_status": [3]})
    assert err.value.result_code == 400
    assert rig.get(tid).get("status_message") in (None, "")
