"""The official ``clearml`` SDK (2.1.12, a test dependency) against the embedded server.

The SDK runs in a subprocess with CLEARML_CONFIG_FILE pointing at a temporary clearml.conf
written from the server's own snippet (api/web/files servers), like a user's machine would.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import run_sdk

pytest.importorskip("clearml")

pytestmark = pytest.mark.e2e

SDK_SCRIPT = textwrap.dedent(
    """
    import json
    from clearml import Task

    task = Task.create(
        project_name="sdk-compat",
        task_name="sdk-task",
        repo="https://github.com/allegroai/clearml.git",
        branch="master",
        script="examples/reporting/scalar_reporting.py",
        packages=["numpy", "requests"],
        argparse_args=[("lr", "0.1")],
        add_task_init_call=False,
    )
    Task.enqueue(task, queue_name="sdk-queue")
    got = Task.get_task(task_id=task.id)
    by_name = Task.get_task(project_name="sdk-compat", task_name="sdk-task")
    print("RESULT " + json.dumps({
        "id": got.id,
        "by_name": by_name.id,
        "name": got.name,
        "status": got.get_status(),
        "repository": got.data.script.repository,
        "branch": got.data.script.branch,
        "entry_point": got.data.script.entry_point,
        "requirements": got.data.script.requirements,
        "parameters": got.get_parameters(),
    }))
    """
)


def test_sdk_create_enqueue_get_task(embedded_server: Any, tmp_path: Path) -> None:
    queue = embedded_server.send("queues.create", {"name": "sdk-queue"})["id"]
    result = run_sdk(embedded_server, tmp_path, SDK_SCRIPT)
    assert result["name"] == "sdk-task"
    assert result["by_name"] == result["id"]
    assert result["status"] == "queued"
    assert result["repository"] == "https://github.com/allegroai/clearml.git"
    assert result["branch"] == "master"
    assert result["entry_point"] == "examples/reporting/scalar_reporting.py"
    assert "numpy" in result["requirements"]["pip"]
    assert result["parameters"]["Args/lr"] == "0.1"
    # the server agrees: the task sits in the queue, with the SDK's hyperparams
    task = embedded_server.send("tasks.get_by_id", {"task": result["id"]})["task"]
    assert task["execution"]["queue"] == queue
    assert task["hyperparams"]["Args"]["lr"]["value"] == "0.1"
    popped = embedded_server.send("queues.get_next_task", {"queue": queue})
    assert popped["entry"]["task"] == result["id"]


INIT_SCRIPT = textwrap.dedent(
    """
    import json
    from clearml import Task

    task = Task.init(project_name="sdk-init", task_name="local-run",
                     auto_connect_frameworks=False, auto_resource_monitoring=False)
    task.connect({"lr": 0.5})
    logger = task.get_logger()
    for i in range(5):
        logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
    print("hello from the task")
    task_id = task.id
    task.flush(wait_for_uploads=True)
    task.close()
    got = Task.get_task(task_id=task_id)
    print("RESULT " + json.dumps({
        "id": task_id,
        "status": got.get_status(),
        "scalars": got.get_reported_scalars(),
        "parameters": got.get_parameters(),
        "log": got.get_reported_console_output(10),
    }))
    """
)


def test_sdk_local_task_init_reports_and_completes(embedded_server: Any, tmp_path: Path) -> None:
    result = run_sdk(embedded_server, tmp_path, INIT_SCRIPT)
    assert result["status"] == "completed"
    assert "loss" in result["scalars"], result
    assert result["scalars"]["loss"]["train"]["x"] == [0, 1, 2, 3, 4]
    assert result["scalars"]["loss"]["train"]["y"][0] == 1.0
    assert result["parameters"]["General/lr"] == "0.5"
    assert any("hello from the task" in chunk for chunk in result["log"])
    task = embedded_server.send("tasks.get_by_id", {"task": result["id"]})["task"]
    assert task["last_iteration"] == 4
    assert task["name"] == "local-run"


def _agent_binary() -> str | None:
    import shutil

    return os.environ.get("HPCAGENT_CLEARML_AGENT") or shutil.which("clearml-agent")


@pytest.mark.skipif(
    _agent_binary() is None,
    reason="clearml-agent not installed (pip install clearml-agent==3.0.3 in any venv and set "
    "HPCAGENT_CLEARML_AGENT=/path/to/clearml-agent)",
)
def test_official_clearml_agent_daemon_runs_a_task(embedded_server: Any, tmp_path: Path) -> None:
    import signal
    import time

    srv = embedded_server
    queue = srv.send("queues.create", {"name": "agent-queue"})["id"]
    script = {"binary": "python3", "entry_point": "run.py", "working_dir": ".",
              "diff": "print('hello from the agent task')\n"}  # fmt: skip
    task = srv.send("tasks.create", {"name": "agent-task", "type": "training", "script": script})
    srv.send("tasks.enqueue", {"task": task["id"], "queue": queue})
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        "api {\n"
        f'  api_server: "{srv.url}"\n'
        f'  credentials {{ access_key: "{srv.access_key}", secret_key: "{srv.secret_key}" }}\n'
        "}\n"
        f'agent {{ worker_id: "e2e:0", venvs_dir: "{tmp_path / "venvs"}",'
        " vcs_cache { enabled: false } }\n"
    )
    env = dict(os.environ, CLEARML_CONFIG_FILE=str(conf), CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL="1",
               HOME=str(tmp_path))  # fmt: skip
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [str(_agent_binary()), "daemon", "--queue", "agent-queue", "--foreground"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            status = srv.send("tasks.get_all", {"id": [task["id"]], "only_fields": ["status"]})[
                "tasks"
            ][0]["status"]
            if status in ("completed", "failed"):
                break
            time.sleep(1)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        log.close()
    output = (tmp_path / "agent.log").read_text(errors="replace")
    assert status == "completed", output
    doc = srv.send("tasks.get_by_id", {"task": task["id"]})["task"]
    assert doc["last_worker"] == "e2e:0"
    assert doc["runtime"].get("_exec_agent_hostname")
    log_events = srv.send("events.get_task_log", {"task": task["id"], "batch_size": 100})
    assert any("pulled from" in e["msg"] for e in log_events["events"])
