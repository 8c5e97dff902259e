"""Fixtures for tests against the real one-host Grid Engine cell (tests/gridengine/cell.sh).

``ge_cell`` (session) runs ``cell.sh up`` once (install when missing, configure, start, probe
job); it skips with a visible reason only where that is impossible (not root, or no apt-get and
Grid Engine not installed). ``ge_dir`` is a fresh folder for job scripts and their output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import GRIDENGINE_WORK_ROOT

CELL_SH = Path(__file__).resolve().parent / "cell.sh"


def _why_impossible() -> str | None:
    if os.geteuid() != 0:
        return (
            "the one-host Grid Engine cell needs root (cell.sh installs packages, starts daemons)"
        )
    if shutil.which("qsub") is None and shutil.which("apt-get") is None:
        return "Grid Engine is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="session")
def ge_cell() -> None:
    """Make sure the cell is up (idempotent)."""
    reason = _why_impossible()
    if reason:
        pytest.skip(reason)
    res = subprocess.run(
        ["bash", str(CELL_SH), "up"], capture_output=True, text=True, timeout=900, check=False
    )
    if res.returncode != 0:
        status = subprocess.run(
            ["bash", str(CELL_SH), "status"], capture_output=True, text=True, timeout=60
        )
        pytest.fail(f"cell.sh up failed:\n{res.stdout}\n{res.stderr}\n{status.stdout}")


@pytest.fixture
def ge_dir(ge_cell: None) -> Path:
    path = GRIDENGINE_WORK_ROOT / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    return path
