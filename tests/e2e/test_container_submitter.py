"""The seed's Singularity template form through the submitter, end to end.

``hpcagent-slurm --singularity-mode`` with a template that says
``singularity exec ${CLEARML_AGENT_EXECUTE}`` (as ClearML's Slurm glue documents it); the
`singularity` on PATH is the apptainer STAND-IN (tests/fakes/apptainer-standin, over bubblewrap;
Debian has no Apptainer). Checked: the rendered script (image in front, shim line in the
pre-setup), the job run by hand and by the submitter's local scheduler, and the login-node
pre-pull (``agent.container.pull_on_submit``): one pull, the job uses the cached SIF.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from test_container_e2e import bwrap, rootfs  # noqa: F401 - fixtures

from hpcagent.submitter.options import job_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fakes" / "apptainer-standin"

SEED_TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --ntasks=1

${CLEARML_PRE_SETUP}

singularity exec --writable-tmpfs ${CLEARML_AGENT_EXECUTE}

${CLEARML_POST_SETUP}
"""

TASK_PY = """\
import os, platform, sys
print("inside python", platform.python_version(), sys.prefix, flush=True)
print("inside container", os.environ.get("APPTAINER_CONTAINER", "none"), flush=True)
"""


@pytest.fixture
def world(tmp_path: Path, embedded_server: Any, rootfs: Path) -> dict[str, Any]:  # noqa: F811
    server = embedded_server
    conf = h.write_server_conf(
        tmp_path / "clearml.conf",
        server,
        agent={
            "venvs_dir": str(tmp_path / "builds"),
            "venvs_cache": {"path": str(tmp_path / "venvs"), "free_space_threshold_gb": 0},
            "abort_poll_interval_sec": 0.5,
            "container": {"binary": str(STANDIN), "cache_dir": str(tmp_path / "images")},
        },
        slurm={"state_dir": str(tmp_path / "state"), "poll_interval_sec": 0.5},
    )
    template = tmp_path / "seed-singularity.template"
    template.write_text(SEED_TEMPLATE)
    site_bin = tmp_path / "site-bin"  # the cluster's `singularity`: here the stand-in
    site_bin.mkdir()
    (site_bin / "singularity").symlink_to(STANDIN)
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "lab_py_3.11").symlink_to(rootfs)
    env = h.clean_env()
    env.update(
        PATH=f"{site_bin}:{env['PATH']}",
        PYTHONPATH=str(REPO),
        APPTAINER_STANDIN_REGISTRY=str(registry),
        APPTAINER_STANDIN_PULL_LOG=str(tmp_path / "pulls.log"),
        APPTAINER_STANDIN_UNPACK_DIR=str(tmp_path / "unpack"),
    )
    return {"server": server, "conf": conf, "template": template, "env": env, "tmp": tmp_path}


def _task(server: Any, image: str) -> str:
    task_id = str(
        server.send(
            "tasks.create",
            {
                "name": "seed-singularity",
                "type": "training",
                "script": {"entry_point": "task.py", "diff": TASK_PY, "binary": "python3"},
                "container": {"image": image},
            },
        )["id"]
    )
    queues = server.send("queues.get_all", {"name": "^sing-q$"}).get("queues") or []
    qid = queues[0]["id"] if queues else server.send("queues.create", {"name": "sing-q"})["id"]
    server.send("tasks.enqueue", {"task": task_id, "queue": qid})
    return task_id


def _slurm_argv(world: dict[str, Any], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from hpcagent.cli import slurm_main; slurm_main()",
        "--singularity-mode",
        "--template-files",
        str(world["template"]),
        "--queue",
        "sing-q",
        "--config-file",
        str(world["conf"]),
        *extra,
    ]


def dry_run(world: dict[str, Any]) -> str:
    """What ``hpcagent-slurm --dry-run`` prints (a pull may come first: allow for it)."""
    return subprocess.run(
        _slurm_argv(world, "--dry-run"),
        env=world["env"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout


def _log(server: Any, task_id: str) -> list[str]:
    data = server.send("events.get_task_log", {"task": task_id, "batch_size": 10000})
    return [line for e in data["events"] for line in str(e.get("msg", "")).split("\n")]


def _status(server: Any, task_id: str) -> str:
    return str(server.send("tasks.get_by_id", {"task": task_id})["task"]["status"])


def test_seed_template_rendered_and_run(world: dict[str, Any], rootfs: Path, bwrap: str) -> None:  # noqa: F811
    server = world["server"]
    task_id = _task(server, str(rootfs))
    out = dry_run(world)
    line = next(x for x in out.splitlines() if x.startswith("singularity exec"))
    assert line.startswith(f"singularity exec --writable-tmpfs {rootfs} env ")
    assert line.endswith(f"-m hpcagent execute --id {task_id}")
    assert "hpcagent.container.shim activate" in out
    assert server.secret_key not in out
    script = world["tmp"] / "job.sh"
    script.write_text("\n".join(x for x in out.splitlines() if not x.startswith("# next")) + "\n")
    res = subprocess.run(
        ["bash", str(script)], env=world["env"], capture_output=True, text=True, timeout=600
    )
    assert _status(server, task_id) == "completed", (res.stdout + res.stderr)[-3000:]
    lines = _log(server, task_id)
    assert f"inside container {rootfs}" in lines  # ran in the image, driven from the host
    assert any(x.startswith("inside python ") and "venvs" in x for x in lines)


def test_submitter_prepulls_and_job_uses_the_sif(world: dict[str, Any], bwrap: str) -> None:  # noqa: F811
    """pull_on_submit: the submitter pulls docker://lab/py:3.11 once on the "login node"; the
    job (run by the submitter's local scheduler) uses the cached SIF and pulls nothing."""
    server = world["server"]
    conf = json.loads(world["conf"].read_text())
    conf["agent"]["container"]["pull_on_submit"] = True
    world["conf"].write_text(json.dumps(conf))
    task_id = _task(server, "docker://lab/py:3.11")
    # --dry-run renders as submission does: it pulls (once, into the cache) and prints the
    # script with the SIF, the same script the submitter then writes and runs.
    dry = dry_run(world)
    printed = "\n".join(x for x in dry.splitlines() if not x.startswith("# next task"))
    assert str(world["tmp"] / "images") in printed
    assert ".sif" in printed
    with open(world["tmp"] / "submitter.log", "wb") as log:
        proc = subprocess.Popen(
            _slurm_argv(world, "--scheduler", "local", "--poll-interval", "0.5"),
            env=world["env"],
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 600
        while _status(server, task_id) not in ("completed", "failed", "stopped"):
            assert time.monotonic() < deadline, "the task did not finish"
            assert proc.poll() is None, (world["tmp"] / "submitter.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert _status(server, task_id) == "completed", _log(server, task_id)[-30:]
    submitted = world["tmp"] / "state" / "scripts" / f"{job_name(task_id)}.sh"
    assert submitted.read_text().rstrip("\n") == printed  # --dry-run showed what ran
    pulls = (world["tmp"] / "pulls.log").read_text().splitlines()
    assert len(pulls) == 1  # the dry run's pull; the submitter found the image cached
    sif = pulls[0].split()[-1]
    lines = _log(server, task_id)
    used = next(x for x in lines if x.startswith("inside container "))
    assert used.endswith(".sif")
    assert Path(used.split(" ", 2)[2]).parent == world["tmp"] / "images"
    assert ".pulling." in sif  # pulled to a temporary name, then renamed
