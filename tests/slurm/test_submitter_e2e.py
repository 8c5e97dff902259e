"""End to end on the real one-host Slurm: embedded server + ``hpcagent-slurm`` (as a real
process) + the real executor in the job.

One submitter serves five queues, each with its own template:

* ``run``      the seed-style template with ``${CLEARML_AGENT_EXECUTE}`` → task completes;
* ``later``    ``--begin=now+1hour`` holds the job PENDING → abort → job cancelled, task stopped;
* ``badpart``  ``--partition=nosuchpartition`` → task failed with sbatch's message;
* ``missing``  a placeholder without value → task failed naming it, no job;
* ``limited``  ``sleep`` jobs with ``--max-jobs 2`` → never more than 2 live jobs;
* ``short``    ``--time=00:01:00`` and a task that sleeps: abort while running → stopped;
               left alone → killed by the time limit → task failed, message names TIMEOUT.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest

from hpcagent.submitter.options import job_name

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


RUN_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
#SBATCH --ntasks=1
#SBATCH --priority=5
#SBATCH --time=00:10:00
#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}
${CLEARML_PRE_SETUP}
echo whoami $(whoami)
${CLEARML_AGENT_EXECUTE}
${CLEARML_POST_SETUP}
"""
LATER_TEMPLATE = "#!/bin/bash\n#SBATCH --begin=now+3600\n${CLEARML_AGENT_EXECUTE}\n"
BADPART_TEMPLATE = "#!/bin/bash\n#SBATCH --partition=nosuchpartition\n${CLEARML_AGENT_EXECUTE}\n"
MISSING_TEMPLATE = (
    "#!/bin/bash\n#SBATCH --mem=${CLEARML_TASK.hyperparams.properties.mem.value}\n"
    "${CLEARML_AGENT_EXECUTE}\n"
)
# ":" keeps the executor from running (a template without the block is refused at start)
LIMITED_TEMPLATE = (
    "#!/bin/bash\n#SBATCH --output=limited-%j.out\nsleep 3\n: ${CLEARML_AGENT_EXECUTE}\n"
)
SHORT_TEMPLATE = (
    "#!/bin/bash\n#SBATCH --time=00:01:00\n#SBATCH --output=short-%j.out\n"
    "${CLEARML_AGENT_EXECUTE}\n"
)
QUEUES = ("run", "later", "badpart", "missing", "limited", "short")


class E2E(h.SubmitterRig):
    def __init__(self, work: Path, server: Any) -> None:
        self.suffix = work.name
        bare, sha, diff = h.make_repo(work / "git")
        self.repo = {"bare": bare, "sha": sha, "diff": diff, "tmp": work}
        self.qids = {
            q: str(server.send("queues.create", {"name": f"{q}-{self.suffix}"})["id"])
            for q in QUEUES
        }
        templates = []
        for q, text in zip(
            QUEUES,
            (
                RUN_TEMPLATE,
                LATER_TEMPLATE,
                BADPART_TEMPLATE,
                MISSING_TEMPLATE,
                LIMITED_TEMPLATE,
                SHORT_TEMPLATE,
            ),
            strict=True,
        ):
            path = work / f"{q}.template"
            path.write_text(text)
            templates.append(str(path))
        self.start(
            work,
            server,
            scheduler="slurm",
            templates=templates,
            queues=[f"{q}-{self.suffix}" for q in QUEUES],
            extra=["--max-jobs", "2"],
        )

    def stop(self) -> None:
        super().stop()
        subprocess.run(["scancel", "--name", "xx"], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def e2e(embedded_server_session: Any) -> Iterator[E2E]:
    h.require_slurm()
    work = h.slurm_workdir("sub")
    rig = E2E(work, embedded_server_session)
    try:
        yield rig
    finally:
        rig.stop()


def _sacct(job: str) -> str:
    res = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res.stdout.strip().split(" ")[0]


def test_task_completes_and_logs_are_readable(e2e: E2E) -> None:
    tid = e2e.enqueue("run", "e2e-run", h.repo_script(e2e.repo))
    e2e.wait_status(tid, ("completed", "failed", "stopped"))
    task = e2e.task(tid)
    assert task["status"] == "completed", task
    job = task["hyperparams"]["properties"]["job-id"]["value"]
    # the executor's runtime keys and the submitter's properties both survive
    assert task["runtime"]["job_id"] == job
    assert task["runtime"]["job_nodes"]
    assert task["runtime"]["job_scheduler"] == "slurm"
    assert task["runtime"]["_exec_agent_hostname"]
    assert task["runtime"]["hpcagent_worker"].endswith(f":slurm-{job}")
    assert task["hyperparams"]["properties"]["job-queue"]["value"]
    lines = h.task_log_lines(e2e.server, tid)
    assert any("mark=patched" in line for line in lines)
    out = (e2e.work / f"task-{tid}-{job}.log").read_text()
    assert "whoami root" in out


def test_abort_while_pending_cancels_job(e2e: E2E) -> None:
    tid = e2e.enqueue("later", "e2e-later")
    h.wait_for(lambda: "PENDING" in (e2e.task(tid).get("status_message") or ""), timeout=60)
    task = e2e.task(tid)
    assert task["status"] == "queued"
    job = task["hyperparams"]["properties"]["job-id"]["value"]
    assert task["status_message"].startswith(f"slurm job {job}: PENDING")
    e2e.server.send("tasks.stop", {"task": tid})
    h.wait_for(lambda: _sacct(job) == "CANCELLED", timeout=60, interval=0.5)
    assert e2e.task(tid)["status"] == "stopped"


def test_invalid_partition_fails_with_sbatch_message(e2e: E2E) -> None:
    tid = e2e.enqueue("badpart", "e2e-badpart")
    e2e.wait_status(tid, ("failed",), timeout=60)
    msg = e2e.task(tid)["status_message"]
    assert "sbatch rejected" in msg
    assert "invalid partition" in msg.lower()


def test_missing_template_value_fails_naming_it(e2e: E2E) -> None:
    tid = e2e.enqueue("missing", "e2e-missing")
    e2e.wait_status(tid, ("failed",), timeout=60)
    msg = e2e.task(tid)["status_message"]
    assert "${CLEARML_TASK.hyperparams.properties.mem.value}" in msg
    assert "missing.template:2" in msg
    res = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID", "--name", job_name(tid)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.stdout.strip() == ""


def test_max_jobs_never_exceeded(e2e: E2E) -> None:
    tids = [e2e.enqueue("limited", f"e2e-limited-{i}") for i in range(5)]
    names = ",".join(job_name(t) for t in tids)
    peak = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["squeue", "-h", "-o", "%i", "--name", names],
            capture_output=True,
            text=True,
            timeout=30,
        )
        live = len(res.stdout.split())
        peak = max(peak, live)
        assert live <= 2
        if all(e2e.task(t)["status"] == "failed" for t in tids):
            break
        time.sleep(0.3)
    assert peak == 2
    # the jobs ended without an executor: each task failed with the job's state
    assert all("COMPLETED" in e2e.task(t)["status_reason"] for t in tids)


def test_abort_while_running_stops(e2e: E2E) -> None:
    tid = e2e.enqueue("short", "e2e-abort-running", h.SLEEPER)
    h.wait_for(
        lambda: any("sleeping" in line for line in h.task_log_lines(e2e.server, tid)),
        timeout=120,
        interval=0.5,
    )
    job = e2e.task(tid)["runtime"]["job_id"]
    e2e.server.send("tasks.stop", {"task": tid})
    e2e.wait_status(tid, ("stopped", "failed", "completed"), timeout=90)
    assert e2e.task(tid)["status"] == "stopped"
    h.wait_for(lambda: _sacct(job) not in ("", "RUNNING", "PENDING"), timeout=60, interval=0.5)
    # the executor scancels its job after reporting the abort: CANCELLED, not COMPLETED 0:0
    assert _sacct(job) == "CANCELLED"
    # and the submitter, seeing the job CANCELLED, leaves the task stopped (not failed)
    h.wait_for(lambda: f"job {job}: CANCELLED" in e2e.log.read_text(), timeout=60, interval=0.5)
    assert e2e.task(tid)["status"] == "stopped"


def test_time_limit_fails_task_naming_timeout(e2e: E2E) -> None:
    tid = e2e.enqueue("short", "e2e-timeout", h.SLEEPER)
    e2e.wait_status(tid, ("stopped", "failed", "completed"), timeout=200)
    job = e2e.task(tid)["runtime"]["job_id"]
    h.wait_for(lambda: _sacct(job) == "TIMEOUT", timeout=60, interval=0.5)
    h.wait_for(lambda: "TIMEOUT" in (e2e.task(tid).get("status_message") or ""), timeout=30)
    task = e2e.task(tid)
    assert task["status"] == "failed"
    assert task["status_reason"] == f"slurm job {job} TIMEOUT"
    assert task["status_message"].startswith(f"slurm job {job} TIMEOUT")
    assert "reason: TimeLimit" in task["status_message"]
