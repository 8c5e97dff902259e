"""The executor's entry into container mode: pick the mode, open a session, map the env.

The executor (hpcagent.executor.main) calls, in order::

    choice = choose_mode(container=opts.container, docker=opts.docker, env=os.environ)
    if choice is not None:
        session = open_session(choice, image=task.container_image,
                               arguments=task.container_arguments, settings=csettings,
                               task_id=task.id, binds=[workdir, venvs cache, venvs dir],
                               host_env=env, log=note)
    # venv: VenvSpec(python="python3", python_version=session.python_version(workdir),
    #                image=session.cache_key(), manager="pip"); every setup command through
    #                command_wrapper(session, workdir)
    # run:  prep = session.wrap(argv, cwd=cwd, task_env=inner_env(child_env, env, venv_bin))
    #       ChildProcess(prep.argv, cwd=prep.cwd, env=prep.env, ...)
    # metrics: Monitor(..., extra_roots=lambda: session.process_roots(prep))
    # abort: session.abort(prep) (Docker: docker kill), then the usual process-group stop.

``None`` from :func:`choose_mode` means "no container": either none was asked for, or this
process already runs inside the image (``mode: inside``), where the task runs directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcagent.container.shim import request_from_env
from hpcagent.errors import ContainerError

if TYPE_CHECKING:
    from hpcagent.config import ContainerSettings
    from hpcagent.container.base import Session

Logger = Callable[[str], None]
#: Set by the submitter in ${CLEARML_AGENT_EXECUTE} (hpcagent.submitter.blocks).
ENV_MODE = "HPCAGENT_CONTAINER_MODE"


@dataclass(frozen=True)
class ContainerChoice:
    """How to run: ``kind`` "apptainer" or "docker"; ``image`` "" means the task's/default;
    ``arguments`` and ``binary`` come from the template shim (seed's template form)."""

    kind: str
    image: str = ""
    arguments: tuple[str, ...] = ()
    binary: str = ""


def choose_mode(
    *, container: str | None, docker: str | None, env: Mapping[str, str] | None = None
) -> ContainerChoice | None:
    """``--docker [IMAGE]`` (``docker=""`` without image), ``--container IMAGE``, the shim's
    hand-over, or ``HPCAGENT_CONTAINER_MODE`` from the submitter, in that order; None when none
    applies or when already inside a container."""
    env = os.environ if env is None else env
    if docker is not None and container is not None:
        raise ContainerError("--docker and --container cannot be used together")
    if docker is not None:
        return ContainerChoice("docker", docker)
    if running_inside_container(env):
        return None
    if container is not None:
        return ContainerChoice("apptainer", container)
    handed = request_from_env(env)
    if handed is not None:
        request, binary = handed
        return ContainerChoice("apptainer", request.image, request.arguments, binary)
    # The submitter's --singularity-mode (Apptainer) or --container-mode (Docker); the image is
    # the task's or the default.
    mode = env.get(ENV_MODE, "").strip().lower()
    if mode in ("singularity", "apptainer"):
        return ContainerChoice("apptainer")
    if mode in ("container", "docker"):
        return ContainerChoice("docker")
    if mode:
        raise ContainerError(f"{ENV_MODE}={mode!r}: expected singularity, container or docker")
    return None


def running_inside_container(env: Mapping[str, str] | None = None) -> bool:
    """True when this process already runs in an Apptainer/Singularity container
    (``mode: inside``): then the task runs directly, without nesting a second container."""
    env = os.environ if env is None else env
    return bool(env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER"))


def open_session(
    choice: ContainerChoice,
    *,
    image: str,
    arguments: str | Sequence[str] | None,
    settings: ContainerSettings,
    task_id: str,
    binds: Sequence[Path | None] = (),
    host_env: Mapping[str, str] | None = None,
    log: Logger = print,
) -> Session:
    """Resolve the runtime (version reported through ``log``), make the image local (pulled
    once into the shared cache) and bind ``binds`` (created when missing) at the same paths.

    The image: ``choice.image``, else the task's ``image``, else ``agent.default_docker.image``.
    """
    # Imported here: the runtimes and the image cache (filelock, asyncio) cost every task that
    # runs without a container ~0.04 s of start-up, hpcagent.container.base a few ms more.
    from hpcagent.container.apptainer import ApptainerSession, resolve_runtime
    from hpcagent.container.base import ContainerRequest, request_for_task
    from hpcagent.container.cache import ensure_image
    from hpcagent.container.docker import DockerSession, ensure_docker_image, resolve_docker

    env = dict(os.environ if host_env is None else host_env)
    task = {"container": {"image": image, "arguments": arguments}}
    request = request_for_task(task, settings, override_image=choice.image)
    if request is None:
        raise ContainerError(
            "container mode needs an image: the task has none and agent.default_docker.image "
            "is empty"
        )
    if choice.image and choice.arguments:
        request = ContainerRequest(request.image, (*choice.arguments, *request.arguments))
    session: Session
    if choice.kind == "docker":
        docker = resolve_docker(settings.docker_binary)
        image_id = ensure_docker_image(
            docker, request.image, pull_timeout_s=settings.pull_timeout_s
        )
        log(f"container: docker image {request.image} ({image_id[:19]})")
        session = DockerSession(docker, request.image, request, settings, task_id, host_env=env)
    else:
        runtime = resolve_runtime(choice.binary or settings.binary, env)
        log(f"container: {runtime.describe()}")
        local = ensure_image(request.image, settings, runtime, log=log)
        log(f"container: image {request.image} -> {local}")
        session = ApptainerSession(runtime, local, request, settings, host_env=env)
    for path in binds:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            session.add_bind(path)
    return session


def inner_env(
    child_env: Mapping[str, str], host_env: Mapping[str, str], venv_bin: str = ""
) -> dict[str, str]:
    """The task's variables for inside the container: what the executor added to or changed
    in the host environment (CLEARML_*, the task's own, PYTHONPATH ...), with a PATH that
    makes sense inside (the venv's bin, then the image's default)."""
    from hpcagent.container.base import CONTAINER_PATH  # container mode only

    env = {k: v for k, v in child_env.items() if host_env.get(k) != v and k != "PATH"}
    env["PATH"] = f"{venv_bin}:{CONTAINER_PATH}" if venv_bin else CONTAINER_PATH
    return env


def command_wrapper(
    session: Session, cwd: Path
) -> Callable[[Sequence[str]], tuple[list[str], dict[str, str]]]:
    """For the venv builder: turns a setup argv (``python3 -m venv``, ``pip install``) into
    ``(argv, env)`` that runs it in the image, as a setup container for Docker."""

    def wrap(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        prep = session.wrap(argv, cwd=cwd, main=False)
        return prep.argv, prep.env

    return wrap
