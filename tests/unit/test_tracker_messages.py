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
