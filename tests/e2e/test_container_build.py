"""``hpcagent build``: a Docker image that runs the task to completed with ``docker run``, and the
Apptainer definition next to it.

The base image is the locally imported ``hpcagent-test-base`` (debootstrap + docker import, no
registry); the task's requirement ``hpca-tiny`` comes from a local wheelhouse made here, so the
build needs no index. The image holds no credentials: ``docker run`` gives them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import clean_env, make_wheelhouse, task_log_lines, write_server_conf
from test_container_e2e import docker_image, rootfs  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(1800)]

TASK_PY = """\
import os, sys, hpca_tiny
print("built env", hpca_tiny.VALUE, sys.prefix, flush=True)
print("task id", os.environ.get("CLEARML_TASK_ID"), flush=True)
"""


def _task(server: Any, image: str) -> str:
    body = {
        "name": "build me – ü 'quoted'",
        "type": "training",
        "script": {
            "entry_point": "task.py",
            "diff": TASK_PY,
            "binary": "python3",
            "requirements": {"pip": "# Python 3.11\nhpca-tiny==1.0\n"},
        },
        "container": {"image": image},
    }
    return str(server.send("tasks.create", body)["id"])


def _enqueue(server: Any, task_id: str) -> None:
    queues = server.send("queues.get_all", {"name": "^build-q$"}).get("queues") or []
    qid = queues[0]["id"] if queues else server.send("queues.create", {"name": "build-q"})["id"]
    server.send("tasks.enqueue", {"task": task_id, "queue": qid})


def _build(conf: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "CLEARML_CONFIG_FILE": str(conf), "PIP_FIND_LINKS": str(wheels)}
    return subprocess.run(
        [sys.executable, "-m", "hpcagent", "build", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def _docker_run(server: Any, image: str) -> subprocess.CompletedProcess[str]:
    creds = {
        "CLEARML_API_HOST": server.url,
        "CLEARML_API_ACCESS_KEY": server.access_key,
        "CLEARML_API_SECRET_KEY": server.secret_key,
    }
    argv = ["docker", "run", "--rm", "--network", "host"]
    for key in creds:
        argv += ["-e", key]  # values from the client's environment, never in argv
    return subprocess.run(
        [*argv, image],
        env={**os.environ, **creds},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def built_images() -> Iterator[list[str]]:
    """Names of images a test built; removed at teardown."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["docker", "image", "rm", "-f", name], capture_output=True)


def _docker_build(
    tmp_path: Path, server: Any, base: str, entry: str, built: list[str]
) -> tuple[str, str]:
    """``hpcagent build --docker`` for a new task on ``base``: ``(task id, image name)``."""
    conf = write_server_conf(tmp_path / "clearml.conf", server)
    wheels = make_wheelhouse(tmp_path / "wheels")
    task_id = _task(server, base)
    target = f"hpcagent-build-test-{uuid.uuid4().hex[:8]}"
    built.append(target)
    res = _build(
        conf, wheels, "--id", task_id, "--docker", "--target", target,
        "--entry-point", entry, "--context", str(tmp_path / "ctx"),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return task_id, target


def test_build_docker_image_runs_the_task(
    tmp_path: Path,
    embedded_server: Any,
    docker_image: str,  # noqa: F811
    built_images: list[str],
) -> None:
    server = embedded_server
    task_id, target = _docker_build(tmp_path, server, docker_image, "reuse_task", built_images)
    inspect = subprocess.run(
        ["docker", "image", "inspect", target], capture_output=True, text=True, check=True
    )
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/opt/hpcagent/venv/bin/hpcagent", "execute", "--id", task_id]
    assert server.secret_key not in inspect.stdout  # no credentials in the image
    # reuse_task: the very task runs when the image starts
    _enqueue(server, task_id)
    run = _docker_run(server, target)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert server.send("tasks.get_by_id", {"task": task_id})["task"]["status"] == "completed"
    lines = task_log_lines(server, task_id)
    assert any(line.startswith("built env tiny-ok") for line in lines), lines[-40:]
    assert f"task id {task_id}" in lines
    assert any("venv cache: hit" in line for line in lines), lines[-40:]
    assert server.secret_key not in run.stdout + run.stderr


def test_build_clone_task_entry_point(
    tmp_path: Path,
    embedded_server: Any,
    docker_image: str,  # noqa: F811
    built_images: list[str],
) -> None:
    """clone_task: each launch runs a fresh clone; the original stays as it was."""
    server = embedded_server
    task_id, target = _docker_build(tmp_path, server, docker_image, "clone_task", built_images)
    run = _docker_run(server, target)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    original = server.send("tasks.get_by_id", {"task": task_id})["task"]
    assert original["status"] == "created"
    tasks = server.send("tasks.get_all", {"parent": task_id}).get("tasks") or []
    clones = [t for t in tasks if t["id"] != task_id]
    assert clones, "no clone was made"
    assert clones[0]["status"] == "completed"
    clone_lines = task_log_lines(server, clones[0]["id"])
    assert any(line.startswith("built env tiny-ok") for line in clone_lines)


def _singularity_build(tmp_path: Path, server: Any, image: str) -> tuple[str, Path, str]:
    conf = write_server_conf(tmp_path / "clearml.conf", server)
    wheels = make_wheelhouse(tmp_path / "wheels")
    task_id = _task(server, image)
    target = tmp_path / "out" / "task image.sif"
    target.parent.mkdir()
    res = _build(
        conf, wheels, "--id", task_id, "--singularity", "--target", str(target),
        "--entry-point", "reuse_task",
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return task_id, target, res.stdout


def test_build_singularity_definition(
    tmp_path: Path,
    embedded_server: Any,
    docker_image: str,  # noqa: F811
) -> None:
    """--singularity --target NAME.sif: the definition file always; without apptainer on this
    machine no SIF, and the command says how to build it."""
    task_id, target, out = _singularity_build(tmp_path, embedded_server, docker_image)
    definition = target.with_suffix(".def")
    text = definition.read_text()
    assert text.startswith(f"Bootstrap: docker-daemon\nFrom: {docker_image}\n")
    assert f"execute --id {task_id}" in text
    files = text.split("%files\n", 1)[1].split("\n%", 1)[0].splitlines()
    sources = [Path(line.split()[0]) for line in files]  # no spaces: Apptainer splits there
    assert all(src.exists() for src in sources), sources  # absolute: buildable from anywhere
    wheels = next(src for src in sources if src.name == "wheels")
    assert list(wheels.glob("hpcagent-*.whl"))
    assert list(wheels.glob("hpca_tiny-*.whl"))
    assert embedded_server.secret_key not in text
    if shutil.which("apptainer") is None:
        assert not target.exists()
        assert f"apptainer build {target} {definition}" in out


@pytest.mark.apptainer
def test_build_sif_with_real_apptainer(
    tmp_path: Path,
    embedded_server: Any,
    docker_image: str,  # noqa: F811
) -> None:
    real = shutil.which("apptainer")
    if real is None:
        pytest.skip("no apptainer binary on this machine (Debian has no package)")
    task_id, target, _ = _singularity_build(tmp_path, embedded_server, docker_image)
    assert target.is_file()
    _enqueue(embedded_server, task_id)
    env = {
        **os.environ,
        "APPTAINERENV_CLEARML_API_HOST": embedded_server.url,
        "APPTAINERENV_CLEARML_API_ACCESS_KEY": embedded_server.access_key,
        "APPTAINERENV_CLEARML_API_SECRET_KEY": embedded_server.secret_key,
    }
    run = subprocess.run([real, "run", str(target)], env=env, capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    status = embedded_server.send("tasks.get_by_id", {"task": task_id})["task"]["status"]
    assert status == "completed"
