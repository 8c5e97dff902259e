"""The scheduler registry: backends are the entry points pyproject.toml declares; ``auto``
picks the available one with the highest priority; an unknown name is a usage error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from hpcagent.errors import UsageError
from hpcagent.scheduler import registry
from hpcagent.scheduler.base import Scheduler
from hpcagent.scheduler.gridengine import GridEngineScheduler
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.scheduler.slurm import SlurmScheduler

ROOT = Path(__file__).resolve().parents[2]


def test_backends_are_the_declared_entry_points() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        registry.GROUP
    ]
    assert registry.names() == ["slurm", "gridengine", "local"]  # highest auto priority first
    assert set(declared) == set(registry.names())
    for name, cls in registry.backends().items():
        assert issubclass(cls, Scheduler)
        assert cls.name == name
        assert declared[name] == f"{cls.__module__}:{cls.__qualname__}"
        assert cls.job_label.endswith(" job")


def _bin(tmp_path: Path, *programs: str) -> str:
    folder = tmp_path / "-".join(programs or ("none",))
    folder.mkdir()
    for p in programs:
        exe = folder / p
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return str(folder)


def test_auto_takes_the_available_backend_with_the_highest_priority(tmp_path: Path) -> None:
    both = _bin(tmp_path, "sbatch", "qsub", "qconf", "bash")
    assert registry.choose("auto", {"PATH": both}) is SlurmScheduler
    ge = _bin(tmp_path, "qsub", "qconf", "bash")
    assert registry.choose("auto", {"PATH": ge}) is GridEngineScheduler
    pbs = _bin(tmp_path, "qsub", "bash")  # PBS has a qsub but no qconf: not Grid Engine
    assert registry.choose("auto", {"PATH": pbs}) is LocalScheduler
    with pytest.raises(UsageError, match="no scheduler is available"):
        registry.choose("auto", {"PATH": _bin(tmp_path)})
    assert registry.choose("gridengine", {"PATH": _bin(tmp_path, "x")}) is GridEngineScheduler


def test_create_builds_each_backend(tmp_path: Path) -> None:
    assert isinstance(registry.get("slurm").create(state_dir=tmp_path), SlurmScheduler)
    assert isinstance(registry.get("gridengine").create(state_dir=tmp_path), GridEngineScheduler)
    local = registry.get("local").create(state_dir=tmp_path)
    assert isinstance(local, LocalScheduler)
    assert local.output_dir == tmp_path / "local-jobs"


def test_unknown_name_is_a_usage_error_listing_the_backends(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown scheduler 'pbs'; registered: slurm, gridengine"):
        registry.get("pbs")
    conf = tmp_path / "clearml.conf"
    conf.write_text("{}")
    template = tmp_path / "t.template"
    template.write_text("#!/bin/bash\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    res = subprocess.run(
        [sys.executable, "-c", "from hpcagent.cli import slurm_main; slurm_main()",
         "--config-file", str(conf), "--state-dir", str(tmp_path / "state"),
         "--scheduler", "pbs", "--template-files", str(template), "--queue", "q"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "unknown scheduler 'pbs'; registered: slurm, gridengine, local" in res.stderr
