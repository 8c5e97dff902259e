"""``hpcagent-slurm`` as a user runs it: --dry-run, --detached, --status [--json], --stop,
on the LocalScheduler against the real embedded server."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import SLURM_MAIN, clean_env, write_server_conf

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}
echo ${CLEARML_TASK.name}
: ${CLEARML_AGENT_EXECUTE}
"""
#: The job runs until the test creates RELEASE (next to the template) after its --status
#: checks: it is still listed however slowly the CLI calls run on a loaded machine.
HOLD = """
until [ -e RELEASE ]; do sleep 0.2; done
"""
RELEASE = "release"


def _conf(tmp: Path, server: Any) -> Path:
    return write_server_conf(tmp / "clearml.conf", server, slurm={"state_dir": str(tmp / "state")})


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SLURM_MAIN, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=clean_env()
    )


def test_dry_run_detached_status_stop(tmp_path: Path, embedded_server: Any) -> None:
    server = embedded_server
    conf = _conf(tmp_path, server)
    tmpl = tmp_path / "t.template"
    release = tmp_path / RELEASE
    tmpl.write_text(TEMPLATE + HOLD.replace("RELEASE", shlex.quote(str(release))))
    qid = server.send("queues.create", {"name": "cliq"})["id"]
    tid = server.send("tasks.create", {"name": "dry; run", "type": "training"})["id"]
    server.send("tasks.enqueue", {"task": tid, "queue": qid})
    base = ["--config-file", str(conf), "--scheduler", "local", "--template-files", str(tmpl)]

    dry = _run(*base, "--queue", "cliq", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert f"#SBATCH --job-name=clearml_task_{tid}" in dry.stdout
    assert "echo 'dry; run'" in dry.stdout
    # nothing was popped
    assert server.send("queues.get_num_entries", {"queue": qid})["num"] == 1

    det = _run(*base, "--queue", "cliq", "--detached", "--poll-interval", "0.5", cwd=tmp_path)
    assert det.returncode == 0, det.stderr
    assert "running in the background" in det.stdout
    try:
        deadline = time.monotonic() + 60
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = _run("--config-file", str(conf), "--status", "--json", cwd=tmp_path)
            assert st.returncode == 0, st.stderr
            data = json.loads(st.stdout)
            if data["jobs"] and data["jobs"][0]["state"] == "submitted":
                break
            time.sleep(0.5)
        assert data["running"] is True
        assert data["jobs"][0]["task"] == tid
        assert data["queues"] == {"cliq": 1}
        table = _run("--config-file", str(conf), "--status", cwd=tmp_path)
        assert "running (pid" in table.stdout
        assert tid in table.stdout
        second = _run(*base, "--queue", "cliq", cwd=tmp_path)
        assert second.returncode == 2
        assert "another hpcagent-slurm" in second.stderr
    finally:
        release.touch()  # the job may end now
        stop = _run("--config-file", str(conf), "--stop", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert "stopped hpcagent-slurm" in stop.stdout
    after = json.loads(_run("--config-file", str(conf), "--status", "--json", cwd=tmp_path).stdout)
    assert after["running"] is False
    log = (tmp_path / "state" / "hpcagent-slurm.log").read_text()
    assert f"task {tid} queue cliq job 1: submitted" in log


def test_detached_process_name_lifecycle_log_and_idle_status(
    tmp_path: Path, embedded_server: Any
) -> None:
    conf = _conf(tmp_path, embedded_server)
    tmpl = tmp_path / "t.template"
    tmpl.write_text(TEMPLATE)
    embedded_server.send("queues.create", {"name": "idle q"})
    base = ["--config-file", str(conf), "--scheduler", "local", "--template-files", str(tmpl)]
    det = _run(*base, "--queue", "idle q", "--detached", "--poll-interval", "0.5", cwd=tmp_path)
    assert det.returncode == 0, det.stderr
    try:
        data: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not data.get("queues"):
            st = _run("--config-file", str(conf), "--status", "--json", cwd=tmp_path)
            data = json.loads(st.stdout)
            time.sleep(0.3)
        # the queue it serves is listed even with no job in it
        assert data["running"] is True
        assert data["queues"] == {"idle q": 0}
        pid = int(data["pid"])
        # a recognisable process: pgrep -f hpcagent-slurm finds it
        found = subprocess.run(
            ["pgrep", "-f", "hpcagent-slurm"], capture_output=True, text=True, check=False
        )
        assert str(pid) in found.stdout.split()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert Path(argv[1].decode()).name == "hpcagent-slurm"
    finally:
        stop = _run("--config-file", str(conf), "--stop", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    log = (tmp_path / "state" / "hpcagent-slurm.log").read_text()
    assert f"hpcagent-slurm 0.1.0 started (pid {pid}" in log
    assert "config: api http://127.0.0.1:" in log
    assert f"queues idle q <- {tmpl}" in log
    assert "re-adopted 0 job(s) from the last run; serving" in log
    assert f"hpcagent-slurm stopped (pid {pid}); 0 job(s) keep running" in log


ROTATE = """
import logging, os, sys
from hpcagent.commands import longrunning
longrunning.LOG_MAX_BYTES = 2000
longrunning.LOG_BACKUPS = 2
path = longrunning.setup_logging(False)
for i in range(200):
    logging.getLogger("t").info("line %d %s", i, "x" * 40)
print("printed after rotation", file=sys.stderr, flush=True)
"""


def test_detached_log_is_rotated(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    env = {**clean_env(), "HPCAGENT_LOG_FILE": str(log)}
    with log.open("ab") as out:  # as detach() starts it: output appended to the log
        subprocess.run([sys.executable, "-c", ROTATE], stdout=out, stderr=out, env=env, check=True)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.log", "d.log.1", "d.log.2"]
    assert all(p.stat().st_size <= 2100 for p in tmp_path.iterdir())
    text = log.read_text()
    assert "line 199" in text
    # what is printed outside logging follows into the current file
    assert "printed after rotation" in text
