"""The short form of the fault suite (``make chaos`` runs the full one): every fault of
tests/chaos.py with a few tasks each; nothing lost, nothing duplicated, every task ended."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from chaos import FAULTS, run_suite

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def test_fault_suite_short_form(tmp_path: Path) -> None:
    seed = random.randrange(2**31)
    # slurmctld and slurmdbd (of a private Slurm) down for 20 s here, 120 s in make chaos
    tallies = run_suite(tmp_path, seed, 2, list(FAULTS), slurm_outage_s=20.0)
    assert [t.fault for t in tallies] == list(FAULTS)
    for t in tallies:
        where = f"seed {seed}: {t.row()}"
        assert not any("NOT RUN" in n for n in t.notes), where  # make test runs as root
        assert t.submitted > 0, where
        assert t.lost == 0, where
        assert t.duplicated == 0, where
        # the server corpus: no 5xx, every read answers; slurm-outage: one line each way
        assert t.errors == 0, where
        assert t.completed + t.failed == t.submitted, where
    kills = next(t for t in tallies if t.fault == "executor-kill9")
    assert kills.failed >= 1, kills.row()  # the task whose executor was killed says why
    outage = next(t for t in tallies if t.fault == "slurm-outage")
    assert "slurmctld: 1 'unreachable' / 1 'back' line(s)" in outage.notes, outage.row()
