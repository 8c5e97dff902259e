"""The one place where hpcagent starts processes.

Three shapes, all argv lists (never a shell), all logged at debug level:

* :func:`run_command`: a short command run to completion with a mandatory timeout and its
  output captured as text (sbatch, squeue, qsub, git, pip, docker pull, ...). A non-zero exit is
  *not* an error here: callers classify it (``CommandResult.ok``). Raises :class:`CommandTimeout`
  when the command outlives its timeout (it is killed) and :class:`CommandError` when the program
  cannot be started at all.
* :func:`start_process`: a long-running child in its own session, so that
  :func:`signal_group` reaches its whole process tree (a local job, the task itself, a setup
  script); stdout and stderr both go to ``stdout`` (a file, or :data:`PIPE` to stream them).
* :func:`detach`: a daemon that outlives this process (``--detached``), output appended to a file.
* :func:`replace_with`: this process becomes ``argv`` (``exec``; the container shim), so signals
  sent to it reach the new program.
* :func:`fork_worker`: a copy of this process that runs one function and exits with its status
  (the server's worker processes share the listening socket they inherit).

Tests replace :func:`run_command` (or hand a fake :class:`CommandRunner` to a scheduler) to feed
captured outputs; the real behaviour is tested against tiny real processes
(tests/unit/test_process.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol

from hpcagent.errors import CommandError, CommandTimeout

log = logging.getLogger(__name__)

#: ``stdout=PIPE`` for :func:`start_process`: read the merged output from ``proc.stdout``.
PIPE = subprocess.PIPE
#: A started child (``subprocess.Popen`` over bytes).
Process = subprocess.Popen[bytes]


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


def _argv(argv: Sequence[str]) -> list[str]:
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("a command needs a non-empty argv")
    return args


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> CommandResult:
    """Run ``argv`` to completion and capture its output as text (see the module docstring)."""
    args = _argv(argv)
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
        raise CommandTimeout(
            f"{args[0]} timed out after {timeout:.0f}s", argv=args, stderr=_text(exc.stderr)
        ) from exc
    except OSError as exc:
        raise CommandError(f"cannot run {args[0]}: {exc}", argv=args) from exc
    duration = time.monotonic() - start
    log.debug("%s -> rc=%d in %.3fs", args[0], proc.returncode, duration)
    return CommandResult(tuple(args), proc.returncode, proc.stdout, proc.stderr, duration)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def start_process(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | int,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Process:
    """Start ``argv`` as a child in a new session (its own process group, so
    :func:`signal_group` reaches everything it forks), stdout and stderr both to ``stdout``
    (:data:`PIPE`, a file object or a descriptor), stdin from /dev/null, unbuffered.

    Raises :class:`CommandError` when the program cannot be started.
    """
    args = _argv(argv)
    log.debug("start %s", args)
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            start_new_session=True,
            bufsize=0,
        )
    except OSError as exc:
        raise CommandError(f"cannot start {args[0]}: {exc}", argv=args) from exc


def wait_for(proc: Process, timeout: float | None = None) -> int | None:
    """Wait for ``proc`` to exit; its exit code, or None when ``timeout`` passed first."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to the process group ``pgid`` (a child of :func:`start_process` leads
    its own group, whose id is its pid); a group that is gone, or not ours, is ignored."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in the process group ``pgid``.

    Orphaned members are re-parented to PID 1, which in containers often never reaps them,
    so ``killpg(pgid, 0)`` alone would see their zombies as alive forever: on Linux the
    members are read from ``/proc``. A group that is not ours counts as gone."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return True  # no /proc: the signal check is all there is
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc/<pid>/stat``); None
    when it does not exist or there is no ``/proc``. A pid recorded with its start time is
    never mistaken for another process that got the same pid later."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # field 22 is the 20th after "(comm)"
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def detach(argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` as a daemon in its own session, output appended to ``log_path``; its pid.

    The child keeps running when this process exits (no one waits for it here)."""
    with log_path.open("ab") as out:
        return start_process(argv, stdout=out, env=env).pid


def replace_with(argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """Replace this process with ``argv`` (looked up on ``env``'s PATH when it has no slash).

    Raises :class:`CommandError` when it cannot be executed (this process goes on then)."""
    args = _argv(argv)
    log.debug("exec %s", args)
    try:
        os.execvpe(args[0], args, dict(env))  # noqa: S606 - argv list, no shell
    except OSError as exc:
        raise CommandError(f"cannot run {args[0]}: {exc}", argv=args) from exc


def fork_worker(body: Callable[[], int]) -> int:
    """Fork; the child runs ``body`` and exits with its return value (1 when it raises), never
    returning here. The parent gets the child's pid and reaps it (``os.waitpid``).

    Output buffers are flushed first so nothing is written twice."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = body()
    except BaseException as exc:  # the parent sees the exit status; one line here
        log.error("worker process %d failed: %r", os.getpid(), exc)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def counting(runner: CommandRunner) -> tuple[CommandRunner, list[tuple[str, ...]]]:
    """Wrap ``runner`` so every call's argv is appended to the returned list (tests, benchmarks)."""
    calls: list[tuple[str, ...]] = []

    def wrapper(argv: Sequence[str], **kwargs: Any) -> CommandResult:
        calls.append(tuple(argv))
        return runner(argv, **kwargs)

    return wrapper, calls


__all__ = [
    "PIPE",
    "CommandResult",
    "CommandRunner",
    "Process",
    "counting",
    "detach",
    "replace_with",
    "run_command",
    "signal_group",
    "start_process",
    "wait_for",
]
