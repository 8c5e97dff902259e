"""What every container runtime shares: the request, binds, environment rules, the session protocol.

Runtime-neutral: nothing here knows Apptainer or Docker argv. :mod:`hpcagent.container.apptainer`
and :mod:`hpcagent.container.docker` build on it, and the executor talks to either through
:class:`Session`.

Contracts
---------
* Every path is bound at the same path inside the container (``src:src``), so a venv built
  inside at ``/cache/venvs/<key>`` is at the same path for the host-side cache code.
* Secrets never reach argv (:func:`is_secret_name`); each runtime hands them over through the
  environment of its client process.
* Errors are :class:`~hpcagent.errors.ContainerError`; nothing here calls ``sys.exit``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hpcagent.config import ContainerSettings
from hpcagent.errors import CommandError, ContainerError
from hpcagent.process import run_command

#: Host variables forwarded into a clean container (fnmatch patterns).
DEFAULT_PASSTHROUGH = (
    "SLURM_*",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "PMI_*",
    "PMIX_*",
    "OMPI_*",
    "TZ",
    "LANG",
    "LC_ALL",
)
#: PATH inside an image (the host's PATH means nothing there).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SECRET_NAME = re.compile(r"(SECRET|PASS|TOKEN|_KEY$|^KEY$|CREDENTIAL|_AUTH|PRIVATE)", re.I)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- what the task asks for ------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRequest:
    """The image to run in and the extra runtime arguments (already split)."""

    image: str
    arguments: tuple[str, ...] = ()


def split_arguments(arguments: str | Sequence[str] | None) -> tuple[str, ...]:
    """``container.arguments`` is one string on the wire (shlex-split); lists are kept."""
    if not arguments:
        return ()
    if isinstance(arguments, str):
        try:
            return tuple(shlex.split(arguments))
        except ValueError as exc:
            raise ContainerError(f"container arguments cannot be parsed: {exc}") from exc
    return tuple(str(a) for a in arguments)


def task_container(task: Mapping[str, Any]) -> Mapping[str, Any]:
    """The task's ``container`` section ({} when it has none). Anything but an object (a clone
    made with ``new_task_container`` as a string, an old or hand-edited record) is a
    :class:`ContainerError` that names it, so that the task fails with that reason."""
    container = task.get("container")
    if container is None or container == "":
        return {}
    if not isinstance(container, Mapping):
        raise ContainerError(
            f"the task's container field is a {type(container).__name__} "
            f"({str(container)[:80]!r}), not an object with image/arguments; set it with "
            "'hpcagent task edit --container IMAGE'"
        )
    return container


def task_image(task: Mapping[str, Any], cfg: ContainerSettings) -> str:
    """The task's ``container.image``, else ``agent.default_docker.image`` ("" when neither)."""
    container = task_container(task)
    return str(container.get("image") or "").strip() or cfg.default_image.strip()


def request_for_task(
    task: Mapping[str, Any], cfg: ContainerSettings, override_image: str = ""
) -> ContainerRequest | None:
    """The task's ``container.image``/``arguments``, else the configured default image.

    ``override_image`` (``--container IMAGE`` / ``--docker IMAGE``) wins. Returns None when no
    image is set anywhere. The default arguments apply only with the default image.
    """
    container = task_container(task)
    image = str(override_image or container.get("image") or "").strip()
    if image:
        return ContainerRequest(image, split_arguments(container.get("arguments")))
    if cfg.default_image.strip():
        return ContainerRequest(cfg.default_image.strip(), cfg.default_arguments)
    return None


# -- GPUs, binds and environment -------------------------------------------------------------


def job_gpus(env: Mapping[str, str], force: bool | None = None) -> bool:
    """True when the job has GPUs: ``force`` (``--gpus``), else CUDA/Slurm GPU variables."""
    if force is not None:
        return force
    cvd = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cvd and cvd not in ("-1", "NoDevFiles", "none"):
        return True
    for name in ("SLURM_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = env.get(name, "").strip()
        if value and value != "0":
            return True
    return any(env.get(n, "").strip() for n in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK"))


@dataclass(frozen=True)
class Bind:
    """One bind mount; ``dst`` defaults to ``src``."""

    src: Path
    dst: str = ""
    read_only: bool = False

    @classmethod
    def parse(cls, spec: str) -> Bind:
        """``src[:dst[:ro|rw]]`` as in ``apptainer --bind`` (``~`` expanded)."""
        parts = spec.split(":")
        if not parts[0] or len(parts) > 3:
            raise ContainerError(f"bad bind {spec!r}: expected src[:dst[:ro|rw]]")
        opts = parts[2] if len(parts) == 3 else ""
        if len(parts) == 2 and parts[1] in ("ro", "rw"):
            opts, parts = parts[1], parts[:1]
        if opts not in ("", "ro", "rw"):
            raise ContainerError(f"bad bind option in {spec!r}: {opts}")
        dst = parts[1] if len(parts) >= 2 else ""
        return cls(Path(parts[0]).expanduser(), dst, opts == "ro")

    @property
    def target(self) -> str:
        return self.dst or str(self.src)

    def spec(self) -> str:
        """The ``--bind``/``-v`` value; checks what the runtime would misparse or fail on."""
        for text in (str(self.src), self.target):
            if "," in text or ":" in text:
                raise ContainerError(f"bind path {text!r} contains ',' or ':'")
        if not self.src.exists():
            raise ContainerError(f"bind source {self.src} does not exist")
        return f"{self.src}:{self.target}" + (":ro" if self.read_only else "")


def unique_binds(binds: Sequence[Bind]) -> list[tuple[Bind, str]]:
    """``(bind, spec)`` in order, the first bind of each target only (runtimes reject doubles)."""
    seen: set[str] = set()
    out: list[tuple[Bind, str]] = []
    for bind in binds:
        spec = bind.spec()
        if bind.target not in seen:
            seen.add(bind.target)
            out.append((bind, spec))
    return out


def ssh_binds(
    cfg: ContainerSettings, host_env: Mapping[str, str], ssh_target: str = ""
) -> tuple[list[Bind], dict[str, str]]:
    """Binds and inner variables that let git use SSH inside, as clearml-agent does in Docker
    mode: ``agent.container.ssh_dir`` (``~/.ssh``) read-only at ``ssh_target`` (default: the
    same path, where Apptainer's user finds it), and the agent socket (``$SSH_AUTH_SOCK``) with
    ``SSH_AUTH_SOCK`` set inside. Missing ones are left out.
    """
    binds: list[Bind] = []
    env: dict[str, str] = {}
    if cfg.ssh_dir is not None and cfg.ssh_dir.is_dir():
        binds.append(Bind(cfg.ssh_dir, ssh_target, read_only=True))
    sock = host_env.get("SSH_AUTH_SOCK", "").strip()
    if cfg.forward_ssh_agent and sock and os.path.exists(sock):
        binds.append(Bind(Path(sock), ""))
        env["SSH_AUTH_SOCK"] = sock
    return binds, env


def is_secret_name(name: str) -> bool:
    """Names whose values must never appear in argv (``CLEARML_API_SECRET_KEY``, ``*_TOKEN``...)."""
    return bool(_SECRET_NAME.search(name))


def passthrough_env(
    host_env: Mapping[str, str], extra_patterns: Sequence[str] = ()
) -> dict[str, str]:
    """The host variables forwarded into a clean environment (sorted by name)."""
    patterns = (*DEFAULT_PASSTHROUGH, *extra_patterns)
    return {
        k: host_env[k] for k in sorted(host_env) if any(fnmatch.fnmatchcase(k, p) for p in patterns)
    }


def task_view(
    settings: ContainerSettings,
    host_env: Mapping[str, str],
    binds: Sequence[Bind],
    task_env: Mapping[str, str] | None,
    *,
    ssh_target: str = "",
    drop: Sequence[str] = (),
) -> tuple[list[Bind], dict[str, str], dict[str, str]]:
    """What one wrapped command sees, the same order for every runtime: ``(binds, inner,
    ssh_env)``. The binds: the session's ``binds``, ``agent.container.binds``, then
    :func:`ssh_binds` (``~/.ssh`` at ``ssh_target``). ``inner``, the environment inside: the
    host's :func:`passthrough_env` without ``drop``, then the SSH variables, then ``task_env``
    (the task's own win). ``ssh_env``: the SSH variables alone."""
    ssh, ssh_env = ssh_binds(settings, host_env, ssh_target)
    inner = passthrough_env(host_env, settings.env_passthrough)
    for name in drop:
        inner.pop(name, None)
    inner.update(ssh_env)
    inner.update(task_env or {})
    return [*binds, *(Bind.parse(spec) for spec in settings.binds), *ssh], inner, ssh_env


# -- what a session gives the executor -------------------------------------------------------


@dataclass
class PreparedCommand:
    """What the executor runs: ``argv`` in ``cwd`` with ``env``.

    ``abort_argv`` (Docker) must be run when the task is aborted, before or after signalling
    the process group: the container is not in that group. ``container`` names the Docker
    container ("" for Apptainer, whose processes are the caller's children).
    ``display`` is argv safe to log (it is argv itself: no secret is ever in it).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    abort_argv: list[list[str]] = field(default_factory=list)
    container: str = ""

    @property
    def display(self) -> str:
        return shlex.join(self.argv)


class Session(Protocol):
    """One task's container, ready to wrap commands (Apptainer or Docker/Podman).

    The executor builds one per task and wraps every command that must run with the image's
    Python (``python -m venv``, ``pip install``, the task itself) with :meth:`wrap`.
    """

    def add_bind(self, path: Path | str, *, read_only: bool = False) -> None:
        """Bind ``path`` at the same path inside (workspace, venv cache, data)."""

    def wrap(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        task_env: Mapping[str, str] | None = None,
        main: bool = True,
    ) -> PreparedCommand:
        """``command`` as it runs inside the image; ``main`` False for setup commands."""

    def python_version(self, cwd: Path, python: str = "python3") -> str:
        """``platform.python_version()`` of the image's interpreter (part of the venv key)."""

    def cache_key(self) -> str:
        """The image's identity for the venv cache key."""

    def abort(self, prepared: PreparedCommand) -> None:
        """Stop what the process group signal does not reach (Docker: ``docker kill``)."""

    def process_roots(self, prepared: PreparedCommand) -> list[int]:
        """Host pids whose process trees are the task (for metrics) beyond the child itself."""


def probe_python(session: Session, cwd: Path, python: str, label: str) -> str:
    """``platform.python_version()`` of ``python`` inside ``session``'s image, run as a setup
    command. Raises ContainerError when it cannot run."""
    prep = session.wrap(
        [python, "-c", "import platform; print(platform.python_version())"], cwd=cwd, main=False
    )
    try:
        res = run_command(prep.argv, timeout=300.0, env=prep.env, cwd=cwd)
    except CommandError as exc:
        raise ContainerError(f"cannot run {python} in {label}: {exc}") from exc
    if res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip())[-1000:]
        raise ContainerError(f"{python} in {label} failed: {detail}")
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
