"""The scheduler registry: backends are the entry points pyproject.toml declares; ``auto``
picks the available one with the highest priority; an unknown name is a usage error."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from hpcagent.errors import UsageError
from hpcagent.scheduler import registry
from hpcagent.scheduler.base import JobIdentity, Scheduler
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


def test_entry_points_come_from_a_cache_until_a_distribution_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"HOME": str(tmp_path / "home")}
    first = registry.entry_point_pairs(env)
    assert dict(first) == {
        name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in registry.backends().items()
    }
    (entry,) = (tmp_path / "home" / ".cache" / "hpcagent" / "entry-points").iterdir()
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    doc = json.loads(entry.read_text())
    doc["pairs"].append(["marker", "from.the:cache"])  # a hit returns what the cache holds
    entry.write_text(json.dumps(doc))
    assert ("marker", "from.the:cache") in registry.entry_point_pairs(env)

    # A distribution installed on sys.path declares another backend: the cache is stale.
    site = tmp_path / "site"
    dist = site / "pbs_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pbs-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{registry.GROUP}]\npbs = pbs_backend:Pbs\n")
    monkeypatch.syspath_prepend(str(site))
    pairs = registry.entry_point_pairs(env)
    assert ("pbs", "pbs_backend:Pbs") in pairs
    assert ("marker", "from.the:cache") not in pairs
    # ... and its entry points rewritten in place (same folder) are noticed too
    (dist / "entry_points.txt").write_text(f"[{registry.GROUP}]\npbs = pbs_backend:Pbs2\n")
    os.utime(dist / "entry_points.txt", ns=(1, 1))
    assert ("pbs", "pbs_backend:Pbs2") in registry.entry_point_pairs(env)
    # an unwritable cache only costs the metadata read
    assert registry.entry_point_pairs(
        {"XDG_CACHE_HOME": "/proc/none"}
    ) == registry.entry_point_pairs(env)


def test_entry_point_values_load_as_importlib_metadata_loads_them() -> None:
    assert registry.load_entry_point("hpcagent.scheduler.slurm:SlurmScheduler") is SlurmScheduler
    assert registry.load_entry_point(" hpcagent.scheduler.local : LocalScheduler [x]") is (
        LocalScheduler
    )
    assert registry.load_entry_point("hpcagent.scheduler.base:JobIdentity.__init__") is (
        JobIdentity.__init__
    )
    assert registry.load_entry_point("hpcagent.scheduler") is sys.modules["hpcagent.scheduler"]


_IDENTITY = (
    "import json, sys; from hpcagent.scheduler import registry; j = registry.job_identity(); "
    "print(json.dumps([j and j.scheduler, sorted(m for m in sys.modules "
    "if m.startswith('hpcagent.scheduler.'))]))"
)


def _identity_in_fresh_python(home: Path, **job_env: str) -> tuple[str | None, list[str]]:
    env = {"HOME": str(home), "PATH": os.environ["PATH"], **job_env}
    res = subprocess.run(
        [sys.executable, "-c", _IDENTITY], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    name, modules = json.loads(res.stdout)
    return name, [m.rsplit(".", 1)[-1] for m in modules]


def test_job_identity_imports_only_the_backends_whose_variables_are_set(tmp_path: Path) -> None:
    home = tmp_path / "home"
    backends = {"slurm", "gridengine", "local"}
    # cold cache: every backend is imported once to learn its job_env_prefixes
    name, modules = _identity_in_fresh_python(home)
    assert (name, backends <= set(modules)) == (None, True)
    (entry,) = (home / ".cache" / "hpcagent" / "job-env").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    # then: outside any job, no backend is imported at all
    name, modules = _identity_in_fresh_python(home)
    assert (name, backends & set(modules), "registry" in modules) == (None, set(), True)
    # in a job, only the backends whose variables are set are imported and asked
    name, modules = _identity_in_fresh_python(home, SLURM_JOB_ID="5")
    assert (name, "gridengine" in modules, "local" in modules) == ("slurm", False, False)
    name, modules = _identity_in_fresh_python(home, JOB_ID="31", SGE_JOB_SPOOL_DIR="/s")
    assert (name, "slurm" in modules, "local" in modules) == ("gridengine", False, False)
    # the innermost scheduler still answers first (a local job inside a Slurm allocation): the
    # outer one is not even imported
    name, modules = _identity_in_fresh_python(home, SLURM_JOB_ID="5", HPCAGENT_JOB_ID="2")
    assert (name, "local" in modules, "slurm" in modules) == ("local", True, False)
    assert _identity_in_fresh_python(home, JOB_ID="31")[0] is None  # not Grid Engine's alone


_PBS = """
from hpcagent.scheduler.base import JobIdentity
from hpcagent.scheduler.local import LocalScheduler

class Pbs(LocalScheduler):
    name = "pbs"
    job_label = "pbs job"
    auto_priority = -1
    job_env_prefixes = ({var!r},)

    @classmethod
    def job_identity(cls, env):
        job = env.get({var!r}, "")
        return JobIdentity("pbs", job, "", None) if job else None
"""


def test_job_env_index_follows_an_edited_backend_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached prefixes are those of the backend's module as it is now (an editable
    install edited in place), not as it was when the cache was written."""
    site = tmp_path / "site"
    dist = site / "pbs_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pbs-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{registry.GROUP}]\npbs = pbs_backend:Pbs\n")
    module = site / "pbs_backend.py"
    module.write_text(_PBS.format(var="PBS_JOBID"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.syspath_prepend(str(site))

    def fresh() -> None:
        registry.backends.cache_clear()
        registry.job_env_index.cache_clear()
        sys.modules.pop("pbs_backend", None)

    try:
        fresh()
        assert registry.job_identity({"PBS_JOBID": "7"}) == JobIdentity("pbs", "7", "", None)
        module.write_text(_PBS.format(var="PBS_JOB_ID"))
        os.utime(module, ns=(1, 1))
        fresh()
        assert registry.job_env_index()[0] == ("pbs", "pbs_backend:Pbs", ("PBS_JOB_ID",))
        assert registry.job_identity({"PBS_JOB_ID": "8"}) == JobIdentity("pbs", "8", "", None)
    finally:
        monkeypatch.undo()
        fresh()
