"""GridEngineScheduler against the real one-host cell: submit, status (qstat, then qacct),
output file (private: 0600), the job identity the executor sees, cancel, find by name, time
limit, rejection."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import pytest

from hpcagent.errors import SubmitError
from hpcagent.scheduler.base import JobState, JobStatus
from hpcagent.scheduler.gridengine import GridEngineScheduler

pytestmark = pytest.mark.gridengine


def script(folder: Path, name: str, body: str) -> Path:
    """A job script that runs in ``folder`` (``-wd``), output there (``NAME-<id>.out``)."""
    path = folder / f"{name}.sh"
    head = f"#!/bin/bash\n#$ -S /bin/bash\n#$ -wd {folder}\n#$ -j y\n#$ -o {name}-$JOB_ID.out\n"
    path.write_text(f"{head}{body}\n")
    return path


def wait_terminal(s: GridEngineScheduler, job: str, timeout: float = 120) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = s.status([job])[job]
        if st.is_terminal:
            return st
        time.sleep(0.5)
    raise AssertionError(f"job {job} not finished after {timeout}s: {s.status([job])[job]}")


def wait_state(s: GridEngineScheduler, job: str, state: JobState, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.status([job])[job].state is state:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job} never {state}: {s.status([job])[job]}")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_job_completes_with_its_output_and_identity(ge_dir: Path) -> None:
    """The job sees the variables the executor reads: registry.job_identity names it."""
    probe = (
        f"{sys.executable} -c 'import json, os; from hpcagent.scheduler import registry; "
        "j = registry.job_identity(os.environ); print(json.dumps(j.__dict__))'"
    )
    s = GridEngineScheduler(qsub_args=["-V"])  # -V: the job gets this Python's environment
    name = unique("ident")
    path = script(ge_dir, "ident", f"echo hello from ge\n{probe}")
    job = s.submit(path, job_name=name)
    st = wait_terminal(s, job)
    assert (st.state, st.exit_code, st.source) == (JobState.COMPLETED, 0, "qacct")
    assert st.nodes  # the execution host
    out = s.output_path(job, job_name=name, script=path.read_text(), submit_dir=Path.cwd())
    assert out == ge_dir / f"ident-{job}.out"
    lines = out.read_text().splitlines()
    assert lines[0] == "hello from ge"
    identity = json.loads(lines[1])
    assert identity == {"scheduler": "gridengine", "job_id": job, "nodes": st.nodes, "rank": None}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_job_output_is_private(ge_dir: Path) -> None:
    """sge_shepherd creates a job's output 0644 (umask 022, whatever qsub's umask); the job's
    first lines (gridengine.PRIVATE_OUTPUT) leave it 0600, stdout and stderr in it in order,
    and what the job creates 0600 too (umask 077). Separate -o/-e files that exist already
    (Grid Engine appends) become 0600 with their earlier lines kept. No credential of qsub's
    environment reaches the job, nor Grid Engine's stored copy of its environment (``-V``)."""
    secret = "SECRET_VALUE_" + uuid.uuid4().hex
    env = {**os.environ, "CLEARML_API_SECRET_KEY": secret,
           "CLEARML_AGENT__API__CREDENTIALS__SECRET_KEY": secret}  # fmt: skip
    s = GridEngineScheduler(env=env, qsub_args=["-V"])  # -V: the job gets qsub's environment
    body = (
        "echo to out; echo to err >&2; umask; touch made-by-job\n"
        f"env | grep -c {secret} || true\n"  # the job's environment, and Grid Engine's copy
        f'grep -c {secret} "$SGE_JOB_SPOOL_DIR/environment" || true\n'
        "echo last"
    )
    merged = s.submit(script(ge_dir, "merged", body), job_name=unique("merged"))
    out, err = ge_dir / "sep.out", ge_dir / "sep.err"
    for path in (out, err):
        path.write_text("earlier\n")
        path.chmod(0o644)
    separate = ge_dir / "separate.sh"
    separate.write_text(
        f"#!/bin/bash\n#$ -S /bin/bash\n#$ -wd {ge_dir}\n#$ -o {out}\n#$ -e {err}\n"
        "echo to out; echo to err >&2\n"
    )
    apart = s.submit(separate, job_name=unique("separate"))
    assert wait_terminal(s, merged).state is JobState.COMPLETED
    assert wait_terminal(s, apart).state is JobState.COMPLETED

    merged_out = ge_dir / f"merged-{merged}.out"
    assert _mode(merged_out) == 0o600
    assert merged_out.read_text().splitlines() == ["to out", "to err", "0077", "0", "0", "last"]
    assert _mode(ge_dir / "made-by-job") == 0o600
    assert (_mode(out), _mode(err)) == (0o600, 0o600)
    assert out.read_text().splitlines() == ["earlier", "to out"]
    assert err.read_text().splitlines() == ["earlier", "to err"]
    assert not list(ge_dir.glob("*.private"))  # no copy left behind


def test_failed_job_reports_its_exit_code(ge_dir: Path) -> None:
    s = GridEngineScheduler()
    job = s.submit(script(ge_dir, "fail", "echo failing; exit 3"), job_name=unique("fail"))
    st = wait_terminal(s, job)
    assert (st.state, st.exit_code, st.reason) == (JobState.FAILED, 3, "NonZeroExitCode")


def test_time_limit_is_timeout(ge_dir: Path) -> None:
    s = GridEngineScheduler(qsub_args=["-l", "h_rt=2"])
    job = s.submit(script(ge_dir, "slow", "sleep 60"), job_name=unique("slow"))
    st = wait_terminal(s, job)
    assert st.state is JobState.TIMEOUT
    assert "h_rt" in st.reason


def test_cancel_running_and_pending_jobs(ge_dir: Path) -> None:
    s = GridEngineScheduler(accounting_grace_s=5)
    running = s.submit(script(ge_dir, "run", "sleep 120"), job_name=unique("run"))
    held = GridEngineScheduler(qsub_args=["-h"])  # held: stays pending
    pending = held.submit(script(ge_dir, "held", "true"), job_name=unique("held"))
    wait_state(s, running, JobState.RUNNING)
    assert s.status([pending])[pending].state is JobState.PENDING
    s.cancel([running, pending, "999999"])  # an unknown id is not an error
    st = wait_terminal(s, running)
    assert (st.state, st.signal) == (JobState.FAILED, 9)  # killed; the submitter knows why
    # a job deleted while pending never ran: no accounting record, so UNKNOWN (never success)
    deadline = time.monotonic() + 60
    while s.status([pending])[pending].state is not JobState.UNKNOWN:
        assert time.monotonic() < deadline, s.status([pending])
        time.sleep(0.5)


def test_find_by_name_sees_live_and_finished_jobs(ge_dir: Path) -> None:
    s = GridEngineScheduler()
    name = unique("named")
    first = s.submit(script(ge_dir, "a", "true"), job_name=name)
    wait_terminal(s, first)
    second = s.submit(script(ge_dir, "b", "sleep 30"), job_name=name)
    try:
        assert s.find_by_name(name) == [first, second]
        assert s.find_by_name(unique("nobody")) == []
    finally:
        s.cancel([second])


def test_rejected_job_keeps_qsubs_words(ge_dir: Path) -> None:
    s = GridEngineScheduler(qsub_args=["-l", "nosuchresource=1"])
    with pytest.raises(SubmitError, match='unknown resource "nosuchresource"'):
        s.submit(script(ge_dir, "bad", "true"), job_name=unique("bad"))
