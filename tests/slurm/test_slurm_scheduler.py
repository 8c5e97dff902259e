"""SlurmScheduler against the real one-host Slurm (accounting profile)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcagent.errors import CommandTimeout, SubmitError
from hpcagent.process import CommandResult, counting, run_command
from hpcagent.scheduler.base import JobState, JobStatus
from hpcagent.scheduler.slurm import SlurmScheduler

# Other suites share the one node, so jobs may queue for a while: generous waits.
pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster"), pytest.mark.timeout(600)]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_terminal(
    sched: SlurmScheduler, ids: Sequence[str], timeout_s: float = 240, poll_s: float = 1.0
) -> dict[str, JobStatus]:
    deadline = time.monotonic() + timeout_s
    out = sched.status(ids)
    while time.monotonic() < deadline and not all(s.is_terminal for s in out.values()):
        time.sleep(poll_s)
        out = sched.status(ids)
    return out


def wait_state(sched: SlurmScheduler, job: str, state: JobState, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while sched.status([job])[job].state is not state and time.monotonic() < deadline:
        time.sleep(0.5)


def test_exit_codes_cancel_and_names(job_dir: Path, make_script: Callable[..., Path]) -> None:
    sched = SlurmScheduler()
    ok = sched.submit(make_script("ok", "echo fine"), job_name=unique("t_ok"))
    bad = sched.submit(make_script("bad", "exit 3"), job_name=unique("t_bad"))
    long_name = unique("t_long")
    long = sched.submit(make_script("long", "sleep 300"), job_name=long_name)
    wait_state(sched, long, JobState.RUNNING)
    assert sched.find_by_name(long_name) == [long]
    sched.cancel([long])
    out = wait_terminal(sched, [ok, bad, long])
    assert (out[ok].state, out[ok].exit_code) == (JobState.COMPLETED, 0)
    assert (out[bad].state, out[bad].exit_code) == (JobState.FAILED, 3)
    assert out[long].state is JobState.CANCELLED
    assert out[ok].nodes
    assert (job_dir / f"ok-{ok}.out").read_text() == "fine\n"
    # A fresh scheduler, asking after the fact, gets the same answers (and sacct agrees).
    fresh = SlurmScheduler().status([ok, bad, long])
    assert {j: s.state for j, s in fresh.items()} == {j: s.state for j, s in out.items()}
    # The sacct path (used once jobs leave squeue), called directly: these jobs are still in
    # squeue for MinJobAge. sacct may lag a little behind the controller.
    deadline = time.monotonic() + 60
    res: dict[str, JobStatus] = {}
    while time.monotonic() < deadline:
        res = {}
        SlurmScheduler()._status_of_departed([ok, bad, long], res)
        if all(s.is_terminal for s in res.values()):
            break
        time.sleep(1)
    assert res[long].cancelled_by == "0"
    assert (res[bad].state, res[bad].exit_code, res[bad].source) == (JobState.FAILED, 3, "sacct")


def test_invalid_partition_is_submit_error(make_script: Callable[..., Path]) -> None:
    sched = SlurmScheduler()
    script = make_script("nopart", "exit 0", ("--partition=no_such_partition",))
    with pytest.raises(SubmitError) as info:
        sched.submit(script, job_name=unique("t_nopart"))
    assert "invalid partition" in info.value.stderr.lower()
    assert "invalid partition" in str(info.value).lower()


def test_200_live_jobs_one_squeue_per_cycle(make_script: Callable[..., Path]) -> None:
    runner, calls = counting(run_command)
    sched = SlurmScheduler(runner=runner, sbatch_args=["--hold"])
    script = make_script("held", "sleep 1")
    name = unique("t_many")
    ids = [sched.submit(script, job_name=name) for _ in range(200)]
    try:
        assert len(set(ids)) == 200
        for _ in range(3):
            calls.clear()
            out = sched.status(ids)
            assert [c[0] for c in calls] == ["squeue"]
            assert all(s.state is JobState.PENDING for s in out.values())
            assert {s.reason for s in out.values()} == {"JobHeldUser"}
    finally:
        calls.clear()
        sched.cancel(ids)
        assert [c[0] for c in calls] == ["scancel"]
    out = wait_terminal(sched, ids, timeout_s=60)
    assert all(s.state is JobState.CANCELLED for s in out.values())
    calls.clear()
    sched.status(ids)
    assert calls == []  # finished jobs are cached


@pytest.mark.slow
def test_time_limit_gives_timeout(make_script: Callable[..., Path]) -> None:
    sched = SlurmScheduler()
    script = make_script("tl", "sleep 600", ("--time=1",))
    job = sched.submit(script, job_name=unique("t_timeout"))
    try:
        out = wait_terminal(sched, [job], timeout_s=420, poll_s=5)
    finally:
        sched.cancel([job])
    assert out[job].state is JobState.TIMEOUT
    assert not out[job].state.is_success
    assert out[job].reason == "TimeLimit"


def test_timed_out_sbatch_that_was_accepted_is_adopted(make_script: Callable[..., Path]) -> None:
    """Fault injection at the seam: the real sbatch runs, then the caller sees a timeout."""
    sbatch_runs = 0

    def flaky(argv: Sequence[str], **kw: Any) -> CommandResult:
        nonlocal sbatch_runs
        result = run_command(argv, **kw)
        if argv[0] == "sbatch":
            sbatch_runs += 1
            if sbatch_runs == 1:
                raise CommandTimeout("sbatch timed out after 60s")  # what run_command raises
        return result

    sched = SlurmScheduler(runner=flaky, backoff_initial_s=0, backoff_max_s=0)
    name = unique("t_dup")
    job = sched.submit(make_script("dup", "sleep 120"), job_name=name)
    try:
        assert sbatch_runs == 1  # adopted by name, not submitted again
        assert sched.find_by_name(name) == [job]
    finally:
        sched.cancel([job])


def test_unknown_job_is_unknown() -> None:
    sched = SlurmScheduler()
    st = sched.status(["987654321"])["987654321"]
    assert st.state is JobState.UNKNOWN
    assert sched.accounting is True
    assert "not found in squeue or sacct" in st.reason
