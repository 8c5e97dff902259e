"""The official ``clearml`` SDK (2.1.12, a test dependency) against the embedded server.

The SDK runs in a subprocess with CLEARML_API_HOST/KEYS and CLEARML_CONFIG_FILE pointing at a
temporary clearml.conf (api/web/files servers), like a user's machine would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

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


def _run_sdk(server: Any, tmp_path: Path, script: str) -> dict[str, Any]:
    conf = tmp_path / "clearml.conf"
    base = server.url.rsplit(":", 1)[0]
    conf.write_text(
        "api {\n"
        f'  api_server: "{server.url}"\n'
        f'  web_server: "{base}:1"\n'
        f'  files_server: "{base}:2"\n'
        f'  credentials {{ access_key: "{server.access_key}",\n'
        f'                 secret_key: "{server.secret_key}" }}\n'
        "}\n"
    )
    env = dict(os.environ)
    env.update(
        {
            "CLEARML_CONFIG_FILE": str(conf),
            "CLEARML_API_HOST": server.url,
            "CLEARML_WEB_HOST": f"{base}:1",
            "CLEARML_FILES_HOST": f"{base}:2",
            "CLEARML_API_ACCESS_KEY": server.access_key,
            "CLEARML_API_SECRET_KEY": server.secret_key,
            "HOME": str(tmp_path),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_sdk_create_enqueue_get_task(embedded_server: Any, tmp_path: Path) -> None:
    queue = embedded_server.send("queues.create", {"name": "sdk-queue"})["id"]
    result = _run_sdk(embedded_server, tmp_path, SDK_SCRIPT)
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
    result = _run_sdk(embedded_server, tmp_path, INIT_SCRIPT)
    assert result["status"] == "completed"
    assert result["scalars"]["loss"]["train"]["x"] == [0, 1, 2, 3, 4]
    assert result["scalars"]["loss"]["train"]["y"][0] == 1.0
    assert result["parameters"]["General/lr"] == "0.5"
    assert any("hello from the task" in chunk for chunk in result["log"])
    task = embedded_server.send("tasks.get_by_id", {"task": result["id"]})["task"]
    assert task["last_iteration"] == 4
    assert task["name"] == "local-run"
