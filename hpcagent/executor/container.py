"""Apptainer/Singularity: resolve the runtime, pick the image, build the ``exec`` argv.

The executor runs on the host and only the task's own processes run inside the image
("host drives the container", see docs/containers.md). This module is pure argv/env
building plus the runtime's ``--version`` probe; it starts nothing long-running. The
executor's :mod:`hpcagent.executor.process` runs what :meth:`ContainerSession.wrap` returns.

Contracts
---------
* Every path is bound at the same path inside the container (``src:src``), so a venv built
  inside at ``/cache/venvs/<key>`` is at the same path for the host-side cache code.
* Secrets never reach argv: a variable whose name looks secret (:func:`is_secret_name`) or
  whose value cannot be passed safely with ``--env`` is handed over as
  ``APPTAINERENV_<NAME>`` (``SINGULARITYENV_`` for Singularity) in the environment of the
  runtime process, which Apptainer forwards even under ``--cleanenv``.
* Under ``--cleanenv`` (the default) the job's ``SLURM_*``, GPU and distributed-training
  variables are forwarded explicitly; nothing else of the host environment leaks in.
* Errors are :class:`~hpcagent.errors.ContainerError`; nothing here calls ``sys.exit``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcagent.errors import CommandError, ContainerError
from hpcagent.process import run_command

if TYPE_CHECKING:
    from hpcagent.config import Settings

#: Sources that must be pulled to a SIF before they can run.
PULL_SCHEMES = ("docker://", "oras://", "shub://", "library://", "docker-archive://")
#: Host variables forwarded into a ``--cleanenv`` container (fnmatch patterns).
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
_SECRET_NAME = re.compile(r"(SECRET|PASS|TOKEN|_KEY$|^KEY$|CREDENTIAL|_AUTH|PRIVATE)", re.I)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VERSION = re.compile(r"^(apptainer|singularity-ce|singularity)\s+version\s+(\S+)", re.I)
VERSION_TIMEOUT_S = 30.0


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerSettings:
    """The ``agent.container`` section (see hpcagent/config/defaults.conf and docs)."""

    binary: str = ""
    cache_dir: Path = field(default_factory=lambda: Path("~/.hpcagent/containers").expanduser())
    binds: tuple[str, ...] = ()
    pull_on_submit: bool = False
    pull_timeout_s: float = 1800.0
    lock_timeout_s: float = 3600.0
    mode: str = "host"
    cleanenv: bool = True
    env_passthrough: tuple[str, ...] = ()
    docker_binary: str = "docker"
    default_image: str = ""
    default_arguments: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ContainerSettings:
        """Read ``agent.container.*`` and ``agent.default_docker.*`` (missing keys: defaults)."""

        def get(path: str, default: Any) -> Any:
            value = settings.get(path, default)
            return default if value is None else value

        cache = str(get("agent.container.cache_dir", "") or "~/.hpcagent/containers")
        mode = str(get("agent.container.mode", "host") or "host")
        if mode not in ("host", "inside"):
            raise ContainerError(f"agent.container.mode must be host or inside, not {mode!r}")
        return cls(
            binary=str(get("agent.container.binary", "")),
            cache_dir=Path(cache).expanduser(),
            binds=tuple(_as_list(get("agent.container.binds", []))),
            pull_on_submit=_as_bool(get("agent.container.pull_on_submit", False)),
            pull_timeout_s=float(get("agent.container.pull_timeout_sec", 1800)),
            lock_timeout_s=float(get("agent.container.lock_timeout_sec", 3600)),
            mode=mode,
            cleanenv=_as_bool(get("agent.container.cleanenv", True)),
            env_passthrough=tuple(_as_list(get("agent.container.env_passthrough", []))),
            docker_binary=str(get("agent.container.docker_binary", "docker") or "docker"),
            default_image=settings.agent.default_docker_image,
            default_arguments=tuple(settings.agent.default_docker_arguments),
        )


def _as_list(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


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


def request_for_task(
    task: Mapping[str, Any], cfg: ContainerSettings, override_image: str = ""
) -> ContainerRequest | None:
    """The task's ``container.image``/``arguments``, else the configured default image.

    ``override_image`` (``--container IMAGE`` / ``--docker IMAGE``) wins. Returns None when no
    image is set anywhere. The default arguments apply only with the default image.
    """
    container = task.get("container") or {}
    image = str(override_image or container.get("image") or "").strip()
    if image:
        return ContainerRequest(image, split_arguments(container.get("arguments")))
    if cfg.default_image.strip():
        return ContainerRequest(cfg.default_image.strip(), cfg.default_arguments)
    return None


def is_pull_source(image: str) -> bool:
    """True for registry sources that are pulled to a SIF (``docker://``, ``oras://``, ...)."""
    return image.startswith(PULL_SCHEMES)


def normalise_image(image: str) -> str:
    """A local path is kept (made absolute); a bare Docker name gets ``docker://``.

    ClearML's ``agent.default_docker.image`` usually holds a Docker name such as
    ``nvidia/cuda:12.2.0-runtime-ubuntu22.04``; Apptainer needs the scheme.
    """
    image = image.strip()
    if not image:
        raise ContainerError("no container image given")
    if is_pull_source(image):
        return image
    if image.startswith("file://"):
        image = image[len("file://") :]
    path = Path(image).expanduser()
    if path.is_absolute() or image.startswith(".") or path.exists() or image.endswith(".sif"):
        if not path.exists():
            raise ContainerError(f"container image {image} does not exist")
        return str(path.resolve())
    return "docker://" + image


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
        """The ``--bind`` value; checks what Apptainer would misparse or fail on."""
        for text in (str(self.src), self.target):
            if "," in text or ":" in text:
                raise ContainerError(f"bind path {text!r} contains ',' or ':'")
        if not self.src.exists():
            raise ContainerError(f"bind source {self.src} does not exist")
        return f"{self.src}:{self.target}" + (":ro" if self.read_only else "")


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


def split_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain, hidden)``: plain go to ``--env K=V``; hidden go through the environment.

    Hidden are secret-looking names and values ``--env`` cannot carry intact (it splits a
    value with ``=`` and ``,`` as CSV, and a newline would break the argv log).
    """
    plain: dict[str, str] = {}
    hidden: dict[str, str] = {}
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ContainerError(f"invalid environment variable name {key!r}")
        unsafe = "=" in value or "\n" in value or value[:1] == '"' or value[-1:] == '"'
        (hidden if is_secret_name(key) or unsafe else plain)[key] = value
    return plain, hidden


# -- argv ------------------------------------------------------------------------------------


@dataclass
class PreparedCommand:
    """What :mod:`hpcagent.executor.process` runs: ``argv`` in ``cwd`` with ``env``.

    ``abort_argv`` (Docker) must be run with ``run_command`` when the task is aborted, before
    or after signalling the process group: the container is not in that group.
    ``display`` is argv safe to log (it is argv itself: no secret is ever in it).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    abort_argv: list[list[str]] = field(default_factory=list)

    @property
    def display(self) -> str:
        return shlex.join(self.argv)


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
    seen: set[str] = set()
    for bind in binds:
        spec = bind.spec()
        if bind.target not in seen:  # first bind of a target wins; apptainer rejects doubles
            seen.add(bind.target)
            argv += ["--bind", spec]
    argv += ["--pwd", str(workdir)]
    for key in sorted(plain):
        argv += ["--env", f"{key}={plain[key]}"]
    argv += [*extra_args, image, *command]
    hidden = {runtime.env_prefix + k: v for k, v in sorted(secret.items())}
    return argv, hidden


def running_inside_container(env: Mapping[str, str] | None = None) -> bool:
    """True when this process already runs in an Apptainer/Singularity container
    (``mode: inside``): then the task runs directly, without nesting a second container."""
    env = os.environ if env is None else env
    return bool(env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER"))


@dataclass
class ContainerSession:
    """One task's container: runtime, local image, binds and environment, ready to wrap.

    The executor builds one per task and wraps every command that must run with the image's
    Python (``python -m venv``, ``pip install``, the task itself) with :meth:`wrap`.
    """

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

    def all_binds(self) -> list[Bind]:
        return [*self.binds, *(Bind.parse(spec) for spec in self.settings.binds)]

    def wrap(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        task_env: Mapping[str, str] | None = None,
    ) -> PreparedCommand:
        """``command`` as it runs inside the image, with ``task_env`` inside.

        The runtime process gets the host environment plus the hidden prefixed variables, so
        PATH, APPTAINER_* settings and the like keep working for the runtime itself.
        """
        inner = dict(passthrough_env(self.host_env, self.settings.env_passthrough))
        inner.update(task_env or {})
        argv, hidden = build_exec_argv(
            self.runtime,
            self.image_path,
            command,
            workdir=cwd,
            binds=self.all_binds(),
            env=inner if self.settings.cleanenv else dict(task_env or {}),
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

    def python_argv(self, python: str = "python3") -> list[str]:
        """The interpreter inside the image, for the venv builder: build a venv with
        ``wrap([*python_argv(), "-m", "venv", path])``; after that use ``<venv>/bin/python``."""
        return [python]

    def python_version(self, cwd: Path, python: str = "python3") -> str:
        """``platform.python_version()`` of the image's interpreter (part of the venv key)."""
        prep = self.wrap(
            [python, "-c", "import platform; print(platform.python_version())"], cwd=cwd
        )
        try:
            res = run_command(prep.argv, timeout=300.0, env=prep.env, cwd=cwd)
        except CommandError as exc:
            raise ContainerError(f"cannot run {python} in {self.image_path}: {exc}") from exc
        if res.returncode != 0:
            detail = (res.stderr.strip() or res.stdout.strip())[-1000:]
            raise ContainerError(f"{python} in {self.image_path} failed: {detail}")
        return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""

    def cache_key(self) -> str:
        """The image's identity for the venv cache key (see :func:`image_identity`)."""
        return image_identity(self.image_path)


def image_identity(image_path: str) -> str:
    """A stable identity of a local image: path, size and mtime of a SIF (hashing a multi-GB
    file per job would cost minutes); path and mtime of a sandbox folder."""
    path = Path(image_path)
    try:
        st = path.stat()
    except OSError:
        return image_path
    return f"{path}|{st.st_size if path.is_file() else 'dir'}|{int(st.st_mtime)}"
