"""The tracker never fails a task as LOST because the scheduler did not answer (issue 14, item 1).

A job whose state comes from the scheduler's cache (slurmctld or slurmdbd away: source
``cache``) is not "gone": however long that lasts, the lost clock does not run. Only an answer
"not found" starts it. Against the real embedded server and a LocalScheduler whose status
answers are replaced (the scheduler seam; tests/unit/test_scheduler_slurm.py shows the Slurm
backend answering ``cache`` at the subprocess seam, tests/slurm/test_submitter_outage.py the
real thing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from test_submitter_loop import TEMPLATE, Rig

from hpcagent.api import ApiClient
from hpcagent.scheduler.base import JobStatus, unknown_status
from hpcagent.submitter.ledger import SUBMITTED
from hpcagent.submitter.options import QueueRef


class Away:
    """The scheduler with its status answers replaced: ``answer`` "cache" (it did not answer)
    or "none" (it answered: not found); everything else is the real backend's."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.answer = "cache"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        reason = "controller did not answer" if self.answer == "cache" else "not found"
        return {j: unknown_status(j, reason, self.answer) for j in job_ids}


def test_cached_unknown_never_counts_towards_lost(
    rig: Rig, client: ApiClient, embedded_server: Any
) -> None:
    qid = rig.queue("cached")
    tid = rig.task("cached job", qid)
    rig.pre = "sleep 30"
    s = rig.submitter([QueueRef(qid, "cached", rig.template(TEMPLATE))], lost_grace_s=0.0)
    assert s.pull() == 1
    entry = s.ledger.get(tid)
    assert entry is not None
    away = Away(rig.scheduler)
    s.tracker.scheduler = away  # type: ignore[assignment]
    for _ in range(5):
        s.tracker.track()
    entry = s.ledger.get(tid)
    assert entry is not None
    assert entry.state == SUBMITTED
    assert rig.get(tid)["status"] != "failed"
    away.answer = "none"  # the scheduler answers again: the job is not found
    s.tracker.track()  # the lost clock starts
    s.tracker.track()  # lost_grace_s is 0: LOST
    task = rig.get(tid)
    assert task["status"] == "failed"
    assert "LOST" in task["status_reason"]
    s.tracker.scheduler = rig.scheduler
    rig.scheduler.cancel([str(entry.job_id)])
    s.shutdown()
