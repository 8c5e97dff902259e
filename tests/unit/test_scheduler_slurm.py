"""SlurmScheduler logic with a fake at the run_command seam, fed with captured Slurm outputs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_commands import FakeCommands, res

from hpcagent.errors import CommandTimeout, SubmitError, SubmitLimitError, TransientSchedulerError
from hpcagent.process import CommandResult
from hpcagent.scheduler.base import JobState
from hpcagent.scheduler.pacer import TokenBucket
from hpcagent.scheduler.slurm import SlurmScheduler

FIXTURES = Path(__file__).resolve().parents[1] / "slurm" / "fixtures"
REAL = sorted(p for p in FIXTURES.glob("slurm-*") if p.is_dir())[-1]


def fx(name: str, folder: Path = REAL) -> CommandResult:
    d: dict[str, Any] = json.loads((folder / f"{name}.json").read_text())
    return CommandResult(tuple(d["argv"]), d["returncode"], d["stdout"], d["stderr"])


def sched(fake: FakeCommands, **kw: Any) -> SlurmScheduler:
    return SlurmScheduler(runner=fake, backoff_initial_s=0, backoff_max_s=0, user="tester", **kw)


def test_submit_parses_id_and_passes_name(tmp_path: Path) -> None:
    fake = FakeCommands(sbatch=[fx("sbatch_ok")])
    job = sched(fake).submit(tmp_path / "job.sh", job_name="clearml_task_abc")
    assert job == fx("sbatch_ok").stdout.strip()
    argv = fake.calls[0]
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--job-name=clearml_task_abc" in argv
    assert argv[-1] == str(tmp_path / "job.sh")


def test_submit_success_with_stderr_and_banner(tmp_path: Path) -> None:
    fake = FakeCommands(sbatch=[fx("sbatch_wrapper_banner", FIXTURES / "handmade")])
    assert sched(fake).submit(tmp_path / "j.sh", job_name="n") == "777"


def test_submit_cluster_suffix(tmp_path: Path) -> None:
    s = sched(FakeCommands(sbatch=[fx("sbatch_cluster", FIXTURES / "handmade")]))
    assert s.submit(tmp_path / "j.sh", job_name="n") == "4242"
    assert s.last_cluster == "gpu_cluster"


@pytest.mark.parametrize(
    "fixture", ["sbatch_invalid_partition", "sbatch_invalid_gres", "sbatch_bad_directive"]
)
def test_submit_rejection_is_not_retried(tmp_path: Path, fixture: str) -> None:
    fake = FakeCommands(sbatch=[fx(fixture)])
    with pytest.raises(SubmitError) as info:
        sched(fake).submit(tmp_path / "j.sh", job_name="n")
    assert not isinstance(info.value, SubmitLimitError)
    assert info.value.stderr == fx(fixture).stderr
    assert fake.count("sbatch") == 1


def test_submit_limit(tmp_path: Path) -> None:
    fake = FakeCommands(sbatch=[fx("sbatch_limit_qos", FIXTURES / "handmade")])
    with pytest.raises(SubmitLimitError, match="QOSMaxSubmitJobPerUserLimit"):
        sched(fake).submit(tmp_path / "j.sh", job_name="n")


def test_transient_then_success(tmp_path: Path) -> None:
    fake = FakeCommands(
        sbatch=[fx("sbatch_socket_timeout", FIXTURES / "handmade"), res("55\n")],
        squeue=[res("")],  # the name lookup before the retry finds nothing
    )
    assert sched(fake).submit(tmp_path / "j.sh", job_name="n") == "55"
    assert [c[0] for c in fake.calls] == ["sbatch", "squeue", "sbatch"]
    assert "--name=n" in fake.calls[1]


def test_timed_out_sbatch_that_was_accepted_is_not_submitted_twice(tmp_path: Path) -> None:
    fake = FakeCommands(
        sbatch=[CommandTimeout("sbatch timed out after 60s")],
        squeue=[res("91|91|PENDING|Priority|0||clearml_task_x\n")],
    )
    assert sched(fake).submit(tmp_path / "j.sh", job_name="clearml_task_x") == "91"
    assert fake.count("sbatch") == 1


def test_transient_gives_up(tmp_path: Path) -> None:
    err = fx("sbatch_unable_contact", FIXTURES / "handmade")
    fake = FakeCommands(sbatch=[err, err, err], squeue=[res(""), res("")])
    with pytest.raises(TransientSchedulerError):
        sched(fake, submit_attempts=3).submit(tmp_path / "j.sh", job_name="n")
    assert fake.count("sbatch") == 3


def test_status_one_squeue_for_all_live_jobs() -> None:
    data = json.loads((REAL / "squeue_states.json").read_text())
    live = [j for j, s in data["expect"].items() if JobState(s).is_active]
    fake = FakeCommands(squeue=lambda argv: fx("squeue_states"))
    s = sched(fake)
    for _ in range(3):
        out = s.status(live)
        assert all(out[j].state is JobState(data["expect"][j]) for j in live)
    assert fake.count("squeue") == 3
    assert fake.count("sacct") == 0
    assert all(len(c) == len(fake.calls[0]) for c in fake.calls)


def test_terminal_states_cached_and_departed_jobs_use_sacct() -> None:
    names = json.loads((REAL / "sacct_states.json").read_text())["names"]
    ids = [names["completed"], names["failed3"], names["running"]]
    # squeue knows only the running one; the two others left it.
    fake = FakeCommands(
        squeue=lambda argv: res(f"{ids[2]}|{ids[2]}|RUNNING|None|0|vm|fx_running\n"),
        sacct=lambda argv: fx("sacct_states"),
    )
    s = sched(fake)
    out = s.status(ids)
    assert out[ids[0]].state is JobState.COMPLETED
    assert (out[ids[1]].state, out[ids[1]].exit_code) == (JobState.FAILED, 3)
    assert out[ids[1]].source == "sacct"
    assert out[ids[2]].state is JobState.RUNNING
    sacct_argv = next(c for c in fake.calls if c[0] == "sacct")
    assert f"--jobs={ids[0]},{ids[1]}" in sacct_argv
    assert "-X" in sacct_argv
    s.status(ids)
    # Finished jobs are not asked again.
    assert f"--jobs={ids[2]},{ids[2]}" in fake.calls[-1]
    assert fake.count("sacct") == 1


def test_job_found_nowhere_is_unknown_never_success() -> None:
    fake = FakeCommands(squeue=[fx("squeue_unknown_single")], sacct=[fx("sacct_unknown")])
    st = sched(fake).status(["999999"])["999999"]
    assert st.state is JobState.UNKNOWN
    assert not st.state.is_success
    assert "not found" in st.reason


def _noacct_fake(scontrol_fixture: str) -> FakeCommands:
    """Slurm without accounting: squeue knows no job, sacct is disabled, ``scontrol show job``
    answers with ``scontrol_fixture``."""
    return FakeCommands(
        squeue=lambda argv: res(""),
        sacct=[fx("sacct_disabled")],
        scontrol=lambda argv: (
            res("MinJobAge=10\n") if argv[1:] == ["show", "config"] else fx(scontrol_fixture)
        ),
    )


def test_no_accounting_falls_back_to_scontrol_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    noacct = json.loads((REAL / "scontrol_noacct.json").read_text())
    jid = next(iter(noacct["expect"]))
    fake = _noacct_fake("scontrol_noacct")
    s = sched(fake)
    st = s.status([jid])[jid]
    assert st.state is JobState(noacct["expect"][jid])
    assert st.source == "scontrol"
    assert s.accounting is False
    assert "MinJobAge=10" in caplog.text
    s.status([jid])
    assert fake.count("sacct") == 1  # not probed again


def test_no_accounting_gone_job_is_unknown_and_not_asked_again() -> None:
    fake = _noacct_fake("scontrol_unknown")
    s = sched(fake)
    assert s.status(["999999"])["999999"].state is JobState.UNKNOWN
    before = fake.count("scontrol")
    assert s.status(["999999"])["999999"].state is JobState.UNKNOWN
    assert fake.count("scontrol") == before


def test_controller_down_keeps_last_known_state(caplog: pytest.LogCaptureFixture) -> None:
    """slurmctld away (the subprocess seam answers as squeue does then): the last known states,
    one warning when it goes and one line when it is back, never one per cycle."""
    answers: list[CommandResult | Exception] = [
        res("5|5|RUNNING|None|0|vm|a\n"),
        fx("squeue_unreachable", FIXTURES / "handmade"),
        CommandTimeout("squeue timed out after 60s"),
        fx("squeue_unreachable", FIXTURES / "handmade"),
        res("5|5|RUNNING|None|0|vm|a\n"),
    ]
    s = sched(FakeCommands(squeue=answers))
    assert s.status(["5"])["5"].state is JobState.RUNNING
    with caplog.at_level("INFO", logger="hpcagent.scheduler.slurm"):
        for _ in range(3):
            st = s.status(["5", "6"])
            assert (st["5"].state, st["5"].source) == (JobState.RUNNING, "cache")
            assert st["6"].state is JobState.UNKNOWN
            assert st["6"].source == "cache"  # not "gone": the tracker's lost clock waits
        assert s.status(["5"])["5"].source != "cache"
    down = [r for r in caplog.records if "slurmctld unreachable since" in r.getMessage()]
    back = [r for r in caplog.records if "slurmctld back after" in r.getMessage()]
    assert len(down) == 1
    assert "jobs keep their last known states" in down[0].getMessage()
    assert len(back) == 1
    assert [r.levelname for r in caplog.records if r.levelno >= 30] == ["WARNING"]


def test_cancel_chunks_and_ignores_finished_jobs() -> None:
    fake = FakeCommands(
        scancel=lambda argv: res(
            stderr="scancel: error: Kill job error on job id 3: "
            "Job/step already completing or completed\n",
            rc=1,
        )
    )
    sched(fake, cancel_chunk=500).cancel([str(i) for i in range(1, 1201)])
    assert [len(c) - 1 for c in fake.calls] == [500, 500, 200]


def test_cancel_real_error_raises() -> None:
    fake = FakeCommands(scancel=[res(stderr="scancel: error: Access/permission denied\n", rc=1)])
    with pytest.raises(Exception, match="permission denied"):
        sched(fake).cancel(["1"])


def test_find_by_name_squeue_and_sacct() -> None:
    fake = FakeCommands(
        squeue=[res("12|12|RUNNING|None|0|vm|clearml_task_t\n13|13|PENDING|None|0||other\n")],
        sacct=[res("9|9|COMPLETED|0:0|None|vm|clearml_task_t\n")],
    )
    assert sched(fake).find_by_name("clearml_task_t") == ["9", "12"]
    assert "--starttime=now-7days" in fake.calls[1]


def test_rate_limiter_bounds_commands() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    bucket = TokenBucket(6, burst=1, clock=lambda: now[0], sleep=sleep)
    fake = FakeCommands(squeue=lambda argv: res(""), sacct=lambda argv: res(""))
    s = sched(fake, rate_limiter=bucket)
    for _ in range(5):
        s.status(["1"])
    # 10 commands at 6 per minute with a burst of 1: at least 90 s of (fake) waiting.
    assert len(fake.calls) == 10
    assert now[0] >= 90.0


def test_sbatch_env_drops_slurm_job_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    seen: dict[str, str] = {}

    def runner(
        argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, **_: Any
    ) -> CommandResult:
        seen.update(env or {})
        return res("1\n")

    SlurmScheduler(runner=runner).submit(tmp_path / "j.sh", job_name="n")
    assert "SLURM_JOB_ID" not in seen
    assert seen["SLURM_CONF"] == "/etc/slurm/slurm.conf"


def test_sacct_failure_keeps_last_known_state(caplog: pytest.LogCaptureFixture) -> None:
    squeue: list[CommandResult | Exception] = [res("8|8|RUNNING|None|0|vm|a\n"), res(""), res("")]
    sacct: list[CommandResult | Exception] = [
        res(stderr="sacct: error: Problem talking to the database: Connection refused\n", rc=1),
        res("8|8|COMPLETED|0:0|None|vm|a\n"),
    ]
    s = sched(FakeCommands(squeue=squeue, sacct=sacct))
    assert s.status(["8"])["8"].state is JobState.RUNNING
    st = s.status(["8"])["8"]
    assert (st.state, st.source) == (JobState.RUNNING, "cache")
    assert "slurmdbd (sacct) unreachable since" in caplog.text
    assert "Problem talking to the database" in caplog.text
    with caplog.at_level("INFO", logger="hpcagent.scheduler.slurm"):
        assert s.status(["8"])["8"].state is JobState.COMPLETED
    assert "slurmdbd (sacct) back after" in caplog.text


def test_never_runs_only_for_pending_reasons_that_cannot_change() -> None:
    from hpcagent.scheduler.base import JobStatus
    from hpcagent.scheduler.gridengine import GridEngineScheduler
    from hpcagent.scheduler.local import LocalScheduler

    never_runs = SlurmScheduler().never_runs
    for other in (GridEngineScheduler(), LocalScheduler()):  # they know no such reasons
        assert not other.never_runs(JobStatus("1", JobState.PENDING, reason="PartitionConfig"))

    assert never_runs(JobStatus("1", JobState.PENDING, reason="PartitionConfig"))
    assert never_runs(JobStatus("1", JobState.PENDING, reason="PartitionTimeLimit"))
    assert not never_runs(JobStatus("1", JobState.PENDING, reason="Resources"))
    assert not never_runs(JobStatus("1", JobState.PENDING, reason="Priority"))
    assert not never_runs(JobStatus("1", JobState.RUNNING, reason="PartitionConfig"))


def test_cancel_own_job_only_in_a_job_and_on_rank_0() -> None:
    from hpcagent.scheduler.registry import cancel_own_job

    # outside a job and on ranks other than 0 nothing runs (the real scancel is exercised by
    # tests/slurm/test_submitter_e2e.py::test_abort_while_running_stops); the local and Grid
    # Engine backends do not cancel their own jobs
    assert cancel_own_job({}) is None
    assert cancel_own_job({"SLURM_JOB_ID": "12", "SLURM_PROCID": "3"}) is None
    assert cancel_own_job({"HPCAGENT_JOB_ID": "2"}) is None
    assert cancel_own_job({"JOB_ID": "7", "SGE_JOB_SPOOL_DIR": "/s"}) is None


def test_clean_env_drops_the_jobs_slurm_variables() -> None:
    env = SlurmScheduler.clean_env(
        {
            "SLURM_JOB_ID": "1",
            "SLURM_CONF": "/c",
            "XDG_RUNTIME_DIR": "/r",
            "DBUS_X": "y",
            "PATH": "/b",
        }
    )
    assert env == {"SLURM_CONF": "/c", "PATH": "/b"}
