"""Apptainer/Singularity: resolve the runtime, build the ``exec`` argv, the session.

The executor runs on the host and only the task's own processes run inside the image
("host drives the container", see docs/containers.md). This module is pure argv/env
building plus the runtime's ``--version`` probe; it starts nothing long-running. The
executor's process runner runs what :meth:`ApptainerSession.wrap` returns.

Contracts
---------
* Secrets never reach argv: a variable whose name looks secret (:func:`is_secret_name`) or
  whose value cannot be passed safely with ``--env`` is handed over as
  ``APPTAINERENV_<NAME>`` (``SINGULARITYENV_`` for Singularity) in the environment of the
  runtime process, which Apptainer forwards even under ``--cleanenv``.
* Under ``--cleanenv`` (the default) the job's ``SLURM_*``, GPU and distributed-training
  variables are forwarded explicitly; nothing else of the host environment leaks in.
* Errors are :class:`~hpcagent.errors.ContainerError`; nothing here calls ``sys.exit``.
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
from hpcagent.container.images import image_identity
from hpcagent.errors import CommandError, ContainerError
from hpcagent.process import run_command

_VERSION = re.compile(r"^(apptainer|singularity-ce|singularity)\s+version\s+(\S+)", re.I)
VERSION_TIMEOUT_S = 30.0


# -- the runtime -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """A resolved Apptainer/Singularity binary."""

    path: str
    flavor: str  # "apptainer" | "singularity"
    version: str

    @property
    def env_prefix(self) -> str:
        """Prefix under which the runtime forwards variables into the container."""
        return "APPTAINERENV_" if self.flavor == "apptainer" else "SINGULARITYENV_"

    @property
    def has_env_flag(self) -> bool:
        """``--env`` exists in every Apptainer and in Singularity from 3.6 on; before that all
        variables go through the prefixed environment."""
        if self.flavor == "apptainer":
            return True
        m = re.match(r"(\d+)\.(\d+)", self.version)
        return m is None or (int(m.group(1)), int(m.group(2))) >= (3, 6)

    def describe(self) -> str:
        return f"{self.flavor} {self.version} ({self.path})"


def parse_version(output: str) -> tuple[str, str] | None:
    """``apptainer version 1.3.4`` → ("apptainer", "1.3.4"); SingularityCE → "singularity"."""
    for line in output.splitlines():
        m = _VERSION.match(line.strip())
        if m:
            name = m.group(1).lower()
            return ("apptainer" if name == "apptainer" else "singularity"), m.group(2)
        # Old Singularity 2.x/3.x printed only the number.
        if re.match(r"^\d+\.\d+[\w.\-+]*$", line.strip()):
            return "singularity", line.strip()
    return None


def resolve_runtime(binary: str = "", env: Mapping[str, str] | None = None) -> Runtime:
    """The configured binary, else ``apptainer``, else ``singularity`` on PATH; version checked.

    Raises ContainerError when none is found or ``--version`` does not look like one.
    """
    path_var = (env if env is not None else os.environ).get("PATH")
    candidates = [binary] if binary else ["apptainer", "singularity"]
    for cand in candidates:
        found = shutil.which(cand, path=path_var)
        if not found:
            continue
        try:
            res = run_command([found, "--version"], timeout=VERSION_TIMEOUT_S)
        except CommandError as exc:
            raise ContainerError(f"{found} --version failed: {exc}") from exc
        parsed = parse_version(res.stdout + "\n" + res.stderr)
        if res.returncode != 0 or parsed is None:
            raise ContainerError(
                f"{found} --version gave exit {res.returncode} and {res.stdout.strip()!r}: "
                "not an Apptainer/Singularity binary"
            )
        return Runtime(found, parsed[0], parsed[1])
    wanted = binary or "apptainer or singularity"
    raise ContainerError(f"container runtime not found: {wanted} (set agent.container.binary)")


# -- environment and argv ---------------------------------------------------------------------


def split_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain, hidden)``: plain go to ``--env K=V``; hidden go through the environment.

    Hidden are secret-looking names and values ``--env`` cannot carry intact (it splits a
    value with ``=`` and ``,`` as CSV, and a newline would break the argv log).
    """
    plain: dict[str, str] = {}
    hidden: dict[str, str] = {}
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise ContainerError(f"invalid environment variable name {key!r}")
        unsafe = "=" in value or "\n" in value or value[:1] == '"' or value[-1:] == '"'
        (hidden if is_secret_name(key) or unsafe else plain)[key] = value
    return plain, hidden


def build_exec_argv(
    runtime: Runtime,
    image: str,
    command: Sequence[str],
    *,
    workdir: Path,
    binds: Sequence[Bind] = (),
    env: Mapping[str, str] | None = None,
    gpus: bool = False,
    cleanenv: bool = True,
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """``[bin, exec, --nv?, --cleanenv?, --bind .., --pwd W, --env K=V.., *extra, image, *cmd]``.

    Returns ``(argv, hidden)``: ``hidden`` maps ``<PREFIX><NAME>`` to values that the caller
    must put into the runtime process's own environment (never into argv).
    """
    if not command:
        raise ContainerError("nothing to run in the container")
    plain, secret = split_env(env or {})
    if not runtime.has_env_flag:
        plain, secret = {}, {**plain, **secret}
    argv = [runtime.path, "exec"]
    if gpus:
        argv.append("--nv")
    if cleanenv:
        argv.append("--cleanenv")
    for _, spec in unique_binds(binds):
        argv += ["--bind", spec]
    argv += ["--pwd", str(workdir)]
    for key in sorted(plain):
        argv += ["--env", f"{key}={plain[key]}"]
    argv += [*extra_args, image, *command]
    hidden = {runtime.env_prefix + k: v for k, v in sorted(secret.items())}
    return argv, hidden


@dataclass
class ApptainerSession:
    """One task's Apptainer container (a :class:`~hpcagent.container.base.Session`)."""

    runtime: Runtime
    image_path: str
    request: ContainerRequest
    settings: ContainerSettings
    binds: list[Bind] = field(default_factory=list)
    host_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    gpus: bool | None = None

    def add_bind(self, path: Path | str, *, read_only: bool = False) -> None:
        """Bind ``path`` at the same path inside (workspace, venv cache, data)."""
        self.binds.append(Bind(Path(path), "", read_only))

    def wrap(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        task_env: Mapping[str, str] | None = None,
        main: bool = True,
    ) -> PreparedCommand:
        """``command`` as it runs inside the image, with ``task_env`` inside (``main`` makes no
        difference here: every command is a child of the caller).

        The runtime process gets the host environment plus the hidden prefixed variables, so
        PATH, APPTAINER_* settings and the like keep working for the runtime itself.
        """
        binds, inner, ssh_env = task_view(self.settings, self.host_env, self.binds, task_env)
        argv, hidden = build_exec_argv(
            self.runtime,
            self.image_path,
            command,
            workdir=cwd,
            binds=binds,
            env=inner if self.settings.cleanenv else {**ssh_env, **(task_env or {})},
            gpus=job_gpus(self.host_env, self.gpus),
            cleanenv=self.settings.cleanenv,
            extra_args=self.request.arguments,
        )
        run_env = {
            k: v
            for k, v in self.host_env.items()
            if not k.startswith(("APPTAINERENV_", "SINGULARITYENV_"))
        }
        run_env.update(hidden)
        return PreparedCommand(argv, run_env, cwd)

    def python_version(self, cwd: Path, python: str = "python3") -> str:
        """``platform.python_version()`` of the image's interpreter (part of the venv key)."""
        return probe_python(self, cwd, python, self.image_path)

    def cache_key(self) -> str:
        """The image's identity for the venv cache key (see :func:`image_identity`)."""
        return image_identity(self.image_path)

    def abort(self, prepared: PreparedCommand) -> None:
        """Nothing beyond the process group: Apptainer's processes are the caller's children."""

    def process_roots(self, prepared: PreparedCommand) -> list[int]:
        """None beyond the child: the runtime and the task are in its process tree."""
        return []
