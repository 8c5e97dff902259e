"""``hpcagent-slurm --status`` shows the jobs the submitter holds (read from its ledger)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcagent.commands.slurm import _status
from hpcagent.submitter.ledger import Ledger


def _ledger(state: Path) -> None:
    ledger = Ledger(state / "ledger.sqlite")
    try:
        for i, job in enumerate(["101", "102", None]):  # the last one is not submitted yet
            tid = f"{i:032x}"
            ledger.record_pulled(tid, "q" * 32, "gpu")
            if job:
                ledger.mark_submitted(tid, job)
    finally:
        ledger.close()


def test_status_shows_held_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ledger(tmp_path)
    _status(tmp_path, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is False
    assert data["held_jobs"] == 2
    assert data["queues"] == {"gpu": 3}
    assert sorted(j["job"] for j in data["jobs"] if j["job"]) == ["101", "102"]
    _status(tmp_path, as_json=False)
    text = capsys.readouterr().out
    assert "slurm jobs held: 2" in text
    assert f"{1:032x}" in text
