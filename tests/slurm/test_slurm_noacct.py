"""The no-accounting profile: same final states from squeue/scontrol, UNKNOWN once a job is gone.

The module switches the cluster to ``--profile noacct`` (AccountingStorageType=none, short
MinJobAge) and back to ``acct`` at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcagent.scheduler.base import JobState, JobStatus
from hpcagent.scheduler.slurm import SlurmScheduler

pytestmark = [pytest.mark.slurm, pytest.mark.slurm_noacct, pytest.mark.slow]

EXPECTED = {
    "ok": (JobState.COMPLETED, 0),
    "bad": (JobState.FAILED, 3),
    "long": (JobState.CANCELLED, None),
}


@pytest.fixture(scope="module")
def noacct_cluster(
    slurm_cluster: Path,
    cluster_cmd: Callable[..., subprocess.CompletedProcess[str]],
    slurm_log_tails: Callable[[], str],
) -> Iterator[None]:
    res = cluster_cmd("up", "--profile", "noacct", check=False)
    if res.returncode != 0:
        cluster_cmd("up", "--profile", "acct", check=False)
        pytest.fail(f"switching to noacct failed:\n{res.stderr}\n{slurm_log_tails()}")
    try:
        yield
    finally:
        back = cluster_cmd("up", "--profile", "acct", check=False)
        assert back.returncode == 0, back.stderr


def run_three(sched: SlurmScheduler, make_script: Callable[..., Path]) -> dict[str, JobStatus]:
    tag = uuid.uuid4().hex[:8]
    ids = {
        "ok": sched.submit(make_script("ok", "echo fine"), job_name=f"na_ok_{tag}"),
        "bad": sched.submit(make_script("bad", "exit 3"), job_name=f"na_bad_{tag}"),
        "long": sched.submit(make_script("long", "sleep 300"), job_name=f"na_long_{tag}"),
    }
    # Other suites share the node: allow for a queue.
    deadline = time.monotonic() + 150
    while sched.status([ids["long"]])[ids["long"]].state is not JobState.RUNNING:
        assert time.monotonic() < deadline, f"job never started: {sched.status(list(ids.values()))}"
        time.sleep(0.5)
    sched.cancel([ids["long"]])
    # Poll faster than MinJobAge, as a tracker must without accounting.
    deadline = time.monotonic() + 120
    while True:
        out = sched.status(list(ids.values()))
        if all(s.is_terminal for s in out.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {k: out[v] for k, v in ids.items()}


@pytest.mark.timeout(420)
@pytest.mark.usefixtures("noacct_cluster")
def test_same_final_states_without_accounting(make_script: Callable[..., Path]) -> None:
    sched = SlurmScheduler()
    out = run_three(sched, make_script)
    got = {k: (s.state, s.exit_code if k != "long" else None) for k, s in out.items()}
    assert got == EXPECTED
    assert all(s.source == "squeue" for s in out.values())


@pytest.mark.timeout(420)
@pytest.mark.usefixtures("noacct_cluster")
def test_gone_job_is_unknown_not_success(make_script: Callable[..., Path]) -> None:
    tracker = SlurmScheduler()
    job = tracker.submit(make_script("quick", "exit 0"), job_name=f"na_gone_{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + 150
    while not tracker.status([job])[job].is_terminal and time.monotonic() < deadline:
        time.sleep(0.5)
    seen = tracker.status([job])[job]
    assert seen.state is JobState.COMPLETED, seen
    # A scheduler that did not see it finish: once slurmctld purged the record (MinJobAge plus
    # the purge pass), nothing knows the outcome, and that must read UNKNOWN, never success.
    deadline = time.monotonic() + 150
    late = SlurmScheduler()
    st = late.status([job])[job]
    while st.state is not JobState.UNKNOWN and time.monotonic() < deadline:
        time.sleep(2)
        late = SlurmScheduler()
        st = late.status([job])[job]
    assert st.state is JobState.UNKNOWN, st
    assert late.accounting is False, "the cluster left the noacct profile during the test"
    assert "no accounting" in st.reason
    # The tracker that saw it finish keeps the final state it saw.
    assert tracker.status([job])[job].state is JobState.COMPLETED
