"""kill -9 of ``hpcagent-slurm`` at exact points, then a restart: every task ends exactly once.

For each crash point, a submitter process is started with ``HPCAGENT_TEST_CRASH_AT=<point>``
(it SIGKILLs itself when it gets there), three tasks are enqueued, the process is seen to die
by SIGKILL, and a normal submitter is started on the same state folder. Then every task must
be ``completed`` and sacct must hold exactly one job named ``clearml_task_<id>`` per task.
The job runs a small stand-in for ``hpcagent execute`` (``slurm.hpcagent_command``) that marks
the task started and completed through the API, so each crash test takes seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SLURM_MAIN,
    clean_env,
    require_slurm,
    sacct_jobs_named,
    slurm_workdir,
    start_logged,
    write_server_conf,
)

from hpcagent.submitter.options import job_name

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

FAKE_EXECUTE = """
import sys, time
from hpcagent.api import ApiClient
from hpcagent.config import load_settings
task = sys.argv[sys.argv.index("--id") + 1]
client = ApiClient.from_settings(load_settings())
client.send("tasks.started", {"task": task, "force": True})
time.sleep(1)
client.send("tasks.completed", {"task": task, "force": True})
print("ran", task)
"""

TEMPLATE = """#!/bin/bash
#SBATCH --output=crash-%j.out
#SBATCH --time=00:05:00
${CLEARML_AGENT_EXECUTE}
"""

POINTS = ["after_pop", "after_render", "after_sbatch", "tracking", "writing_status"]


def _start(work: Path, conf: Path, queue: str, crash: str | None) -> subprocess.Popen[bytes]:
    env = clean_env()
    if crash:
        env["HPCAGENT_TEST_CRASH_AT"] = crash
    argv = [
        *SLURM_MAIN,
        "--config-file", str(conf), "--scheduler", "slurm", "--poll-interval", "0.5",
        "--template-files", str(work / "t.template"), "--queue", queue,
    ]  # fmt: skip
    return start_logged(argv, work / "submitter.log", cwd=work, env=env)


@pytest.mark.parametrize("point", POINTS)
def test_kill9_then_restart_runs_every_task_once(point: str, embedded_server: Any) -> None:
    require_slurm()
    server = embedded_server
    work = slurm_workdir(f"crash-{point}")
    (work / "t.template").write_text(TEMPLATE)
    fake = work / "fake_execute.py"
    fake.write_text(FAKE_EXECUTE)
    conf = write_server_conf(
        work / "clearml.conf",
        server,
        slurm={"state_dir": str(work / "state"), "hpcagent_command": f"{sys.executable} {fake}"},
    )
    queue = f"crash-{point}"
    qid = server.send("queues.create", {"name": queue})["id"]
    tids = []
    for i in range(3):
        tid = server.send("tasks.create", {"name": f"{point}-{i}", "type": "training"})["id"]
        server.send("tasks.enqueue", {"task": tid, "queue": qid})
        tids.append(str(tid))

    first = _start(work, conf, queue, point)
    try:
        rc = first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    log = (work / "submitter.log").read_text()
    assert rc == -signal.SIGKILL, log
    assert f"HPCAGENT_TEST_CRASH_AT={point}" in log

    second = _start(work, conf, queue, None)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            statuses = [server.send("tasks.get_by_id", {"task": t})["task"]["status"] for t in tids]
            if all(s in ("completed", "failed", "stopped") for s in statuses):
                break
            time.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    log = (work / "submitter.log").read_text()
    assert statuses == ["completed"] * 3, log[-4000:]
    for tid in tids:
        # slurmdbd records jobs asynchronously: give a fresh record a few seconds to appear
        deadline = time.monotonic() + 30
        while not sacct_jobs_named(job_name(tid)) and time.monotonic() < deadline:
            time.sleep(1)
        assert len(sacct_jobs_named(job_name(tid))) == 1, (tid, log[-4000:])
