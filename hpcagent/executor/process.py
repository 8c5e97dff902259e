"""The task's child process: stream its output into the task log, stop it with its group.

The task itself and the setup scripts are started by :func:`hpcagent.process.start_process`
(the one place that starts processes) in their own process group; this module reads their
output while they run and signals the group. Nothing goes through a shell unless the task's
own setup script is run by ``bash`` as a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from hpcagent import process
from hpcagent.executor.logs import LineSplitter

PIPE_SIZE = 1024 * 1024
LinesSink = Callable[[list[str]], None]


class ChildProcess:
    """A child in a new session (its own process group) whose merged output is read by a thread.

    The complete lines of each chunk read (carriage-return redraws collapsed) go to
    ``on_lines`` in one call (per-line Python work is what limits throughput); the raw bytes
    are echoed to ``echo`` (the job's own stdout) when given. The last ``tail_lines`` lines are
    kept for the failure message.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        on_lines: LinesSink,
        echo: BinaryIO | None = None,
        tail_lines: int = 20,
    ) -> None:
        self.argv = list(argv)
        self._on_lines = on_lines
        self._echo = echo
        self.tail: deque[str] = deque(maxlen=tail_lines)
        # Own process group: signals reach the whole tree.
        self.proc = process.start_process(self.argv, stdout=process.PIPE, cwd=cwd, env=env)
        self.pgid = self.proc.pid
        if self.proc.stdout is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            # A bigger pipe lets the task run ahead while the reader is busy (Linux only).
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._reader = threading.Thread(
            target=self._read, name="hpcagent-child-reader", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        splitter = LineSplitter()
        while True:
            try:
                chunk = os.read(fd, PIPE_SIZE)
            except OSError:
                break
            if not chunk:
                break
            if self._echo is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._echo.write(chunk)
                    self._echo.flush()
            self._lines(splitter.feed(chunk))
        self._lines(splitter.flush())

    def _lines(self, lines: list[str]) -> None:
        if not lines:
            return
        self.tail.extend(lines[-(self.tail.maxlen or 20) :])
        try:
            self._on_lines(lines)
        except Exception as exc:  # a broken sink must not stop reading (the child would block)
            sys.stderr.write(f"hpcagent: log sink failed: {exc}\n")

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit; returns the code, or None on timeout."""
        return process.wait_for(self.proc, timeout)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (ignored when it is gone)."""
        process.signal_group(self.pgid, signum)

    def terminate(self, grace_s: float, signum: int = signal.SIGTERM) -> int:
        """``signum`` to the group, SIGKILL after ``grace_s``; returns the exit code."""
        self.signal_group(signum)
        code = self.wait(grace_s)
        if code is None:
            self.signal_group(signal.SIGKILL)
            code = self.proc.wait()
        self.reap_group()
        return code

    def reap_group(self) -> None:
        """Kill whatever is left in the process group (daemons the task forked) and finish
        reading the output, so nothing outlives the run."""
        self.signal_group(signal.SIGKILL)
        self._reader.join(timeout=5.0)

    def finish(self) -> int:
        """Wait for the exit and drain the output; returns the exit code."""
        code = self.proc.wait()
        self.reap_group()
        return code


def run_streamed(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_lines: LinesSink,
    echo: BinaryIO | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    grace_s: float = 10.0,
) -> tuple[int, list[str]]:
    """Run a short setup command with its output streamed; returns ``(code, last lines)``.

    ``should_stop`` is checked every 0.2 s so an abort during setup ends it promptly.
    """
    child = ChildProcess(argv, cwd=cwd, env=env, on_lines=on_lines, echo=echo)
    while True:
        code = child.wait(0.2)
        if code is not None:
            child.reap_group()
            return code, list(child.tail)
        if should_stop():
            return child.terminate(grace_s), list(child.tail)
