"""A real ``hpcagent-slurm`` on the real one-host Slurm survives server outages (issue 14, item 1),
and its jobs' output is private (item 6).

The submitter's quiet retry budget is set to one retry (``api.http.retries: 1``), so before
issue 14 it would have exited within seconds of the server going; now it must wait the outage
out, however long, log one line when the server goes and one when it is back, and reconcile:
jobs that ended while the server was away (their executor could not report) get their final
status from Slurm, and every task has exactly one job.

The job runs a small stand-in for ``hpcagent execute`` (``slurm.hpcagent_command``): it marks
the task started, waits for the test's ``go`` file, and marks it completed with a client that
does not retry (so a job that ends during the outage cannot report).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SLURM_MAIN,
    api_section,
    clean_env,
    get_task,
    require_slurm,
    sacct_jobs_named,
    slurm_workdir,
    start_logged,
    stop_process,
    wait_for,
    wait_status,
)

from hpcagent.scheduler.slurm import SlurmScheduler
from hpcagent.submitter.options import job_name

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

FAKE_EXECUTE = """
import os, sys, time
from hpcagent.api import ApiClient
from hpcagent.config import load_settings
task = sys.argv[sys.argv.index("--id") + 1]
client = ApiClient.from_settings(load_settings(), retries=0)
client.send("tasks.started", {"task": task, "force": True})
go = os.path.join(os.environ["OUTAGE_WORK"], "go")
while not os.path.exists(go):
    time.sleep(0.2)
client.send("tasks.completed", {"task": task, "force": True})
print("ran", task)
"""

TEMPLATE = """#!/bin/bash
#SBATCH --output=outage-%j.out
#SBATCH --time=00:05:00
export OUTAGE_WORK={work}
${{CLEARML_AGENT_EXECUTE}}
"""


def _enqueue(server: Any, qid: str, name: str) -> str:
    tid = str(server.send("tasks.create", {"name": name, "type": "training"})["id"])
    server.send("tasks.enqueue", {"task": tid, "queue": qid})
    return tid


def _ended(tids: list[str]) -> bool:
    """Every task's job is known to accounting and has ended."""
    ids = [sacct_jobs_named(job_name(t)) for t in tids]
    if not all(ids):
        return False
    states = SlurmScheduler().status([i[0] for i in ids])
    return all(s.is_terminal for s in states.values())


def test_submitter_waits_out_server_outages_and_reconciles(embedded_server: Any) -> None:
    require_slurm()
    server = embedded_server
    work = slurm_workdir("outage")
    (work / "t.template").write_text(TEMPLATE.format(work=work))
    fake = work / "fake_execute.py"
    fake.write_text(FAKE_EXECUTE)
    conf = work / "clearml.conf"
    conf.write_text(
        json.dumps(
            {
                "api": api_section(server, http={"retries": 1, "timeout_sec": 3}),
                "slurm": {
                    "state_dir": str(work / "state"),
                    "hpcagent_command": f"{sys.executable} {fake}",
                },
            }
        )
    )
    qid = str(server.send("queues.create", {"name": "outage"})["id"])
    first = [_enqueue(server, qid, f"before outage {i}") for i in range(2)]
    argv = [
        *SLURM_MAIN,
        "--config-file", str(conf), "--scheduler", "slurm", "--poll-interval", "1",
        "--template-files", str(work / "t.template"), "--queue", "outage",
    ]  # fmt: skip
    log = work / "submitter.log"
    proc = start_logged(argv, log, cwd=work, env=clean_env())
    try:
        for tid in first:
            wait_status(server, tid, ("in_progress",), log=log, timeout=180)
        # 1. the server is stopped; the jobs end meanwhile without being able to report
        server.stop()
        (work / "go").touch()
        wait_for(lambda: _ended(first), timeout=180, interval=1)
        wait_for(lambda: "unreachable since" in log.read_text(), timeout=120)
        time.sleep(5)  # well past the old budget of 2 attempts
        assert proc.poll() is None, log.read_text()[-3000:]
        server.start()
        server._token = None  # the test's own helper logs in again
        for tid in first:
            wait_status(server, tid, ("failed",), log=log, timeout=120)
            task = get_task(server, tid)
            assert task["status_reason"].startswith("slurm job "), task
            assert "FAILED" in task["status_reason"], task
        # 2. the server is paused (SIGSTOP) past the client's read timeout while it pops
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        late: list[str] = []
        enqueue = threading.Thread(
            target=lambda: late.append(_enqueue(server, qid, "during the pause")), daemon=True
        )
        enqueue.start()  # waits in the paused server's socket like the submitter's pops
        time.sleep(8)
        os.kill(server.proc.pid, signal.SIGCONT)
        enqueue.join(timeout=60)
        after = _enqueue(server, qid, "after the outage")
        for tid in [*late, after]:
            wait_status(server, tid, ("completed",), log=log, timeout=180)
        assert proc.poll() is None
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        stop_process(proc)
    text = log.read_text()
    # one line each way per outage, never one per attempt
    assert 1 <= text.count("unreachable since") <= 2, text[-4000:]
    assert text.count("unreachable since") == text.count("back after"), text[-4000:]
    assert "retrying (attempt" not in text
    for tid in [*first, *late, after]:
        wait_for(lambda t=tid: sacct_jobs_named(job_name(t)), timeout=30, interval=1)
        assert len(sacct_jobs_named(job_name(tid))) == 1, (tid, text[-4000:])
    queue = server.send("queues.get_by_id", {"queue": qid})["queue"]
    assert queue["entries"] == []


def test_job_output_is_private_and_holds_no_secret() -> None:
    """sbatch gets ``SLURM_UMASK=0077`` and no credentials: the output file is 0600 and the
    job's environment has no secret, whatever the submitter's environment holds."""
    require_slurm()
    work = slurm_workdir("private")
    script = work / "job.sh"
    script.write_text(
        f"#!/bin/bash\n#SBATCH --output={work}/private-%j.out\n#SBATCH --time=00:01:00\n"
        "umask\nenv | grep -c SECRET_VALUE_XYZ || true\n"
    )
    env = {
        **clean_env(),
        "CLEARML_API_SECRET_KEY": "SECRET_VALUE_XYZ",
        "CLEARML_AGENT__API__CREDENTIALS__SECRET_KEY": "SECRET_VALUE_XYZ",
    }
    sched = SlurmScheduler(env=env)
    job = sched.submit(script, job_name="hpcagent-private-test")
    wait_for(lambda: sched.status([job])[job].is_terminal, timeout=120, interval=1)
    out = work / f"private-{job}.out"
    wait_for(out.exists, timeout=30)
    assert out.read_text().split() == ["0077", "0"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def _dead_ports(conf_dir: Path, dead: bool) -> None:
    """The submitter's own copy of slurm.conf, with slurmctld's and slurmdbd's ports pointing
    at a closed port (dead) or as the cluster has them: the Slurm commands it runs then cannot
    reach either daemon, while the cluster itself (and every other user of it) is untouched."""
    text = Path("/etc/slurm/slurm.conf").read_text()
    if dead:
        text += "\nSlurmctldPort=1\nAccountingStoragePort=1\n"
    tmp = conf_dir / "slurm.conf.tmp"
    tmp.write_text(text)
    tmp.replace(conf_dir / "slurm.conf")


def test_submitter_rides_out_slurmctld_and_slurmdbd_being_unreachable(
    embedded_server: Any,
) -> None:
    """slurmctld and slurmdbd unreachable for the submitter (its SLURM_CONF names a closed
    port; the shared cluster is not touched): jobs keep their last known state (never LOST),
    a task popped meanwhile goes back to the front of its queue, one line each way; once Slurm
    answers, the job that ended meanwhile is settled and the waiting task runs, each once."""
    require_slurm()
    server = embedded_server
    work = slurm_workdir("ctld-outage")
    conf_dir = work / "slurm-conf"
    conf_dir.mkdir()
    for item in Path("/etc/slurm").iterdir():
        if item.is_file():
            (conf_dir / item.name).write_bytes(item.read_bytes())
    _dead_ports(conf_dir, dead=False)
    (work / "t.template").write_text(TEMPLATE.format(work=work))
    fake = work / "fake_execute.py"
    fake.write_text(FAKE_EXECUTE)
    conf = work / "clearml.conf"
    conf.write_text(
        json.dumps(
            {
                "api": api_section(server),
                "slurm": {
                    "state_dir": str(work / "state"),
                    "hpcagent_command": f"{sys.executable} {fake}",
                },
            }
        )
    )
    qid = str(server.send("queues.create", {"name": "ctld-outage"})["id"])
    first = _enqueue(server, qid, "before the slurm outage")
    argv = [
        *SLURM_MAIN,
        "--config-file", str(conf), "--scheduler", "slurm", "--poll-interval", "1",
        "--template-files", str(work / "t.template"), "--queue", "ctld-outage",
    ]  # fmt: skip
    log = work / "submitter.log"
    env = {**clean_env(), "SLURM_CONF": str(conf_dir / "slurm.conf")}
    proc = start_logged(argv, log, cwd=work, env=env)
    try:
        wait_status(server, first, ("in_progress",), log=log, timeout=180)
        _dead_ports(conf_dir, dead=True)
        (work / "go").touch()  # the job ends while the submitter cannot ask Slurm
        wait_status(server, first, ("completed",), log=log, timeout=120)
        during = _enqueue(server, qid, "during the slurm outage")
        # sbatch cannot reach the controller (after its own retries): back in front, paused
        wait_for(
            lambda: f"task {during} queue ctld-outage: back in queue (" in log.read_text(), 240
        )
        assert "slurmctld unreachable since" in log.read_text()
        assert get_task(server, during)["status"] == "queued"
        _dead_ports(conf_dir, dead=False)
        wait_status(server, during, ("completed",), log=log, timeout=240)
        wait_for(lambda: "slurmctld back after" in log.read_text(), timeout=60)
        # the job that ended during the outage is settled from accounting, never LOST
        settled = re.compile(
            rf"task {first} queue ctld-outage job \d+: COMPLETED \(task completed\)"
        )
        wait_for(lambda: settled.search(log.read_text()), timeout=60)
        assert proc.poll() is None
    finally:
        _dead_ports(conf_dir, dead=False)
        stop_process(proc)
    text = log.read_text()
    assert text.count("slurmctld unreachable since") == 1, text[-4000:]
    assert text.count("slurmctld back after") == 1, text[-4000:]
    assert "LOST" not in text
    assert get_task(server, first)["status"] == "completed"
    for tid in (first, during):
        wait_for(lambda t=tid: sacct_jobs_named(job_name(t)), timeout=30, interval=1)
        assert len(sacct_jobs_named(job_name(tid))) == 1, (tid, text[-4000:])
