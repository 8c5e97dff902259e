"""tests/slurm/cluster.sh: idempotent `up`, `status`, the config lines it promises."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

Cluster = Callable[..., subprocess.CompletedProcess[str]]


def test_up_is_idempotent_and_status_reports(cluster_cmd: Cluster, slurm_cluster: Path) -> None:
    pid_file = slurm_cluster.parent / "run" / "started-slurmctld.pid"
    before = pid_file.read_text()
    again = cluster_cmd("up", check=False)
    assert again.returncode == 0, again.stderr
    assert pid_file.read_text() == before  # nothing restarted
    status = cluster_cmd("status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "profile: acct" in status.stdout
    for daemon in ("munged", "mariadb", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon}: running" in status.stdout
    logs = {p.name for p in slurm_cluster.glob("*.log")}
    assert {"mariadb.log", "munged.log", "slurmctld.log", "slurmd.log", "slurmdbd.log"} <= logs


def test_config_lines() -> None:
    conf = Path("/etc/slurm/slurm.conf").read_text().splitlines()
    for line in (
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "AccountingStorageType=accounting_storage/slurmdbd",
    ):
        assert line in conf
    assert any(ln.startswith("PartitionName=debug ") and "Default=YES" in ln for ln in conf)
    assert not any(ln.startswith("AccountingStorageEnforce") for ln in conf)
    dbd = Path("/etc/slurm/slurmdbd.conf")
    assert "StorageType=accounting_storage/mysql" in dbd.read_text().splitlines()
    assert dbd.stat().st_mode & 0o077 == 0
