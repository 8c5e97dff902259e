"""End to end on the real one-host Grid Engine cell: embedded server + ``hpcagent-slurm
--scheduler gridengine`` (a real process) with the shipped templates/gridengine.example.template
(verbatim) + the real executor in the qsub job.

* ``ge-run``  the shipped template → the task completes; the job is recorded under the
  scheduler-neutral keys, and the executor inside the job read its identity from Grid Engine's
  variables (``runtime.job_scheduler`` = gridengine, worker ``<host>:gridengine-<job>``);
* ``ge-run``  a task that sleeps, aborted while running → qdel → task stopped;
* ``ge-bad``  a template asking for a resource the cell does not have → the task fails with
  qsub's own words, no job.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest

pytestmark = [pytest.mark.gridengine, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
BAD_TEMPLATE = "#!/bin/bash\n#$ -l nosuchresource=1\n${CLEARML_AGENT_EXECUTE}\n"


class GeE2E(h.SubmitterRig):
    def __init__(self, work: Path, server: Any) -> None:
        bare, sha, diff = h.make_repo(work / "git")
        self.repo = {"bare": bare, "sha": sha, "diff": diff, "tmp": work}
        suffix = work.name
        self.qids = {
            q: str(server.send("queues.create", {"name": f"{q}-{suffix}"})["id"])
            for q in ("ge-run", "ge-bad")
        }
        run = work / "gridengine.example.template"
        shutil.copy(ROOT / "templates" / "gridengine.example.template", run)
        bad = work / "bad.template"
        bad.write_text(BAD_TEMPLATE)
        self.start(
            work,
            server,
            scheduler="gridengine",
            templates=[str(run), str(bad)],
            queues=[f"ge-run-{suffix}", f"ge-bad-{suffix}"],
        )


@pytest.fixture(scope="module")
def e2e(ge_cell: None, embedded_server_session: Any) -> Iterator[GeE2E]:
    work = h.GRIDENGINE_WORK_ROOT / f"sub-{uuid.uuid4().hex[:10]}"
    work.mkdir(parents=True)
    rig = GeE2E(work, embedded_server_session)
    try:
        yield rig
    finally:
        rig.stop()


def _qacct_failed(job: str) -> str:
    res = subprocess.run(["qacct", "-j", job], capture_output=True, text=True, timeout=30)
    return next(
        (ln.split(None, 1)[1] for ln in res.stdout.splitlines() if ln.startswith("failed")), ""
    )


def test_task_completes_under_grid_engine(e2e: GeE2E) -> None:
    tid = e2e.enqueue("ge-run", "ge-run", h.repo_script(e2e.repo))
    e2e.wait_status(tid, ("completed", "failed", "stopped"))
    task = e2e.task(tid)
    assert task["status"] == "completed", task
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    job = props["job-id"]
    assert props["job-scheduler"] == "gridengine"
    assert props["job-queue"] == f"ge-run-{e2e.work.name}"
    runtime = task["runtime"]
    assert (runtime["job_scheduler"], runtime["job_id"]) == ("gridengine", job)
    assert runtime["job_nodes"]
    assert runtime["hpcagent_worker"].endswith(f":gridengine-{job}")
    assert any("mark=patched" in line for line in h.task_log_lines(e2e.server, tid))
    out = e2e.work / f"task-{tid}-{job}.log"  # the template's -cwd and -o
    assert "whoami root" in out.read_text()
    # Private by default (issue 14 item 6): the job's output and the rendered script.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rendered = list((e2e.work / "state" / "scripts").glob(f"*{tid}*.sh"))
    assert rendered, sorted(p.name for p in (e2e.work / "state" / "scripts").iterdir())
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in rendered)


def test_abort_while_running_deletes_the_job(e2e: GeE2E) -> None:
    tid = e2e.enqueue("ge-run", "ge-abort", h.SLEEPER)
    h.wait_for(
        lambda: any("sleeping" in line for line in h.task_log_lines(e2e.server, tid)),
        timeout=180,
        interval=0.5,
    )
    job = e2e.task(tid)["runtime"]["job_id"]
    e2e.server.send("tasks.stop", {"task": tid})
    e2e.wait_status(tid, ("stopped", "failed", "completed"), timeout=90)
    assert e2e.task(tid)["status"] == "stopped"
    # the job ended (the executor stopped the task and exited, or qdel killed it)
    h.wait_for(lambda: _qacct_failed(job) != "", timeout=60, interval=0.5)


def test_rejected_job_fails_the_task_with_qsubs_words(e2e: GeE2E) -> None:
    tid = e2e.enqueue("ge-bad", "ge-bad")
    e2e.wait_status(tid, ("failed",), timeout=90)
    msg = e2e.task(tid)["status_message"]
    assert "qsub rejected the job" in msg
    assert 'unknown resource "nosuchresource"' in msg
