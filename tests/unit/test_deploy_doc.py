"""docs/deploy.md's systemd unit files are real: ``systemd-analyze verify`` accepts them (with
the venv path pointed at this interpreter's), and each ``ExecStart`` parses with the very
options it gives (hpcagent's own click commands, nothing run)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hpcagent.cli import main_group
from hpcagent.commands.slurm import slurm_cmd

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
BENCHMARKS = DOC.parents[1] / "benchmarks"
VENV_BIN = "/opt/hpcagent/venv/bin/"


def units() -> dict[str, str]:
    blocks = re.findall(
        r"`/etc/systemd/system/([\w@.-]+)`:\n\n```ini\n(.*?)```", DOC.read_text(), re.S
    )
    return dict(blocks)


def test_the_page_has_both_units() -> None:
    assert set(units()) == {"hpcagent-server.service", "hpcagent-slurm.service"}


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of systemd (installed by the Debian base image)"
    paths = []
    for name, text in units().items():
        path = tmp_path / name
        path.write_text(text.replace(VENV_BIN, str(Path(sys.executable).parent) + "/"))
        paths.append(str(path))
    res = subprocess.run(
        [analyze, "verify", *paths], capture_output=True, text=True, timeout=120, check=False
    )
    ours = [line for line in res.stderr.splitlines() if ".service" in line]
    assert res.returncode == 0, res.stderr
    assert not ours, res.stderr


@pytest.mark.parametrize("name", ["hpcagent-server.service", "hpcagent-slurm.service"])
def test_exec_start_parses(name: str) -> None:
    line = next(x for x in units()[name].splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    program, args = Path(argv[0]).name, argv[1:]
    if program == "hpcagent":
        ctx = main_group.make_context("hpcagent", list(args))
        sub = main_group.get_command(ctx, args[0])
        assert sub is not None
        params = sub.make_context(args[0], list(args[1:]), parent=ctx).params
        assert (params["host"], params["port"]) == ("0.0.0.0", 8008)
    else:
        assert program == "hpcagent-slurm"
        params = slurm_cmd.make_context(program, list(args)).params
        assert params["queues"] == ("gpu", "cpu")
        assert len(params["templates"]) == 2


def _submit_bench() -> ModuleType:
    """benchmarks/submit_bench.py as a module (the benchmarks import each other by name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("submit_bench", BENCHMARKS / "submit_bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["submit_bench"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_server_unit_puts_it_ahead_of_batch_work_as_benchmarked() -> None:
    """The server's unit raises its CPU priority (``Nice=`` below 0: ahead of jobs that share
    the host; its ``ExecStartPost=`` gives its session's autogroup the same value), and that
    very value is what benchmarks/submit_bench.py applies for the figures docs/performance.md
    gives "with the documented setting" (it refuses a unit whose two values differ)."""
    unit = units()["hpcagent-server.service"].splitlines()
    nice = [int(line.removeprefix("Nice=")) for line in unit if line.startswith("Nice=")]
    assert len(nice) == 1
    assert nice[0] < 0
    assert _submit_bench().documented_nice() == nice[0]
