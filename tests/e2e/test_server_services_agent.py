"""``hpcagent server --services-agent``: a services-mode ``hpcagent daemon`` runs next to the
server on the ``services`` queue (created by it), runs the tasks enqueued there with the real
``hpcagent execute``, and stops with the server: the task it still runs ends ``stopped`` on the
server (the daemon reported it before the server stopped answering) and no process is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import api_section, clean_env, get_task, task_log_lines, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCRIPT = r"""
import argparse, os, pathlib, time
p = argparse.ArgumentParser()
p.add_argument("--mark", default="")
p.add_argument("--sleep", type=float, default=0.0)
a = p.parse_args()
print(f"SERVICE-TASK worker={os.environ.get('CLEARML_WORKER_ID')}", flush=True)
if a.mark:
    pathlib.Path(a.mark).touch()
time.sleep(a.sleep)
"""


def _conf(tmp: Path, server: Any) -> Path:
    """The configuration the server's daemon reads: its caches under ``tmp``, offline venvs;
    the API section names no keys (the server gives the daemon its own)."""
    api = {k: v for k, v in api_section(server).items() if k != "credentials"}
    agent = {
        "venvs_dir": str(tmp / "builds"),
        "venvs_cache": {"path": str(tmp / "venv-cache"), "free_space_threshold_gb": 0},
        "vcs_cache": {"enabled": True, "path": str(tmp / "vcs-cache")},
        "package_manager": {"type": "uv", "extra_args": ["--no-index"]},
        "abort_poll_interval_sec": 0.5,
    }
    conf = tmp / "agent.conf"
    conf.write_text(json.dumps({"api": api, "agent": agent, "executor": {"kill_grace_sec": 5}}))
    return conf


def _create(server: Any, script: Path, tmp: Path, *args: str) -> str:
    conf = tmp / "user.conf"
    conf.write_text(json.dumps({"api": api_section(server)}))
    env = {**clean_env(), "CLEARML_CONFIG_FILE": str(conf)}
    argv = [sys.executable, "-m", "hpcagent", "task", "create", "--project", "services e2e",
            "--name", "service task ü", "--script", str(script), "--enqueue", "services",
            *[x for kv in args for x in ("--args", kv)]]  # fmt: skip
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().splitlines()[-1].strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ")[-1][:1] not in ("Z", "X")


@pytest.mark.parametrize("workers", [1, 2])
def test_services_agent_runs_services_tasks_and_stops_with_the_server(
    make_embedded_server: Callable[..., Any], tmp_path: Path, workers: int
) -> None:
    """With ``--workers 2`` the supervisor starts the one agent and stops it before the
    workers (one daemon pid; the long task still ends ``stopped``)."""
    server = make_embedded_server(
        "srv", start=False, extra_args=["--services-agent", "2", "--workers", str(workers)]
    )
    server.env = {"CLEARML_CONFIG_FILE": str(_conf(tmp_path, server))}
    server.start()
    agent_dir = server.data_dir / "services-agent"
    agent_log = agent_dir / "daemon.log"

    def logs() -> str:
        return agent_log.read_text(errors="replace")[-4000:] if agent_log.exists() else ""

    def services_queue() -> list[Any]:
        return list(server.send("queues.get_all", {"name": "^services$"})["queues"])

    wait_for(services_queue, 60, 0.3)  # the daemon creates its queue (--create-queue)
    script = tmp_path / "service.py"
    script.write_text(SCRIPT)
    quick = _create(server, script, tmp_path)
    try:
        wait_for(lambda: get_task(server, quick)["status"] in ("completed", "failed"), 240, 0.5)
    except AssertionError:
        raise AssertionError(f"{get_task(server, quick)}\n{logs()}") from None
    assert get_task(server, quick)["status"] == "completed", logs()
    ran = [ln for ln in task_log_lines(server, quick) if ln.startswith("SERVICE-TASK")]
    assert ran, task_log_lines(server, quick)
    assert ran[0].endswith(":service"), ran  # the services-mode worker ran it
    assert len(services_queue()) == 1

    mark = tmp_path / "long.running"
    long = _create(server, script, tmp_path, f"mark={mark}", "sleep=300")
    wait_for(mark.exists, 240, 0.3)
    pids = [int(p.read_text()) for p in agent_dir.glob("*/daemon.pid")]
    assert len(pids) == 1, list(agent_dir.rglob("*"))
    assert server.stop(timeout=180) == 0  # SIGTERM: the agent first, then the server
    assert not _alive(pids[0]), "the services agent outlived the server"

    server.extra_args = []  # read the outcome from the same data, without the agent
    server.start()
    task = get_task(server, long)
    assert task["status"] == "stopped", (task, logs())
