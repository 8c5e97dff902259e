"""LocalScheduler: real bash child processes, same interface as Slurm."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcagent.errors import SubmitError
from hpcagent.scheduler.base import JobState
from hpcagent.scheduler.local import LocalScheduler


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.sh"
    path.write_text("#!/bin/bash\n" + body + "\n")
    return path


def test_exit_codes_and_output(tmp_path: Path) -> None:
    s = LocalScheduler(output_dir=tmp_path / "out")
    ok = s.submit(script(tmp_path, "ok", 'echo "hello $HPCAGENT_JOB_NAME"'), job_name="job_ok")
    bad = s.submit(script(tmp_path, "bad", "echo oops >&2; exit 3"), job_name="job_bad")
    s.wait([ok, bad], timeout_s=30)
    st = s.status([ok, bad])
    assert (st[ok].state, st[ok].exit_code) == (JobState.COMPLETED, 0)
    assert (st[bad].state, st[bad].exit_code, st[bad].reason) == (
        JobState.FAILED,
        3,
        "NonZeroExitCode",
    )
    assert str(s.output_path(ok)).endswith(f"job_ok-{ok}.out")
    assert Path(str(s.output_path(ok))).read_text() == "hello job_ok\n"
    assert "oops" in Path(str(s.output_path(bad))).read_text()
    assert s.output_path("999") is None  # not one of its jobs


def test_cancel_running_and_pending(tmp_path: Path) -> None:
    s = LocalScheduler(output_dir=tmp_path, max_parallel=1, kill_wait_s=2)
    marker = tmp_path / "child-alive"
    running = s.submit(
        script(tmp_path, "long", f"(sleep 30; touch {marker}) & sleep 30; wait"), job_name="long"
    )
    pending = s.submit(script(tmp_path, "next", "exit 0"), job_name="next")
    st = s.status([running, pending])
    assert (st[running].state, st[pending].state) == (JobState.RUNNING, JobState.PENDING)
    s.cancel([running, pending])
    s.wait([running, pending], timeout_s=30)
    st = s.status([running, pending])
    assert st[running].state is JobState.CANCELLED
    assert st[running].signal is not None
    assert st[pending].state is JobState.CANCELLED
    assert not marker.exists()  # the whole process group got the signal


def test_max_parallel_queues_jobs(tmp_path: Path) -> None:
    s = LocalScheduler(output_dir=tmp_path, max_parallel=2)
    ids = [s.submit(script(tmp_path, f"j{i}", "sleep 0.3"), job_name=f"j{i}") for i in range(4)]
    states = [v.state for v in s.status(ids).values()]
    assert states.count(JobState.RUNNING) == 2
    assert states.count(JobState.PENDING) == 2
    s.wait(ids, timeout_s=30)
    assert all(v.state is JobState.COMPLETED for v in s.status(ids).values())


def test_signal_death_is_failed(tmp_path: Path) -> None:
    s = LocalScheduler(output_dir=tmp_path)
    job = s.submit(script(tmp_path, "k", "kill -9 $$"), job_name="k")
    s.wait([job], timeout_s=30)
    st = s.status([job])[job]
    assert (st.state, st.signal) == (JobState.FAILED, 9)


def test_unknown_ids_names_and_missing_script(tmp_path: Path) -> None:
    s = LocalScheduler(output_dir=tmp_path)
    assert s.status(["42"])["42"].state is JobState.UNKNOWN
    a = s.submit(script(tmp_path, "a", "true"), job_name="same")
    b = s.submit(script(tmp_path, "b", "true"), job_name="same")
    assert s.find_by_name("same") == [a, b]
    assert s.find_by_name("other") == []
    with pytest.raises(SubmitError):
        s.submit(tmp_path / "missing.sh", job_name="x")
    s.wait([a, b], timeout_s=30)
