"""LocalScheduler: real bash child processes, same interface as Slurm."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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


HOLDS_ON = """
import pathlib, signal, sys, time
here = pathlib.Path(sys.argv[1])
def stop(*_):
    while not (here / "go").exists():  # the test decides when the stop is over
        time.sleep(0.05)
    (here / "reported").write_text("x")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(here / "ready").write_text("x")
time.sleep(600)
"""


def test_cancelled_job_ends_when_its_whole_group_has(tmp_path: Path) -> None:
    """bash dies on SIGTERM at once; the executor it started still reports. The job stays
    COMPLETING until that process has exited too, so no one reads the end too early."""
    (tmp_path / "holds.py").write_text(HOLDS_ON)
    s = LocalScheduler(output_dir=tmp_path, kill_wait_s=600)
    job = s.submit(
        script(tmp_path, "j", f"{sys.executable} {tmp_path / 'holds.py'} {tmp_path}"), job_name="j"
    )
    wait_until(lambda: (tmp_path / "ready").exists())
    s.cancel([job])
    wait_until(lambda: s.status([job])[job].state is JobState.COMPLETING)  # bash is gone
    s.cancel([job])  # a second cancel changes nothing
    assert s.status([job])[job].state is JobState.COMPLETING
    (tmp_path / "go").touch()
    s.wait([job], timeout_s=60)
    st = s.status([job])[job]
    assert (st.state, st.signal) == (JobState.CANCELLED, 15)
    assert (tmp_path / "reported").exists()


def test_cancel_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    s = LocalScheduler(output_dir=tmp_path, kill_wait_s=0.5)
    ready = tmp_path / "ready"
    body = f"trap '' TERM; (trap '' TERM; touch {ready}; sleep 600) & wait; wait"
    job = s.submit(script(tmp_path, "stubborn", body), job_name="stubborn")
    wait_until(ready.exists)
    s.cancel([job])
    s.wait([job], timeout_s=60)
    st = s.status([job])[job]
    assert (st.state, st.signal) == (JobState.CANCELLED, 9)


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


OWNER = """
import sys, time
from pathlib import Path
from hpcagent.scheduler.local import LocalScheduler
s = LocalScheduler(output_dir=Path(sys.argv[1]))
for name in sys.argv[2:]:
    print(s.submit(Path(sys.argv[1]) / f"{name}.sh", job_name=name), flush=True)
time.sleep(600)
"""


def _owner_killed(tmp_path: Path, names: list[str]) -> list[str]:
    """Submit ``names`` from another process, then kill -9 that process (the jobs live on)."""
    import signal
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path), *names], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ids = [proc.stdout.readline().strip() for _ in names]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return ids


def test_a_new_scheduler_re_adopts_the_jobs_of_a_killed_one(tmp_path: Path) -> None:
    """kill -9 of the process that started the jobs: a new LocalScheduler on the same folder
    follows them to their real end (exit status from $HPCAGENT_JOB_STATUS_FILE), cancels
    them, and never hands out their ids again."""
    trap = 'trap \'echo "$?" > "$HPCAGENT_JOB_STATUS_FILE"\' EXIT'
    for name, code in (("ok", 0), ("bad", 3)):
        script(
            tmp_path,
            name,
            f"{trap}\nwhile [ ! -e {tmp_path}/go ]; do sleep 0.05; done\nexit {code}",
        )
    script(tmp_path, "quiet", f"while [ ! -e {tmp_path}/go ]; do sleep 0.05; done\nexit 0")
    script(tmp_path, "long", f"{trap}\ntouch {tmp_path}/long.up\nsleep 600")
    ok, bad, quiet, long = _owner_killed(tmp_path, ["ok", "bad", "quiet", "long"])
    wait_until((tmp_path / "long.up").exists)
    s = LocalScheduler(output_dir=tmp_path, kill_wait_s=2)
    st = s.status([ok, bad, quiet, long])
    assert {v.state for v in st.values()} == {JobState.RUNNING}
    assert s.find_by_name("ok") == [ok]
    assert s.output_path(ok) == tmp_path / f"ok-{ok}.out"
    (tmp_path / "go").touch()
    s.wait([ok, bad, quiet], timeout_s=60)
    st = s.status([ok, bad, quiet])
    assert (st[ok].state, st[ok].exit_code) == (JobState.COMPLETED, 0)
    assert (st[bad].state, st[bad].exit_code) == (JobState.FAILED, 3)
    assert st[quiet].state is JobState.FAILED  # wrote no exit status: never read as success
    assert "exit status unknown" in st[quiet].reason
    s.cancel([long])
    s.wait([long], timeout_s=60)
    assert s.status([long])[long].state is JobState.CANCELLED
    new = s.submit(script(tmp_path, "next", "true"), job_name="next")
    assert int(new) > max(int(j) for j in (ok, bad, quiet, long))
    s.wait([new], timeout_s=30)
    # and a third one still knows how they all ended
    again = LocalScheduler(output_dir=tmp_path).status([ok, bad, long, new])
    assert [v.state for v in again.values()] == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.COMPLETED,
    ]
