"""``hpcagent execute`` in container mode against the real embedded server.

* ``--container SANDBOX`` through the apptainer STAND-IN (tests/fakes/apptainer-standin, over
  bubblewrap; Debian has no Apptainer) on the debootstrap root filesystem;
* the seed's template form ``singularity exec ${CLEARML_AGENT_EXECUTE}`` with the shim;
* ``--docker IMAGE`` with the locally imported ``hpcagent-test-base`` image;
* abort of a task running in a container: status stopped, no process left.

The root filesystem, bwrap and Docker fixtures come from test_container_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import helpers as h
import psutil
import pytest
from test_container_e2e import bwrap, docker_image, rootfs  # noqa: F401 - fixtures

from hpcagent.container.shim import install_shims, shim_pre_setup

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fakes" / "apptainer-standin"

TASK_PY = """\
import hashlib, os, platform, subprocess, sys, time
print("inside python", platform.python_version(), sys.prefix, flush=True)
print("inside container", os.environ.get("APPTAINER_CONTAINER", "docker"), flush=True)
key = os.environ.get("CLEARML_API_SECRET_KEY", "").encode()
print("inside secret", hashlib.sha256(key).hexdigest()[:16], flush=True)
marker = os.environ.get("SLEEP_MARKER")
if marker:
    subprocess.Popen(["sleep", marker])
    subprocess.Popen(["sh", "-c", f"sleep {marker}; echo {marker}"])
    print("sleeping", flush=True)
    time.sleep(float(marker))
burn = os.environ.get("BURN_SECONDS")
if burn:  # 300 MB touched and one core busy: what the metrics must see of the container
    block = bytearray(300 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    end = time.time() + float(burn)
    while time.time() < end:
        pass
print("task done", flush=True)
"""


def _conf(path: Path, server: Any, tmp: Path) -> Path:
    conf = {
        "api": h.api_section(server, http={"retries": 2, "timeout_sec": 10}),
        "agent": {
            "venvs_dir": str(tmp / "builds"),
            "venvs_cache": {"path": str(tmp / "venv-cache"), "free_space_threshold_gb": 0},
            "abort_poll_interval_sec": 0.5,
            "metrics_interval_sec": 1,
            "container": {"binary": str(STANDIN), "cache_dir": str(tmp / "images")},
        },
        "executor": {"kill_grace_sec": 3, "final_flush_timeout_sec": 30},
    }
    path.write_text(json.dumps(conf, indent=1))
    return path


def _task(server: Any, *, env: dict[str, str] | None = None, image: str = "") -> str:
    body: dict[str, Any] = {
        "name": "container-e2e",
        "type": "training",
        "script": {"entry_point": "task.py", "diff": TASK_PY, "binary": "python3"},
    }
    if env:
        body["hyperparams"] = {
            "Environment": {
                k: {"section": "Environment", "name": k, "value": v} for k, v in env.items()
            }
        }
    if image:
        body["container"] = {"image": image}
    task_id = str(server.send("tasks.create", body)["id"])
    queues = server.send("queues.get_all", {"name": "^ctr-q$"}).get("queues") or []
    qid = queues[0]["id"] if queues else server.send("queues.create", {"name": "ctr-q"})["id"]
    server.send("tasks.enqueue", {"task": task_id, "queue": qid})
    return task_id


def _env(conf: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    env["CLEARML_CONFIG_FILE"] = str(conf)
    env["PYTHONPATH"] = str(REPO)
    return env


def _execute_argv(task_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hpcagent", "execute", "--id", task_id, *extra]


def _log(server: Any, task_id: str) -> list[str]:
    data = server.send("events.get_task_log", {"task": task_id, "batch_size": 10000})
    return [line for e in data["events"] for line in str(e.get("msg", "")).split("\n")]


def _status(server: Any, task_id: str) -> str:
    return str(server.send("tasks.get_by_id", {"task": task_id})["task"]["status"])


def _check_completed(server: Any, task_id: str, out: str) -> list[str]:
    assert _status(server, task_id) == "completed", out[-3000:]
    lines = _log(server, task_id)
    secret = hashlib.sha256(server.secret_key.encode()).hexdigest()[:16]
    assert f"inside secret {secret}" in lines
    assert "task done" in lines
    py = next(line for line in lines if line.startswith("inside python "))
    assert "venv-cache" in py  # the cached venv, built with the image's interpreter
    return lines


@pytest.fixture
def setup(tmp_path: Path, embedded_server: Any) -> dict[str, Any]:
    return {
        "server": embedded_server,
        "conf": _conf(tmp_path / "c.conf", embedded_server, tmp_path),
    }


def test_execute_container_flag_through_standin(
    setup: dict[str, Any],
    rootfs: Path,  # noqa: F811
    bwrap: str,  # noqa: F811
) -> None:
    server = setup["server"]
    task_id = _task(server)
    res = subprocess.run(
        _execute_argv(task_id, "--container", str(rootfs)),
        env=_env(setup["conf"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = _check_completed(server, task_id, res.stdout + res.stderr)
    assert f"inside container {rootfs}" in lines
    assert any("apptainer 1.3.4-standin" in line for line in lines)  # runtime version reported
    assert "python 3.11.2" in next(x for x in lines if x.startswith("inside python"))
    assert server.secret_key not in res.stdout + res.stderr


def test_seed_template_form_with_shim(
    setup: dict[str, Any],
    rootfs: Path,  # noqa: F811
    bwrap: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`singularity exec ${CLEARML_AGENT_EXECUTE}` as in the seed's templates, mode host."""
    server = setup["server"]
    task_id = _task(server, image=str(rootfs))
    real = tmp_path / "site-bin"
    real.mkdir()
    (real / "singularity").symlink_to(STANDIN)
    shims = install_shims(tmp_path / "shims", sys.executable)
    script = tmp_path / "job.sh"
    # What the submitter renders, with the image in front for this template form
    # (hpcagent.submitter.blocks.agent_execute_command), plus the shim line in PRE_SETUP.
    launcher = shlex.join(
        [
            "env",
            f"CLEARML_CONFIG_FILE={setup['conf']}",
            "HPCAGENT_CONTAINER_MODE=singularity",
            sys.executable,
            "-m",
            "hpcagent",
            "execute",
            "--id",
            task_id,
        ]
    )
    script.write_text(
        "#!/bin/bash\n"
        f"{shim_pre_setup(shims)}\n"
        f"singularity exec --writable-tmpfs {shlex.quote(str(rootfs))} {launcher}\n"
    )
    env = _env(setup["conf"])
    env["PATH"] = f"{real}:{env['PATH']}"
    res = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    lines = _check_completed(server, task_id, res.stdout + res.stderr)
    assert f"inside container {rootfs}" in lines
    assert any("--writable-tmpfs" in line and "container: " in line for line in lines)


@pytest.mark.docker
def test_execute_docker_flag(setup: dict[str, Any], docker_image: str) -> None:  # noqa: F811
    server = setup["server"]
    task_id = _task(server, image=docker_image)
    res = subprocess.run(
        _execute_argv(task_id, "--docker"),  # no IMAGE: the task's container.image
        env=_env(setup["conf"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = _check_completed(server, task_id, res.stdout + res.stderr)
    assert "inside container docker" in lines


def _series_max(server: Any, task_id: str, variant: str) -> float:
    scalars = server.send("events.scalar_metrics_iter_histogram", {"task": task_id})
    return max(scalars[":monitor:machine"][variant]["y"])


@pytest.mark.docker
def test_docker_metrics_see_the_container(setup: dict[str, Any], docker_image: str) -> None:  # noqa: F811
    """The task runs under the Docker daemon, not under the executor: the process metrics must
    still be the container's (300 MB, a busy core), not the ``docker run`` client's."""
    server = setup["server"]
    task_id = _task(server, image=docker_image, env={"BURN_SECONDS": "8"})
    res = subprocess.run(
        _execute_argv(task_id, "--docker"),
        env=_env(setup["conf"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    _check_completed(server, task_id, res.stdout + res.stderr)
    assert _series_max(server, task_id, "process_memory_gb") > 0.25
    # a busy core, shared with whatever else this machine runs; the docker client alone is ~0
    assert _series_max(server, task_id, "process_cpu_usage") > 10.0


def _marker_procs(marker: str) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if marker in " ".join(p.info["cmdline"] or [])
    ]


def _procs_under(folder: Path) -> list[int]:
    """Processes whose working directory is in ``folder`` (the executor's task workspaces)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.cwd().startswith(str(folder)):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.parametrize("kind", ["standin", pytest.param("docker", marks=pytest.mark.docker)])
def test_abort_in_container_leaves_nothing(
    setup: dict[str, Any], kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = setup["server"]
    if kind == "docker":
        image = request.getfixturevalue("docker_image")
        extra = ["--docker", image]
    else:
        image = str(request.getfixturevalue("rootfs"))
        request.getfixturevalue("bwrap")
        extra = ["--container", image]
    marker = f"{400 + uuid.uuid4().int % 500}.{os.getpid()}"
    task_id = _task(server, env={"SLEEP_MARKER": marker})
    with open(tmp_path / "exec.log", "wb") as log:
        proc = subprocess.Popen(
            _execute_argv(task_id, *extra), env=_env(setup["conf"]), stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 300
        while "sleeping" not in _log(server, task_id) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "exec.log").read_text()[-3000:]
            time.sleep(0.5)
        assert len(_marker_procs(marker)) >= 3  # the task's own children, in the container
        assert _procs_under(tmp_path / "builds")  # the task itself runs in its workspace
        server.send("tasks.stop", {"task": task_id, "force": True})
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _status(server, task_id) == "stopped"
    deadline = time.monotonic() + 20
    while _marker_procs(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _marker_procs(marker) == []
    assert _procs_under(tmp_path / "builds") == []
    if kind == "docker":
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name=hpcagent-{task_id}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert left.stdout.strip() == ""
