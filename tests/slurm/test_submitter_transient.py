"""sbatch fails transiently under the submitter, on the real Slurm.

``sbatch`` can time out after the controller took the job ("Socket timed out on send/recv
operation"), or not reach the controller at all. The submitter then looks the job up by name
(real ``squeue``/``sacct``): a job that exists is adopted (one job, task recorded), none puts
the task back at the head of its queue and pauses pulling. Only the answer of that one sbatch
is replaced, at the subprocess seam: in the first case after the real sbatch ran.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import require_slurm, sacct_jobs_named, slurm_workdir, wait_for

from hpcagent.api import ApiClient
from hpcagent.process import CommandResult, run_command
from hpcagent.scheduler.base import PROP_JOB_ID
from hpcagent.scheduler.slurm import SlurmScheduler
from hpcagent.submitter.ledger import FINISHED, SUBMITTED, Ledger
from hpcagent.submitter.loop import Outcome, Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions, job_name

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

TIMED_OUT = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
TEMPLATE = "#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --time=00:01:00\nsleep 5\n"


class LostAnswer:
    """The subprocess seam with the first sbatch's answer replaced by a transient error;
    ``accepted``: the real sbatch ran first (the controller took the job)."""

    def __init__(self, accepted: bool) -> None:
        self.accepted = accepted
        self.sbatches: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        if argv[0] != "sbatch":
            return run_command(argv, **kw)
        self.sbatches.append(list(argv))
        if len(self.sbatches) > 1:
            return run_command(argv, **kw)
        if self.accepted:
            real = run_command(argv, **kw)
            assert real.ok, real.stderr
        return CommandResult(tuple(argv), 1, "", TIMED_OUT)


@pytest.fixture
def client(embedded_server: Any) -> Iterator[ApiClient]:
    c = ApiClient(embedded_server.url, embedded_server.access_key, embedded_server.secret_key)
    yield c
    c.close()


def _rig(client: ApiClient, seam: LostAnswer, work: Path) -> tuple[Submitter, str, list[str]]:
    qid = str(client.send("queues.create", {"name": f"transient-{work.name}"})["id"])
    tids = []
    for i in range(2):
        tid = str(client.send("tasks.create", {"name": f"transient {i}", "type": "training"})["id"])
        client.send("tasks.enqueue", {"task": tid, "queue": qid})
        tids.append(tid)
    template = work / "t.template"
    template.write_text(TEMPLATE)
    opts = SubmitterOptions(
        queues=[QueueRef(qid, "transient", template)],
        state_dir=work / "state",
        worker_id="test:transient",
        limit_backoff_s=3600.0,
    )
    ledger = Ledger(work / "state" / "ledger.sqlite")
    # one attempt: the scheduler's own retry would adopt the job before the loop sees the error
    scheduler = SlurmScheduler(runner=seam, submit_attempts=1)
    s = Submitter(client, scheduler, ledger, opts, lambda _key, default=None: default)
    s.start()
    return s, qid, tids


def test_timed_out_sbatch_whose_job_exists_is_adopted(client: ApiClient) -> None:
    require_slurm()
    work = slurm_workdir("transient-accepted")
    seam = LostAnswer(accepted=True)
    s, qid, (first, second) = _rig(client, seam, work)
    try:
        popped = client.queues.get_next_task(qid)
        assert popped is not None
        assert popped["task"] == first
        assert s.submit_task(first, s.opts.queues[0]) is Outcome.SUBMITTED
        entry = s.ledger.get(first)
        assert entry is not None
        assert entry.state == SUBMITTED
        # the one real job, adopted (accounting records it within seconds)
        assert wait_for(lambda: sacct_jobs_named(job_name(first)), timeout=30) == [entry.job_id]
        s.tracker.flush()
        task = client.send("tasks.get_by_id", {"task": first})["task"]
        assert task["hyperparams"]["properties"][PROP_JOB_ID]["value"] == entry.job_id
        assert s.cycle() == 1  # no pause: the second task goes on at once
        assert len(seam.sbatches) == 2
        assert second in {e.task_id for e in s.ledger.live()}
    finally:
        s.scheduler.cancel([str(e.job_id) for e in s.ledger.live() if e.job_id])
        s.shutdown()
        s.ledger.close()


def test_unreachable_sbatch_puts_the_task_back_first_and_pauses(client: ApiClient) -> None:
    require_slurm()
    work = slurm_workdir("transient-lost")
    seam = LostAnswer(accepted=False)
    s, qid, (first, second) = _rig(client, seam, work)
    try:
        assert s.cycle() == 0
        assert len(seam.sbatches) == 1  # paused after the failure: the second task waits
        assert sacct_jobs_named(job_name(first)) == []
        entry = s.ledger.get(first)
        assert entry is not None
        assert entry.state == FINISHED
        assert entry.outcome.startswith("requeued: scheduler unavailable")
        queue = client.send("queues.get_by_id", {"queue": qid})["queue"]
        assert [e["task"] for e in queue["entries"]] == [first, second]
        task = client.send("tasks.get_by_id", {"task": first})["task"]
        assert task["status"] == "queued"
        assert task["status_message"].startswith("back in queue: scheduler unavailable")
        assert s.cycle() == 0  # still pausing
        assert len(seam.sbatches) == 1
    finally:
        s.shutdown()
        s.ledger.close()
