"""Fixtures for tests against the real one-host Slurm (tests/slurm/cluster.sh).

``slurm_cluster`` (session) runs ``cluster.sh up`` once; it skips with a visible reason only where
that is impossible (not root, no apt-get and Slurm not installed). When a test fails, the tails of
the cluster's logs are added to its report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import SLURM_WORK_ROOT

CLUSTER_SH = Path(__file__).resolve().parent / "cluster.sh"
LOG_DIR = Path(os.environ.get("HPCAGENT_SLURM_DIR", "/var/tmp/hpcagent-slurm")) / "logs"


def cluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=900, check=check
    )


def _why_impossible() -> str | None:
    if os.geteuid() != 0:
        return "the one-host Slurm needs root (cluster.sh installs packages and starts daemons)"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "Slurm is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """Make sure the cluster is up with the accounting profile; yields the log folder."""
    reason = _why_impossible()
    if reason:
        pytest.skip(reason)
    res = cluster("up", "--profile", "acct", check=False)
    if res.returncode != 0:
        pytest.fail(f"cluster.sh up failed:\n{res.stdout}\n{res.stderr}\n{log_tails()}")
    return LOG_DIR


@pytest.fixture
def job_dir() -> Path:
    """A fresh folder for job scripts and outputs, readable by Slurm."""
    path = SLURM_WORK_ROOT / uuid.uuid4().hex[:12]
    path.mkdir(parents=True, mode=0o777)
    path.chmod(0o777)
    return path


def write_script(folder: Path, name: str, body: str, directives: tuple[str, ...] = ()) -> Path:
    """A batch script with ``#SBATCH`` lines; output goes next to it as ``<name>-<jobid>.out``."""
    lines = ["#!/bin/bash", f"#SBATCH --output={folder}/{name}-%j.out"]
    lines += [f"#SBATCH {d}" for d in directives]
    script = folder / f"{name}.sh"
    script.write_text("\n".join([*lines, body, ""]))
    return script


@pytest.fixture
def make_script(job_dir: Path) -> Callable[..., Path]:
    """``make_script(name, body, directives=())`` -> a script in ``job_dir``."""

    def make(name: str, body: str, directives: tuple[str, ...] = ()) -> Path:
        return write_script(job_dir, name, body, directives)

    return make


@pytest.fixture(scope="session")
def cluster_cmd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cluster_cmd("up", "--profile", "noacct", check=False)`` runs cluster.sh."""
    return cluster


@pytest.fixture(scope="session")
def slurm_log_tails() -> Callable[[], str]:
    return log_tails


def log_tails(lines: int = 30) -> str:
    out = []
    for f in sorted(LOG_DIR.glob("*.log")):
        try:
            tail = f.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"(cannot read: {exc})"]
        out.append(f"==> {f} <==\n" + "\n".join(tail))
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "slurm_cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("Slurm logs (tails)", log_tails()))


@pytest.fixture(autouse=True)
def _strict_fields(no_field_refused: None) -> None:
    """Every flow on Slurm fails when the embedded server refused a field it sent
    (tests/conftest.py::no_field_refused)."""
