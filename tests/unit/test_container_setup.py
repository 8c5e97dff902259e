"""The executor's entry into container mode (mode choice, session, environment mapping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcagent.config import ContainerSettings
from hpcagent.container.apptainer import ApptainerSession
from hpcagent.container.base import CONTAINER_PATH
from hpcagent.container.mode import (
    ContainerChoice,
    choose_mode,
    command_wrapper,
    inner_env,
    open_session,
)
from hpcagent.container.shim import ENV_ARGS, ENV_BINARY, ENV_IMAGE
from hpcagent.errors import ContainerError

STANDIN = Path(__file__).resolve().parents[2] / "tests" / "fakes" / "apptainer-standin"


def test_choose_mode() -> None:
    assert choose_mode(container=None, docker=None, env={}) is None
    assert choose_mode(container=None, docker="", env={}) == ContainerChoice("docker", "")
    assert choose_mode(container="/i.sif", docker=None, env={}) == ContainerChoice(
        "apptainer", "/i.sif"
    )
    handed = {ENV_IMAGE: "docker://py:3", ENV_ARGS: "--nv", ENV_BINARY: "/usr/bin/singularity"}
    assert choose_mode(container=None, docker=None, env=handed) == ContainerChoice(
        "apptainer", "docker://py:3", ("--nv",), "/usr/bin/singularity"
    )
    # already inside the image (mode: inside): run directly, never nest
    assert choose_mode(container="/i.sif", docker=None, env={"APPTAINER_CONTAINER": "/i"}) is None
    with pytest.raises(ContainerError):
        choose_mode(container="/i.sif", docker="x", env={})
    # the submitter's --singularity-mode: the task's image (or the default), Apptainer
    mode = {"HPCAGENT_CONTAINER_MODE": "singularity"}
    assert choose_mode(container=None, docker=None, env=mode) == ContainerChoice("apptainer")
    assert choose_mode(container=None, docker=None, env={**mode, **handed}) == ContainerChoice(
        "apptainer", "docker://py:3", ("--nv",), "/usr/bin/singularity"
    )
    docker_mode = {"HPCAGENT_CONTAINER_MODE": "container"}  # hpcagent-slurm --container-mode
    assert choose_mode(container=None, docker=None, env=docker_mode) == ContainerChoice("docker")
    with pytest.raises(ContainerError):
        choose_mode(container=None, docker=None, env={"HPCAGENT_CONTAINER_MODE": "lxc"})


def test_inner_env_keeps_only_what_the_executor_set() -> None:
    host = {"PATH": "/host/bin", "HOME": "/home/a", "SLURM_JOB_ID": "5", "X": "1"}
    child = {**host, "X": "2", "CLEARML_TASK_ID": "t", "PATH": "/v/bin:/host/bin"}
    assert inner_env(child, host, "/v/bin") == {
        "X": "2",
        "CLEARML_TASK_ID": "t",
        "PATH": f"/v/bin:{CONTAINER_PATH}",
    }


def test_open_session_on_a_sandbox(tmp_path: Path) -> None:
    sandbox = tmp_path / "rootfs"
    sandbox.mkdir()
    work, cache = tmp_path / "work", tmp_path / "venvs"
    settings = ContainerSettings(binary=str(STANDIN), default_image=str(sandbox))
    notes: list[str] = []
    session = open_session(
        ContainerChoice("apptainer"),
        image="",
        arguments="--writable-tmpfs",
        settings=settings,
        task_id="t1",
        binds=[work, cache, None],
        host_env={"PATH": "/usr/bin:/bin"},
        log=notes.append,
    )
    assert isinstance(session, ApptainerSession)
    assert session.image_path == str(sandbox)
    assert work.is_dir()
    assert cache.is_dir()
    assert any("apptainer 1.3.4-standin" in n for n in notes)
    argv, env = command_wrapper(session, work)(["python3", "-m", "venv", str(cache / "v")])
    assert argv[:2] == [str(STANDIN), "exec"]
    assert argv[-5:] == [str(sandbox), "python3", "-m", "venv", str(cache / "v")]
    assert f"{work}:{work}" in argv
    assert env["PATH"] == "/usr/bin:/bin"  # the runtime itself runs with the host env


def test_open_session_without_any_image(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="needs an image"):
        open_session(
            ContainerChoice("apptainer"),
            image="",
            arguments=None,
            settings=ContainerSettings(binary=str(STANDIN)),
            task_id="t1",
        )
