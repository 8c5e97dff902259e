"""The single subprocess seam of hpcagent.

Every external command (sbatch, squeue, sacct, scontrol, scancel, git, ...) goes through
:func:`run_command`: argv lists only (never a shell), a mandatory timeout, the argv logged at
debug level, and a typed :class:`CommandResult`. Tests replace this function (or pass a fake
``runner`` to the schedulers) to feed captured outputs.

:func:`spawn_background` is the one place where a long-lived child (a local job) is started.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from hpcagent.errors import SchedulerError, TransientSchedulerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one finished command. ``returncode`` < 0 means killed by that signal."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandRunner(Protocol):
    """The signature of :func:`run_command` (for fakes and wrappers)."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        input: str | None = None,
    ) -> CommandResult: ...


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> CommandResult:
    """Run ``argv`` to completion and capture its output as text.

    Raises :class:`TransientSchedulerError` when the command outlives ``timeout`` (it is killed)
    and :class:`SchedulerError` when the program cannot be started at all. A non-zero exit status
    is *not* an error here: callers classify it.
    """
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("run_command needs a non-empty argv")
    log.debug("run %s (timeout %.0fs)", args, timeout)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=input,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise TransientSchedulerError(
            f"{args[0]} timed out after {timeout:.0f}s", stderr=_text(exc.stderr)
        ) from exc
    except OSError as exc:
        raise SchedulerError(f"cannot run {args[0]}: {exc}") from exc
    duration = time.monotonic() - start
    log.debug("%s -> rc=%d in %.3fs", args[0], proc.returncode, duration)
    return CommandResult(tuple(args), proc.returncode, proc.stdout, proc.stderr, duration)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def spawn_background(
    argv: Sequence[str],
    *,
    output: IO[bytes] | int,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child in its own session (so a whole process group can be signalled),
    stdout and stderr both to ``output``, stdin from /dev/null."""
    args = [str(a) for a in argv]
    log.debug("spawn %s", args)
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise SchedulerError(f"cannot start {args[0]}: {exc}") from exc


def counting(runner: CommandRunner) -> tuple[CommandRunner, list[tuple[str, ...]]]:
    """Wrap ``runner`` so every call's argv is appended to the returned list (tests, benchmarks)."""
    calls: list[tuple[str, ...]] = []

    def wrapper(argv: Sequence[str], **kwargs: Any) -> CommandResult:
        calls.append(tuple(argv))
        return runner(argv, **kwargs)

    return wrapper, calls


def clean_slurm_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without the variables that leak from a surrounding job into
    a child job (SLURM_* except SLURM_CONF, XDG_*, DBUS_*)."""
    src = os.environ if environ is None else environ
    return {
        k: v
        for k, v in src.items()
        if not (
            (k.startswith("SLURM_") and k != "SLURM_CONF")
            or k.startswith("XDG_")
            or k.startswith("DBUS_")
        )
    }


__all__ = [
    "CommandResult",
    "CommandRunner",
    "clean_slurm_env",
    "counting",
    "run_command",
    "spawn_background",
]
