"""The Submitter hooks the daemon uses (``can_start``, ``task_vars``, ``report_extra``,
the scheduler's ``job_label``) and the round-robin rule, against the real embedded server and a
LocalScheduler whose jobs run a plain script (no executor needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcagent.api import ApiClient
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions

TEMPLATE = """#!/bin/bash
echo "GPUS=${CLEARML_DAEMON_GPUS:none} TASK=${CLEARML_TASK.name}"
"""


def _queue(client: ApiClient, name: str, tmpl: Path) -> QueueRef:
    return QueueRef(str(client.send("queues.create", {"name": name})["id"]), name, tmpl)


def _task(client: ApiClient, q: QueueRef, name: str) -> str:
    tid = str(client.send("tasks.create", {"name": name, "type": "training"})["id"])
    client.send("tasks.enqueue", {"task": tid, "queue": q.id})
    return tid


def _submitter(tmp: Path, client: ApiClient, queues: list[QueueRef], **kw: Any) -> Submitter:
    opts = SubmitterOptions(
        queues=queues,
        state_dir=tmp / "state",
        worker_id="test:daemon-hooks",
        poll_interval_s=0.1,
        **kw,
    )
    sched = LocalScheduler(output_dir=tmp / "out")
    s = Submitter(client, sched, Ledger(tmp / "state" / "ledger.sqlite"), opts, lambda p, d=None: d)
    s.start()
    return s


def test_can_start_skips_a_queue_and_task_vars_reach_the_script(
    tmp_path: Path, client: ApiClient
) -> None:
    tmpl = tmp_path / "t.template"
    tmpl.write_text(TEMPLATE)
    big, small = _queue(client, "big", tmpl), _queue(client, "small", tmpl)
    t_big, t_small = _task(client, big, "big-task"), _task(client, small, "small-task")
    asked: list[str] = []

    def can_start(q: QueueRef) -> bool:
        asked.append(q.name)
        return q.name != "big"

    s = _submitter(
        tmp_path,
        client,
        [big, small],
        can_start=can_start,
        task_vars=lambda tid, q: {"CLEARML_DAEMON_GPUS": f"{q.name}-gpus"},
        report_extra=lambda: {"machine_stats": {"memory_free": 123.0}},
    )
    assert s.pull() == 1
    assert asked[:2] == ["big", "small"]
    entry = s.ledger.get(t_small)
    assert entry is not None
    assert entry.script_path is not None
    assert "GPUS=small-gpus TASK=small-task" in Path(entry.script_path).read_text()
    status = client.send("tasks.get_all", {"id": [t_big, t_small]})["tasks"]
    by_id = {t["id"]: t for t in status}
    assert by_id[t_big]["status"] == "queued"  # never popped: its queue was skipped
    assert by_id[t_small]["status_message"].startswith("local job ")
    s.report()
    workers = {w["id"]: w for w in client.send("workers.get_all", {})["workers"]}
    assert workers["test:daemon-hooks"]["machine_stats"]["memory_free"] == 123.0
    s.ledger.close()


def test_fairness_resumes_after_the_last_queue_served(tmp_path: Path, client: ApiClient) -> None:
    """With one slot, each pull serves one queue; the next pull starts at the next queue."""
    tmpl = tmp_path / "t.template"
    tmpl.write_text("#!/bin/bash\necho ${CLEARML_TASK.name}\n")
    qs = [_queue(client, f"fair-{i}", tmpl) for i in range(3)]
    for q in qs:
        for i in range(2):
            _task(client, q, f"{q.name}-{i}")
    served: list[str] = []
    s = _submitter(
        tmp_path,
        client,
        qs,
        order_fairness=True,
        can_start=lambda q: not s.ledger.live(),  # one slot
    )
    for _ in range(6):
        assert s.pull() == 1
        live = s.ledger.live()
        served.append(live[0].queue_name)
        s.ledger.mark_finished(live[0].task_id, "completed")
    assert served == ["fair-0", "fair-1", "fair-2"] * 2
    s.ledger.close()
