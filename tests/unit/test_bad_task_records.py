"""One bad task record never stops the queue (issue 14, item 5, the submitter's part), and what
the jobs get is private (item 6).

The submitter runs against the real embedded server with the shipped singularity template in
``--singularity-mode``; a task whose ``container`` is a string (a clone made with
``new_task_container: "<image>"``; written into the server's database when the server refuses
such a clone) fails with a reason and the next task is served.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import orjson
from test_submitter_loop import Rig

from hpcagent.api import ApiClient
from hpcagent.errors import ApiError
from hpcagent.scheduler.base import Scheduler, is_secret_env
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.scheduler.slurm import SlurmScheduler
from hpcagent.submitter.ledger import SUBMITTED
from hpcagent.submitter.options import QueueRef

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _string_container(client: ApiClient, server: Any, source: str) -> str:
    """A task whose stored ``container`` is the string ``docker://alpine``."""
    try:
        body = {"task": source, "new_task_container": "docker://alpine", "new_task_name": "bad"}
        return str(client.send("tasks.clone", body)["id"])
    except ApiError:  # the server validates: store such a record as an older server did
        tid = str(client.send("tasks.clone", {"task": source, "new_task_name": "bad"})["id"])
        db = sqlite3.connect(str(server.data_dir / "server.db"), timeout=30)
        try:
            (doc,) = db.execute("SELECT doc FROM tasks WHERE id=?", (tid,)).fetchone()
            task = orjson.loads(doc)
            task["container"] = "docker://alpine"
            with db:
                db.execute("UPDATE tasks SET doc=? WHERE id=?", (orjson.dumps(task), tid))
        finally:
            db.close()
        return tid


def test_a_string_container_fails_that_task_and_the_queue_goes_on(
    rig: Rig, client: ApiClient, embedded_server: Any
) -> None:
    qid = rig.queue("bad-records")
    source = str(client.send("tasks.create", {"name": "source", "type": "training"})["id"])
    bad = _string_container(client, embedded_server, source)
    assert client.tasks.get_by_id(bad)["container"] == "docker://alpine"
    client.send("tasks.enqueue", {"task": bad, "queue": qid})
    good = rig.task("good one", qid, container={"image": "docker://alpine"})
    template = TEMPLATES / "slurm.singularity.template"
    s = rig.submitter([QueueRef(qid, "bad-records", template)], container_mode="singularity")
    for _ in range(3):  # the same bad task never comes back; the good one is served
        s.cycle()
    failed = rig.get(bad)
    assert failed["status"] == "failed"
    assert failed["status_reason"] == "invalid task"
    assert "container field is a str" in failed["status_message"]
    entry = s.ledger.get(good)
    assert entry is not None
    assert entry.state == SUBMITTED
    queue = client.send("queues.get_by_id", {"queue": qid})["queue"]
    assert queue["entries"] == []
    s.scheduler.cancel([str(entry.job_id)])
    s.shutdown()


def test_credentials_never_reach_a_job_environment() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CLEARML_API_SECRET_KEY": "s3cret",
        "CLEARML_API_ACCESS_KEY": "AK",
        "CLEARML_AGENT_GIT_PASS": "pw",
        "CLEARML_AGENT__API__CREDENTIALS__SECRET_KEY": "s3cret",
        "CLEARML_AGENT__AGENT__GIT_PASS": "pw",
        "CLEARML_CONFIG_FILE": "/state/clearml.conf",
        "CLEARML_API_HOST": "http://server:8008",
    }
    backend: type[Scheduler]
    for backend in (SlurmScheduler, LocalScheduler):
        kept = backend.clean_env(env)
        assert sorted(kept) == ["CLEARML_API_HOST", "CLEARML_CONFIG_FILE", "PATH"], backend
    assert not is_secret_env("CLEARML_AGENT__AGENT__DEFAULT_DOCKER__IMAGE")


def test_local_job_output_is_private(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho private\n")
    sched = LocalScheduler(output_dir=tmp_path / "jobs")
    job = sched.submit(script, job_name="private")
    deadline = time.monotonic() + 60
    while not sched.status([job])[job].is_terminal and time.monotonic() < deadline:
        time.sleep(0.1)
    out = sched.output_path(job, job_name="private", script="", submit_dir=tmp_path)
    assert out is not None
    assert out.read_text() == "private\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o700
