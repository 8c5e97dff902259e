"""The scheduler backends' unit tests fake the one subprocess seam (``hpcagent.process``'s
``CommandRunner``) with :class:`FakeCommands`; the same behaviours run against the real Slurm
and Grid Engine in ``tests/slurm`` and ``tests/gridengine``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hpcagent.process import CommandResult

#: Answers a whole argv.
Handler = Callable[[list[str]], CommandResult]
#: One answer: a result, an exception to raise, or a handler of the argv.
Answer = CommandResult | Exception | Handler


def res(stdout: str = "", stderr: str = "", rc: int = 0) -> CommandResult:
    """A command's result as the seam returns it."""
    return CommandResult(("x",), rc, stdout, stderr)


class FakeCommands:
    """``FakeCommands(sbatch=[res("42")], squeue=handler)``: answers each program (argv[0])
    from its queue of answers, in order, or from one handler for every call; a program without
    answers is an AssertionError. Records every argv (``calls``) and stdin (``stdin``)."""

    def __init__(self, **answers: list[Answer] | Handler) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []
        self.stdin: list[str | None] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        input: str | None = None,
    ) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        self.stdin.append(input)
        answer = self.answers.get(argv[0])
        if answer is None:
            raise AssertionError(f"unexpected command {argv}")
        item = answer if callable(answer) else answer.pop(0)
        if isinstance(item, Exception):
            raise item
        if callable(item):
            return item(argv)
        return item

    def count(self, program: str) -> int:
        """How many times ``program`` ran."""
        return sum(1 for c in self.calls if c[0] == program)
