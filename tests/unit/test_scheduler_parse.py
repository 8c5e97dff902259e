"""Slurm output parsers against outputs captured from the real one-host cluster
(tests/slurm/fixtures/slurm-<version>/, see tests/slurm/capture_fixtures.py) and hand-made
fixtures (tests/slurm/fixtures/handmade/) for states that cluster cannot produce."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from hpcagent.scheduler.base import JobState
from hpcagent.scheduler.slurm_parse import (
    aggregate,
    cancelled_by,
    expand_array_range,
    is_limit,
    is_transient,
    match_rows,
    parse_exit_pair,
    parse_sacct,
    parse_sbatch_output,
    parse_scontrol,
    parse_squeue,
    parse_wait_status,
    slurm_state,
    split_job_id,
    squeue_argv,
)

FIXTURES = Path(__file__).resolve().parents[1] / "slurm" / "fixtures"
REAL = sorted(p for p in FIXTURES.glob("slurm-*") if p.is_dir())


def load(name: str, folder: Path | None = None) -> dict[str, Any]:
    path = (folder or REAL[-1]) / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_real_fixtures_exist() -> None:
    assert REAL, "no captured Slurm fixtures"
    assert load("squeue_states")["handmade"] is False


@pytest.mark.parametrize(
    ("fixture", "parser"),
    [
        ("squeue_states", parse_squeue),
        ("sacct_states", parse_sacct),
        ("scontrol_states", parse_scontrol),
    ],
)
def test_captured_states(fixture: str, parser: Any) -> None:
    data = load(fixture)
    rows = parser(data["stdout"])
    assert rows
    for job_id, expected in data["expect"].items():
        found = match_rows(job_id, rows)
        assert found, f"{fixture}: job {job_id} not parsed"
        st = aggregate(job_id, found)
        assert st.state is JobState(expected), (fixture, job_id, st)


def test_captured_exit_codes_and_signals() -> None:
    names = load("sacct_states")["names"]
    sacct = parse_sacct(load("sacct_states")["stdout"])
    squeue = parse_squeue(load("squeue_states")["stdout"])
    scontrol = parse_scontrol(load("scontrol_states")["stdout"])
    for rows in (sacct, squeue, scontrol):
        failed = aggregate(names["failed3"], match_rows(names["failed3"], rows))
        assert (failed.exit_code, failed.signal) == (3, 0)
        killed = aggregate(names["killed9"], match_rows(names["killed9"], rows))
        assert killed.state is JobState.FAILED
        assert killed.signal == 9
        ok = aggregate(names["completed"], match_rows(names["completed"], rows))
        assert (ok.exit_code, ok.state.is_success) == (0, True)


def test_cancelled_by_uid_from_sacct() -> None:
    data = load("sacct_states")
    rows = parse_sacct(data["stdout"])
    st = aggregate(
        data["names"]["cancel_running"], match_rows(data["names"]["cancel_running"], rows)
    )
    assert st.state is JobState.CANCELLED
    assert st.cancelled_by == "0"
    assert st.raw_state.startswith("CANCELLED by")


def test_pending_reasons_and_nodes() -> None:
    data = load("squeue_states")
    rows = parse_squeue(data["stdout"])
    held = aggregate(data["names"]["pending_held"], match_rows(data["names"]["pending_held"], rows))
    assert (held.state, held.reason) == (JobState.PENDING, "JobHeldUser")
    begin = aggregate(
        data["names"]["pending_begin"], match_rows(data["names"]["pending_begin"], rows)
    )
    assert begin.reason == "BeginTime"
    running = aggregate(data["names"]["running"], match_rows(data["names"]["running"], rows))
    assert running.nodes
    assert running.exit_code is None  # not terminal: squeue's 0 means nothing yet


def test_captured_array_and_het_rows() -> None:
    data = load("sacct_states")
    rows = parse_sacct(data["stdout"])
    array_id = data["names"]["array"]
    family = match_rows(array_id, rows)
    assert len(family) == 3
    assert {split_job_id(r.display_id)[1] for r in family} == {"1", "2", "3"}
    one = match_rows(f"{array_id}_2", rows)
    assert len(one) == 1
    # A task of a pending range row resolves to that row.
    held = data["names"]["array_held"]
    assert aggregate(f"{held}_3", match_rows(f"{held}_3", rows)).state is JobState.PENDING
    het = match_rows(data["names"]["het"], rows)
    assert len(het) == 2
    assert {split_job_id(r.display_id)[2] for r in het} == {"0", "1"}


def test_overmemorykill_is_failed_signal_9() -> None:
    data = load("sacct_overmemorykill")
    st = aggregate("29", parse_sacct(data["stdout"]))
    assert (st.state, st.signal) == (JobState(data["expect"]["29"]), 9)


@pytest.mark.parametrize(
    ("fixture", "parser"),
    [
        ("squeue_oom_cgroup", parse_squeue),
        ("sacct_oom_cgroup", parse_sacct),
        ("scontrol_oom_cgroup", parse_scontrol),
    ],
)
def test_real_out_of_memory(fixture: str, parser: Any) -> None:
    data = load(fixture)
    for job_id, expected in data["expect"].items():
        st = aggregate(job_id, match_rows(job_id, parser(data["stdout"])))
        assert st.state is JobState(expected)
        assert st.state is JobState.OUT_OF_MEMORY
        assert (st.exit_code, st.signal) == (0, 125)  # 0:125; squeue's wait status 253 agrees


def test_scontrol_noacct_fixture() -> None:
    data = load("scontrol_noacct")
    rows = parse_scontrol(data["stdout"])
    for job_id, expected in data["expect"].items():
        assert aggregate(job_id, match_rows(job_id, rows)).state is JobState(expected)
        assert rows[0].name.startswith("fx_")


def test_handmade_sacct_states(caplog: pytest.LogCaptureFixture) -> None:
    data = load("sacct_other_states", FIXTURES / "handmade")
    assert data["handmade"] is True
    rows = parse_sacct(data["stdout"])
    assert all("." not in r.display_id for r in rows)  # step rows dropped
    with caplog.at_level(logging.WARNING):
        for job_id, expected in data["expect"].items():
            st = aggregate(job_id, match_rows(job_id, rows))
            assert st.state is JobState(expected), (job_id, st)
    assert "SOMETHING_NEW" in caplog.text
    oom = aggregate("504", match_rows("504", rows))
    assert (oom.exit_code, oom.signal) == (0, 125)
    assert aggregate("506", match_rows("506", rows)).cancelled_by == "1000"
    assert aggregate("530", match_rows("530", rows)).name == "name|with|pipes"
    het = aggregate("511", match_rows("511", rows))
    assert (het.state, het.exit_code) == (JobState.FAILED, 2)


def test_handmade_squeue_states() -> None:
    data = load("squeue_other_states", FIXTURES / "handmade")
    rows = parse_squeue(data["stdout"])
    for job_id, expected in data["expect"].items():
        assert aggregate(job_id, match_rows(job_id, rows)).state is JobState(expected)
    assert aggregate("602", match_rows("602", rows)).signal == 15


@pytest.mark.parametrize(
    ("fixture", "folder", "expected"),
    [
        ("sbatch_ok", None, True),
        ("sbatch_het", None, True),
        ("sbatch_cluster", "handmade", ("4242", "gpu_cluster")),
        ("sbatch_wrapper_banner", "handmade", ("777", None)),
        ("sbatch_invalid_partition", None, None),
    ],
)
def test_sbatch_output(fixture: str, folder: str | None, expected: Any) -> None:
    data = load(fixture, FIXTURES / folder if folder else None)
    parsed = parse_sbatch_output(data["stdout"])
    if expected is True:
        assert parsed is not None
        assert parsed[0] == data["stdout"].strip()
    else:
        assert parsed == expected


@pytest.mark.parametrize(
    ("fixture", "folder", "transient", "limit"),
    [
        ("sbatch_invalid_partition", None, False, False),
        ("sbatch_invalid_gres", None, False, False),
        ("sbatch_invalid_time", None, False, False),
        ("sbatch_bad_directive", None, False, False),
        ("sbatch_limit_qos", "handmade", False, True),
        ("sbatch_limit_assoc", "handmade", False, True),
        ("sbatch_policy_size", "handmade", False, False),
        ("sbatch_socket_timeout", "handmade", True, False),
        ("sbatch_unable_contact", "handmade", True, False),
        ("squeue_unreachable", "handmade", True, False),
    ],
)
def test_error_classification(
    fixture: str, folder: str | None, transient: bool, limit: bool
) -> None:
    data = load(fixture, FIXTURES / folder if folder else None)
    assert data["returncode"] != 0
    assert is_transient(data["stderr"]) is transient
    assert is_limit(data["stderr"]) is limit


def test_unknown_id_outputs() -> None:
    single = load("squeue_unknown_single")
    assert single["returncode"] != 0
    assert "Invalid job id" in single["stderr"]
    pair = load("squeue_unknown_pair")
    assert pair["returncode"] == 0
    assert parse_squeue(pair["stdout"]) == []
    assert parse_sacct(load("sacct_unknown")["stdout"]) == []
    assert "accounting storage is disabled" in load("sacct_disabled")["stderr"]


def test_small_helpers() -> None:
    assert expand_array_range("[1-5%2]") == [1, 2, 3, 4, 5]
    assert expand_array_range("1-7:3,10") == [1, 4, 7, 10]
    assert split_job_id("123_[1-5]") == ("123", "[1-5]", None)
    assert split_job_id("123+1") == ("123", None, "1")
    assert split_job_id("123.batch") == ("123", None, None)
    assert parse_exit_pair("1:15") == (1, 15)
    assert parse_exit_pair("") == (None, None)
    assert parse_wait_status("768") == (3, 0)
    assert parse_wait_status("9") == (0, 9)
    assert cancelled_by("CANCELLED by 1234") == "1234"
    assert cancelled_by("CANCELLED") is None
    assert slurm_state("CA") is JobState.CANCELLED
    assert slurm_state("CANCELLED+") is JobState.CANCELLED
    assert slurm_state("") is JobState.UNKNOWN
    # One id is sent twice: squeue errors on a single unknown id, not on a list.
    assert "--jobs=7,7" in squeue_argv(["7"])


def test_state_classes() -> None:
    assert all(s.is_terminal != s.is_active for s in JobState if s is not JobState.UNKNOWN)
    assert not JobState.UNKNOWN.is_terminal
    assert not JobState.UNKNOWN.is_active
    assert [s for s in JobState if s.is_success] == [JobState.COMPLETED]
    assert JobState.REQUEUED.is_active
    assert JobState.TIMEOUT.is_terminal
