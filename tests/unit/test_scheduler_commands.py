"""The subprocess seam: run_command and its helpers, with real (tiny) processes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from hpcagent.errors import SchedulerError, TransientSchedulerError
from hpcagent.scheduler.commands import clean_slurm_env, counting, run_command


def test_captures_output_and_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hpcagent.scheduler.commands"):
        res = run_command(
            [sys.executable, "-c", "import sys; print(input()); sys.exit(3)"],
            timeout=30,
            input="hello\n",
            cwd=tmp_path,
        )
    assert (res.returncode, res.stdout, res.ok) == (3, "hello\n", False)
    assert res.argv[0] == sys.executable
    assert sys.executable in caplog.text  # argv logged at debug level


def test_timeout_is_transient() -> None:
    with pytest.raises(TransientSchedulerError, match="timed out"):
        run_command([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_missing_program_is_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="cannot run"):
        run_command(["/nonexistent/sbatch"], timeout=5)


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


def test_clean_slurm_env() -> None:
    env = clean_slurm_env(
        {
            "SLURM_JOB_ID": "1",
            "SLURM_CONF": "/c",
            "XDG_RUNTIME_DIR": "/r",
            "DBUS_X": "y",
            "PATH": "/b",
        }
    )
    assert env == {"SLURM_CONF": "/c", "PATH": "/b"}
