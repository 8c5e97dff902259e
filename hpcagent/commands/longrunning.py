"""What the long-running commands (``hpcagent-slurm``, ``hpcagent daemon``) share: options that
take several values after one flag, the private state folder, running detached with a pid file,
stopping the detached process, and the container mode and work hours from the options.

Each command passes its own :class:`~hpcagent.submitter.instance.InstanceFiles` (the pid, log
and lock file names, shared with the process that holds the state folder), how it names itself
and which processes are its own, so that messages and files stay those of that command.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from hpcagent.errors import UsageError
from hpcagent.submitter.instance import InstanceFiles, pid_alive, read_pid


def expand_greedy(args: list[str], greedy: tuple[str, ...]) -> list[str]:
    """``--queue a b --cpu-only`` → ``--queue a --queue b --cpu-only`` for the flags in
    ``greedy`` (click wants the flag repeated); values stop at the next argument that starts
    with ``-``, and everything from ``--`` on is kept as it is."""
    out: list[str] = []
    current: str | None = None
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if arg in greedy:
            current = arg
            out.append(arg)
        elif arg.startswith("-"):
            current = None
            out.append(arg)
        else:
            if current is not None and out and out[-1] != current:
                out.append(current)
            out.append(arg)
    return out


class GreedyCommand(click.Command):
    """A click command whose flags in :attr:`greedy` take several values (set by subclasses)."""

    greedy: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_greedy(list(args), self.greedy))


def services_mode_option(*decls: str, help: str) -> Callable[..., Any]:
    """An option with an optional count (``--services-mode [N]``): absent None, the flag
    alone 0 (no limit), with a value N."""
    return click.option(
        *decls,
        type=click.IntRange(min=0),
        is_flag=False,
        flag_value=0,
        default=None,
        metavar="[N]",
        help=help,
    )


def container_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--singularity-mode`` and ``--container-mode`` flags and clearml-agent's
    ``--docker [IMAGE]`` (see :func:`container_kind` and :func:`docker_overrides`)."""
    f = click.option(
        "--docker",
        default=None,
        is_flag=False,
        flag_value="",
        metavar="[IMAGE]",
        help="As clearml-agent: run tasks in Docker (--container-mode); IMAGE is the default "
        "image for tasks without one (agent.default_docker.image).",
    )(f)
    f = click.option(
        "--container-mode",
        is_flag=True,
        help="Run tasks inside their container image (Docker/Podman).",
    )(f)
    return click.option(
        "--singularity-mode",
        is_flag=True,
        help="Run tasks inside their Singularity/Apptainer image.",
    )(f)


def container_kind(
    singularity_mode: bool, container_mode: bool, docker: str | None = None
) -> str | None:
    """``"singularity"``, ``"container"`` (``--container-mode`` or ``--docker``) or None (no
    container); Singularity with Docker is a usage error."""
    container_mode = container_mode or docker is not None
    if singularity_mode and container_mode:
        raise UsageError("give --singularity-mode or --container-mode/--docker, not both")
    if singularity_mode:
        return "singularity"
    return "container" if container_mode else None


def docker_overrides(docker: str | None) -> dict[str, Any]:
    """The configuration ``--docker IMAGE`` sets: IMAGE as ``agent.default_docker.image``."""
    return {"agent.default_docker.image": docker} if docker else {}


def work_hours(
    settings: Any, uptime: tuple[str, ...], downtime: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """The ``--uptime`` / ``--downtime`` spans, each from ``agent.uptime`` / ``agent.downtime``
    when not given."""
    return (
        list(uptime) or [str(x) for x in settings.agent.uptime],
        list(downtime) or [str(x) for x in settings.agent.downtime],
    )


def private_dir(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, created (mode 0700 for what is new) if missing."""
    out = Path(os.path.expanduser(str(path)))
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    return out


def running(state_dir: Path, files: InstanceFiles, is_ours: Callable[[int], bool]) -> int | None:
    """The pid of the live process recorded in ``state_dir``'s pid file, when ``is_ours``."""
    pid = read_pid(files.pid_in(state_dir))
    return pid if pid is not None and pid_alive(pid) and is_ours(pid) else None


def stop(
    state_dir: Path,
    files: InstanceFiles,
    is_ours: Callable[[int], bool],
    *,
    name: str,
    none_recorded: str,
    wait_s: float,
) -> None:
    """SIGTERM the process recorded in ``state_dir``'s pid file when it is alive and
    ``is_ours``, and wait up to ``wait_s`` for it to go. ``name`` names it in messages;
    ``none_recorded`` is the usage error when no pid is recorded. A stale pid file is removed
    (usage error)."""
    pid_file = files.pid_in(state_dir)
    pid = read_pid(pid_file)
    if pid is None:
        raise UsageError(none_recorded)
    if not pid_alive(pid) or not is_ours(pid):
        pid_file.unlink(missing_ok=True)
        raise UsageError(f"{name} (pid {pid}) is not running; removed {pid_file}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and pid_alive(pid) and is_ours(pid):
        time.sleep(0.1)
    click.echo(f"stopped {name} (pid {pid})")


#: Set for a detached process: the log file it writes (and rotates) itself.
LOG_FILE_ENV = "HPCAGENT_LOG_FILE"
#: A detached process's log is rotated at this size, keeping this many old files (.1 … .N).
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


def self_argv(script: str, entry: str) -> list[str]:
    """How to start this program again: its console script ``script`` run by this interpreter
    (so that ``ps`` and ``pgrep -f hpcagent-slurm`` show the name), else ``python -c`` calling
    ``hpcagent.cli.<entry>`` with the name in a comment."""
    found = Path(sys.argv[0]) if Path(sys.argv[0]).name == script else None
    if found is None or not found.is_file():
        found = Path(sys.executable).parent / script
    if found.is_file():
        return [sys.executable, str(found)]
    return [sys.executable, "-c", f"from hpcagent.cli import {entry}; {entry}()  # {script}"]


def detach(state_dir: Path, files: InstanceFiles, *, entry: str, name: str, script: str) -> None:
    """Run this command again in the background with ``--foreground`` (in place of
    ``--detached``) as :func:`self_argv` starts it; it writes its log to ``state_dir``'s log
    file (rotated, see :func:`setup_logging`; anything else it prints is appended there too)
    and its pid goes to the pid file (the process writes the same pid again when it takes the
    state folder's lock)."""
    log_path, pid_file = files.log_in(state_dir), files.pid_in(state_dir)
    from hpcagent import process

    argv = [a for a in sys.argv[1:] if a not in ("--detached", "--foreground")]
    env = {**os.environ, LOG_FILE_ENV: str(log_path)}
    pid = process.detach(
        [*self_argv(script, entry), *argv, "--foreground"], log_path=log_path, env=env
    )
    pid_file.write_text(f"{pid}\n")
    click.echo(f"{name} running in the background: pid {pid}, log {log_path}")


class _FollowingRotatingHandler(logging.handlers.RotatingFileHandler):
    """Rotates the log and points stdout/stderr (fds 1, 2) at the new file, so that what is
    printed outside logging (a traceback) lands in the current log too."""

    def doRollover(self) -> None:
        super().doRollover()
        if self.stream is not None:
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)


def setup_logging(debug: bool) -> Path | None:
    """Log at INFO (DEBUG with ``debug``) to stderr, or, in a detached process
    (:data:`LOG_FILE_ENV` set), to that file rotated at :data:`LOG_MAX_BYTES` with
    :data:`LOG_BACKUPS` old files kept; returns that file (None on stderr)."""
    root = logging.getLogger()
    for old in list(root.handlers):  # basicConfig's or ours; a test harness's handlers stay
        if type(old) in (logging.StreamHandler, _FollowingRotatingHandler):
            root.removeHandler(old)
    log_file = os.environ.get(LOG_FILE_ENV, "")
    handler: logging.Handler
    if log_file:
        handler = _FollowingRotatingHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return Path(log_file) if log_file else None


class MachineStats:
    """``machine_stats`` for ``workers.status_report`` (the agent's keys, clearml-api.md §2a.6),
    at most every ``interval_s`` seconds (the first call reports at once)."""

    def __init__(self, gpus: list[str] | None, interval_s: float = 30.0) -> None:
        from hpcagent.executor.metrics import GpuProbe, Sampler

        self.sampler = Sampler()
        visible = None if gpus is None else ",".join(gpus)
        self.gpu = GpuProbe(visible) if gpus != [] else None
        self.interval_s = interval_s
        self._last = -1e18

    def __call__(self) -> Mapping[str, Any]:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return {}
        self._last = now
        stats = self.sampler.sample()
        gpus = self.gpu.sample() if self.gpu is not None else []
        if gpus:
            stats["gpu_usage"] = [g.get("utilization", 0.0) for g in gpus]
            stats["gpu_temperature"] = [g.get("temperature", 0.0) for g in gpus]
            stats["gpu_memory_used"] = [g.get("mem_used_gb", 0.0) * 1024 for g in gpus]
            stats["gpu_memory_free"] = [g.get("mem_free_gb", 0.0) * 1024 for g in gpus]
        return {"machine_stats": stats}
