"""A job Slurm can never start, on the real one-host Slurm: the task asks for more CPUs than
any node has (the cluster runs with ``EnforcePartLimits=NO``, so sbatch accepts the job and it
pends for ``PartitionConfig``). The task first shows the pending reason, then, after
``slurm.never_runs_fail_sec``, is failed with Slurm's reason and the job is cancelled; never
silently ``queued``."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import helpers as h
import pytest

pytestmark = pytest.mark.slurm

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=never-%j.out
#SBATCH --cpus-per-task=${CLEARML_TASK.hyperparams.properties.cpus.value:1}
: ${CLEARML_AGENT_EXECUTE}
"""


def _sacct_state(job: str) -> str:
    res = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return res.stdout.strip().split(" ")[0]


def test_too_many_cpus_fails_the_task_with_slurms_reason(embedded_server: Any) -> None:
    h.require_slurm()
    work = h.slurm_workdir("never")
    server = embedded_server
    cpus = os.cpu_count() or 1
    conf = h.write_server_conf(
        work / "clearml.conf",
        server,
        slurm={"state_dir": str(work / "state"), "poll_interval_sec": 1, "never_runs_fail_sec": 4},
    )
    tmpl = work / "never.template"
    tmpl.write_text(TEMPLATE)
    qid = server.send("queues.create", {"name": "never"})["id"]
    tid = server.send(
        "tasks.create",
        {
            "name": "too big",
            "type": "training",
            "hyperparams": {
                "properties": {
                    "cpus": {"section": "properties", "name": "cpus", "value": str(cpus * 64)}
                }
            },
        },
    )["id"]
    server.send("tasks.enqueue", {"task": tid, "queue": qid})
    argv = [*h.SLURM_MAIN, "--config-file", str(conf), "--template-files", str(tmpl),
            "--queue", "never", "--scheduler", "slurm"]  # fmt: skip
    proc = h.start_logged(argv, work / "submitter.log", cwd=work, env=h.clean_env())
    try:
        seen_pending = False
        squeue_default = ""

        def settled() -> dict[str, Any] | None:
            nonlocal seen_pending, squeue_default
            task = h.get_task(server, tid)
            message = str(task.get("status_message") or "")
            if task["status"] == "queued" and "PENDING (PartitionConfig)" in message:
                seen_pending = True
                if not squeue_default:  # squeue as a user types it: the default format
                    job_id = message.split("slurm job ", 1)[1].split(":", 1)[0]
                    squeue_default = subprocess.run(
                        ["squeue", "-j", job_id], capture_output=True, text=True, check=False
                    ).stdout
            return task if task["status"] == "failed" else None

        task = h.wait_for(settled, timeout=120, interval=0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert seen_pending, "the pending reason was never shown"
    # the name column (8 characters wide by default) shows the start of the task id
    assert tid[:8] in squeue_default.splitlines()[-1].split(), squeue_default
    assert task["status_reason"].endswith("cannot start (PartitionConfig)")
    assert "more than the partition or any of its nodes offers" in task["status_message"]
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    job = props["job-id"]
    deadline = time.monotonic() + 60
    while _sacct_state(job) in ("", "PENDING") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _sacct_state(job) == "CANCELLED"
