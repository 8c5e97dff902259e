"""hpcagent.process, the one place that starts processes, with real (tiny) processes."""

from __future__ import annotations

import ast
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcagent import process
from hpcagent.errors import (
    CommandError,
    CommandTimeout,
    EnvironmentSetupError,
    HpcAgentError,
    RepositoryError,
    SchedulerError,
)
from hpcagent.process import counting, run_command, start_process

ROOT = Path(__file__).resolve().parents[2]


def test_captures_output_and_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hpcagent.process"):
        res = run_command(
            [sys.executable, "-c", "import sys; print(input()); sys.exit(3)"],
            timeout=30,
            input="hello\n",
            cwd=tmp_path,
        )
    assert (res.returncode, res.stdout, res.ok) == (3, "hello\n", False)
    assert res.argv[0] == sys.executable
    assert sys.executable in caplog.text  # argv logged at debug level


def test_timeout_is_a_command_timeout() -> None:
    with pytest.raises(CommandTimeout, match="timed out") as info:
        run_command([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert info.value.argv[0] == sys.executable


def test_missing_program_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="cannot run") as info:
        run_command(["/nonexistent/sbatch"], timeout=5)
    assert not isinstance(info.value, SchedulerError)  # the scheduler decides what it means
    with pytest.raises(CommandError, match="cannot start"):
        start_process(["/nonexistent/job"], stdout=process.PIPE)


def test_env_is_passed_and_argv_is_never_a_shell() -> None:
    res = run_command(
        [sys.executable, "-c", "import os, sys; print(os.environ['X'], sys.argv[1])", "$(id); ls"],
        timeout=30,
        env={"X": "1"},
    )
    assert res.stdout == "1 $(id); ls\n"


def test_counting_wrapper_records_argv() -> None:
    runner, calls = counting(run_command)
    runner([sys.executable, "-c", "pass"], timeout=30)
    assert calls == [(sys.executable, "-c", "pass")]


def test_start_process_leads_its_own_group_and_signal_group_reaches_the_tree(
    tmp_path: Path,
) -> None:
    """A forked grandchild dies with the group; output (stdout and stderr) goes to the file."""
    out = tmp_path / "out.txt"
    code = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True); print('err', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    with out.open("ab") as fh:
        proc = start_process([sys.executable, "-c", code], stdout=fh, cwd=tmp_path)
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(out.read_text().split()) < 2:
        time.sleep(0.05)
    grandchild = int(out.read_text().split()[0])
    assert "err" in out.read_text()
    assert process.wait_for(proc, 0.1) is None  # still running
    process.signal_group(proc.pid, signal.SIGKILL)
    assert process.wait_for(proc, 20) == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild outlived its group")
    process.signal_group(proc.pid, signal.SIGKILL)  # a gone group is not an error


def test_detach_starts_a_session_leader_that_appends_to_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "daemon.log"
    log_path.write_text("before\n")
    code = "import time; print('daemon up', flush=True); time.sleep(60)"
    pid = process.detach([sys.executable, "-c", code], log_path=log_path)
    try:
        assert os.getsid(pid) == pid  # its own session: no terminal signal of ours reaches it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "daemon up" not in log_path.read_text():
            time.sleep(0.05)
        assert log_path.read_text() == "before\ndaemon up\n"
    finally:
        process.signal_group(pid, signal.SIGKILL)


def test_git_pip_and_scheduler_failures_are_command_errors() -> None:
    for cls in (SchedulerError, RepositoryError, EnvironmentSetupError, CommandTimeout):
        assert issubclass(cls, CommandError)
    err = RepositoryError("git fetch failed", stderr="fatal: x", returncode=128)
    assert (err.exit_code, err.stderr, err.returncode) == (10, "fatal: x", 128)
    assert EnvironmentSetupError("pip").exit_code == 11
    assert SchedulerError("x").exit_code == 6
    assert issubclass(CommandError, HpcAgentError)
    assert CommandError("x").exit_code == 1


def test_nothing_else_starts_processes() -> None:
    """Only hpcagent/process.py imports subprocess or calls os.fork/exec*/spawn*/system/popen."""
    offenders = []
    banned_os = {"fork", "system", "popen", "posix_spawn", "posix_spawnp"}
    for path in sorted((ROOT / "hpcagent").rglob("*.py")):
        if path == ROOT / "hpcagent" / "process.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                if (
                    "subprocess" in names
                    or mod in ("subprocess", "multiprocessing")
                    or any(n == "multiprocessing" for n in names)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and (node.attr in banned_os or node.attr.startswith(("exec", "spawn")))
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
    assert offenders == []


def test_group_alive_ignores_zombies(tmp_path: Path) -> None:
    """A group whose last member is an unreaped zombie has ended (containers' PID 1 often
    never reaps orphans, and the local scheduler must still see the group as gone)."""
    proc = start_process([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL)
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 60
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, 0)  # the signal check alone sees the zombie
    assert not process.group_alive(proc.pid)
    proc.wait()
    assert not process.group_alive(proc.pid)
    live = start_process(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.DEVNULL
    )
    assert process.group_alive(live.pid)
    process.signal_group(live.pid, signal.SIGKILL)
    live.wait()
