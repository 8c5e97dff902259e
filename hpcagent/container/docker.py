"""Docker mode: ``hpcagent execute --id X --docker [IMAGE]`` (the seed agent's Docker mode).

Docker and Podman (``agent.container.docker_binary: podman``) take the same argv here.
As with Apptainer, hpcagent stays on the host and only the task's commands run in the
container, each as ``docker run --rm --init --name hpcagent-<task> ... IMAGE cmd``, so logs
(the ``docker run`` client's stdout), the venv cache and the final status work the same way.
Differences the executor must know (see :class:`DockerSession`):

* The container is a child of the Docker daemon, not of the executor: killing the ``docker
  run`` client's process group is not enough. On abort :meth:`DockerSession.abort` runs
  ``docker kill``; the client then exits on its own.
* For the same reason the executor's metrics would see only the client: the container's init
  (``docker inspect --format {{.State.Pid}}``, a host pid, since Docker shares the host's
  kernel) is handed to the monitor by :meth:`DockerSession.process_roots`.
* A container left over by a crashed run of the same task (same name) is removed first.
* Only ``--rm`` containers are made, and each runs one command, so nothing accumulates.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcagent.config import ContainerSettings
from hpcagent.container.base import (
    ENV_NAME,
    Bind,
    ContainerRequest,
    PreparedCommand,
    is_secret_name,
    job_gpus,
    probe_python,
    task_view,
    unique_binds,
)
from hpcagent.container.images import docker_image_name
from hpcagent.errors import CommandError, ContainerError
from hpcagent.process import CommandResult, run_command

DOCKER_TIMEOUT_S = 120.0
_NAME_OK = re.compile(r"[^a-zA-Z0-9_.-]+")


def container_name(task_id: str, suffix: str = "") -> str:
    """``hpcagent-<task>[-<suffix>]``, reduced to the characters Docker allows."""
    name = "hpcagent-" + _NAME_OK.sub("_", task_id) + (f"-{suffix}" if suffix else "")
    return name[:128]


def docker(argv: list[str], timeout: float = DOCKER_TIMEOUT_S) -> CommandResult:
    """One Docker client command through the process seam; a start failure is a ContainerError."""
    try:
        return run_command(argv, timeout=timeout)
    except CommandError as exc:
        raise ContainerError(f"{argv[0]} {argv[1]} failed: {exc}") from exc


def resolve_docker(binary: str = "docker") -> str:
    """The docker client, checked with ``docker version`` (the daemon must answer)."""
    found = shutil.which(binary)
    if not found:
        raise ContainerError(f"docker client not found: {binary} (agent.container.docker_binary)")
    res = docker([found, "version", "--format", "{{.Server.Version}}"])
    if res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip())[-500:]
        raise ContainerError(f"the Docker daemon does not answer: {detail}")
    return found


def ensure_docker_image(client: str, image: str, *, pull_timeout_s: float) -> str:
    """The image id of ``image``; pulls it when it is not present locally."""
    name = docker_image_name(image)
    res = docker([client, "image", "inspect", "--format", "{{.Id}}", name])
    if res.returncode != 0:
        pulled = docker([client, "pull", name], timeout=pull_timeout_s)
        if pulled.returncode != 0:
            detail = (pulled.stderr.strip() or pulled.stdout.strip())[-1000:]
            raise ContainerError(
                f"docker image {name} is not present and cannot be pulled: {detail}"
            )
        res = docker([client, "image", "inspect", "--format", "{{.Id}}", name])
        if res.returncode != 0:
            raise ContainerError(f"docker image {name} not found after pull")
    return str(res.stdout).strip()


def gpu_args(env: Mapping[str, str], force: bool | None = None) -> list[str]:
    """``--gpus all``, or ``--gpus "device=0,1"`` for the devices Slurm/CUDA assigned."""
    if not job_gpus(env, force):
        return []
    cvd = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cvd and cvd not in ("-1", "NoDevFiles", "none", "all"):
        return ["--gpus", f'"device={cvd}"']  # quotes: Docker reads the value as CSV
    return ["--gpus", "all"]


def build_docker_argv(
    client: str,
    image: str,
    command: Sequence[str],
    *,
    name: str,
    workdir: Path,
    binds: Sequence[Bind] = (),
    env: Mapping[str, str] | None = None,
    gpus: Sequence[str] = (),
    user: str = "",
    network: str = "host",
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """``[docker, run, --rm, --init, --name N, gpus, --user?, --network?, -v.., -w W, -e..,
    *extra, image, *command]``.

    Returns ``(argv, hidden)``: secret variables appear in argv by name only (``-e NAME``) and
    their values are in ``hidden``, which the caller adds to the docker client's environment.
    """
    if not command:
        raise ContainerError("nothing to run in the container")
    argv = [client, "run", "--rm", "--init", "--name", name, *gpus]
    if user:
        argv += ["--user", user]
    if network and not any(a.startswith(("--network", "--net")) for a in extra_args):
        argv += ["--network", network]
    for _, spec in unique_binds(binds):
        argv += ["-v", spec]
    argv += ["-w", str(workdir)]
    hidden: dict[str, str] = {}
    for key in sorted(env or {}):
        value = (env or {})[key]
        if not ENV_NAME.match(key):
            raise ContainerError(f"invalid environment variable name {key!r}")
        if is_secret_name(key) or "\n" in value:
            argv += ["-e", key]
            hidden[key] = value
        else:
            argv += ["-e", f"{key}={value}"]
    argv += [*extra_args, docker_image_name(image), *command]
    return argv, hidden


@dataclass
class DockerSession:
    """One task's Docker container setup (a :class:`~hpcagent.container.base.Session`)."""

    docker: str
    image: str
    request: ContainerRequest
    settings: ContainerSettings
    task_id: str
    binds: list[Bind] = field(default_factory=list)
    host_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    gpus: bool | None = None
    network: str = "host"
    _count: int = 0

    def add_bind(self, path: Path | str, *, read_only: bool = False) -> None:
        self.binds.append(Bind(Path(path), "", read_only))

    def _user(self) -> str:
        # As root the task runs as root in the container (files in the workspace stay the
        # host user's); otherwise as the host user, so the workspace and caches stay writable.
        uid = os.getuid()
        return "" if uid == 0 else f"{uid}:{os.getgid()}"

    def wrap(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        task_env: Mapping[str, str] | None = None,
        main: bool = True,
    ) -> PreparedCommand:
        """``command`` in a fresh ``--rm`` container. ``main`` names it ``hpcagent-<task>``
        (the task's run); setup commands get ``hpcagent-<task>-setup-<n>``.

        Removes a leftover container of the same name first (a crashed earlier run).
        """
        self._count += 1
        name = container_name(self.task_id, "" if main else f"setup-{self._count}")
        docker([self.docker, "rm", "--force", name])  # absent: harmless non-zero exit
        gpus = gpu_args(self.host_env, self.gpus)
        # Docker renumbers the devices it passes from 0: the host's indices are wrong inside.
        renumbered = ("CUDA_VISIBLE_DEVICES",) if gpus and gpus[1:2] != ["all"] else ()
        binds, inner, _ = task_view(
            self.settings,
            self.host_env,
            self.binds,
            task_env,
            # As root inside, ssh looks in /root/.ssh (its passwd home), as clearml-agent maps it.
            ssh_target="" if self._user() else "/root/.ssh",
            drop=renumbered,
        )
        if self._user():
            inner.setdefault("HOME", str(cwd))  # a writable HOME for pip and friends
        argv, hidden = build_docker_argv(
            self.docker,
            self.image,
            command,
            name=name,
            workdir=cwd,
            binds=binds,
            env=inner,
            gpus=gpus,
            user=self._user(),
            network=self.network,
            extra_args=self.request.arguments,
        )
        run_env = dict(self.host_env)
        run_env.update(hidden)
        return PreparedCommand(
            argv, run_env, cwd, abort_argv=[[self.docker, "kill", name]], container=name
        )

    def python_version(self, cwd: Path, python: str = "python3") -> str:
        return probe_python(self, cwd, python, self.image)

    def cache_key(self) -> str:
        """The image id (``sha256:...``): a re-tagged image gets new venvs."""
        return ensure_docker_image(
            self.docker, self.image, pull_timeout_s=self.settings.pull_timeout_s
        )

    def abort(self, prepared: PreparedCommand) -> None:
        """``docker kill NAME``; a container already gone is fine."""
        for argv in prepared.abort_argv:
            try:
                run_command(argv, timeout=DOCKER_TIMEOUT_S)
            except CommandError:
                continue

    def process_roots(self, prepared: PreparedCommand) -> list[int]:
        """The host pid of the container's init (``--init``: the task is its child), or none
        while the container is not (or no longer) running."""
        if not prepared.container:
            return []
        try:
            res = docker(
                [self.docker, "inspect", "--format", "{{.State.Pid}}", prepared.container],
                timeout=30.0,
            )
        except ContainerError:
            return []
        text = res.stdout.strip()
        return [int(text)] if res.returncode == 0 and text.isdigit() and int(text) > 0 else []
