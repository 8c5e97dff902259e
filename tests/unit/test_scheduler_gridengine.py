"""GridEngineScheduler at the process seam: outputs captured from the real one-host cell
(tests/gridengine/fixtures, by tests/gridengine/cell.sh's Son of Grid Engine 8.1.9) fed through
a fake runner. The same behaviour runs against the real cell in tests/gridengine/."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_commands import FakeCommands, res

from hpcagent.errors import (
    CommandTimeout,
    SchedulerError,
    SubmitError,
    SubmitLimitError,
    TransientSchedulerError,
)
from hpcagent.scheduler.base import JobState
from hpcagent.scheduler.gridengine import (
    PRIVATE_OUTPUT,
    GridEngineScheduler,
    ge_job_name,
    parse_qacct,
    parse_qstat_xml,
    parse_qsub_terse,
    private_script,
    qstat_state,
)

FIXTURES = Path(__file__).resolve().parents[1] / "gridengine" / "fixtures"


def fx(name: str) -> str:
    return (FIXTURES / name).read_text()


def job_script(folder: Path, body: str = "#!/bin/bash\n#$ -j y\necho hi\n") -> Path:
    path = folder / "j.sh"
    path.write_text(body)
    return path


def sched(fake: FakeCommands, **kw: object) -> GridEngineScheduler:
    return GridEngineScheduler(
        runner=fake,
        backoff_initial_s=0,
        backoff_max_s=0,
        user="root",
        **kw,  # type: ignore[arg-type]
    )


def test_qstat_xml_running_array_pending_and_error_rows() -> None:
    rows = parse_qstat_xml(fx("qstat_mixed.xml"))
    by_name: dict[str, list[str]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r.raw_state)
    assert by_name == {
        "cap_run": ["r"],
        "cap_arr": ["r", "r"],  # one row per running array task
        "cap_ok": ["r"],
        "cap_err": ["Eqw"],
        "cap_held": ["hqw"],
    }
    run = next(r for r in rows if r.name == "cap_run")
    assert (run.job_id, run.state, run.node) == ("15", JobState.RUNNING, "vm")
    err = next(r for r in rows if r.name == "cap_err")
    assert err.state is JobState.FAILED
    assert "error" in err.reason
    assert parse_qstat_xml("") == []


@pytest.mark.parametrize(
    ("letters", "state"),
    [
        ("qw", JobState.PENDING),
        ("hqw", JobState.PENDING),
        ("r", JobState.RUNNING),
        ("Rr", JobState.RUNNING),
        ("t", JobState.CONFIGURING),
        ("s", JobState.SUSPENDED),
        ("S", JobState.SUSPENDED),
        ("dr", JobState.COMPLETING),
        ("Eqw", JobState.FAILED),
        ("zz", JobState.UNKNOWN),
    ],
)
def test_qstat_states(letters: str, state: JobState) -> None:
    assert qstat_state(letters) is state


@pytest.mark.parametrize(
    ("fixture", "state", "exit_code", "signal", "reason"),
    [
        ("qacct_ok.txt", JobState.COMPLETED, 0, None, ""),
        ("qacct_exit3.txt", JobState.FAILED, 3, None, "NonZeroExitCode"),
        ("qacct_selfkill.txt", JobState.FAILED, 137, 9, "assumedly after job"),
        ("qacct_qdel.txt", JobState.FAILED, 137, 9, "assumedly after job"),
        ("qacct_h_rt.txt", JobState.TIMEOUT, 137, 9, "qmaster enforced h_rt"),
        ("qacct_eqw.txt", JobState.FAILED, 0, None, "opening input/output file"),
    ],
)
def test_qacct_records(
    fixture: str, state: JobState, exit_code: int, signal: int | None, reason: str
) -> None:
    (row,) = parse_qacct(fx(fixture))
    assert (row.state, row.exit_code, row.signal) == (state, exit_code, signal)
    assert row.reason.startswith(reason)
    assert row.node == "vm"


def test_qacct_array_has_one_record_per_task() -> None:
    rows = parse_qacct(fx("qacct_array.txt"))
    assert [(r.job_id, r.name, r.state) for r in rows] == [("16", "cap_arr", JobState.FAILED)] * 2


def test_qsub_terse_ids() -> None:
    assert parse_qsub_terse("15\n") == "15"
    assert parse_qsub_terse("16.1-2:1\n") == "16"
    assert parse_qsub_terse("Your job 3 has been submitted\n") is None


def test_job_names_grid_engine_accepts(tmp_path: Path) -> None:
    """Grid Engine refuses names that start with a digit (the submitter's ``<id8>-clearml_task_
    <id>``): they get a ``t`` in front; the mapping is the same for submit and find_by_name."""
    assert ge_job_name("4f6c0a8e-clearml_task_4f6c") == "t4f6c0a8e-clearml_task_4f6c"
    assert ge_job_name("clearml_task_4f6c") == "clearml_task_4f6c"
    assert ge_job_name("a b/c:d@e*f?g") == "a_b_c_d_e_f_g"
    fake = FakeCommands(qsub=[res("42\n")], qstat=[res(fx("qstat_mixed.xml"))], qacct=[res()])
    s = sched(fake)
    assert s.submit(job_script(tmp_path), job_name="15-run") == "42"
    assert fake.calls[0][:4] == ["qsub", "-terse", "-N", "t15-run"]
    s.find_by_name("15-run")
    assert fake.calls[2] == ["qacct", "-o", "root", "-j", "t15-run"]
    home = Path.home()
    assert s.output_path("5", job_name="9x", script="", submit_dir=home) == home / "t9x.o5"


def test_submit_passes_name_and_args_and_returns_the_id(tmp_path: Path) -> None:
    fake = FakeCommands(qsub=[res("42\n")])
    s = sched(fake, qsub_args=["-q", "all.q"])
    path = job_script(tmp_path)
    assert s.submit(path, job_name="clearml_task_a") == "42"
    assert fake.calls == [["qsub", "-terse", "-N", "clearml_task_a", "-q", "all.q"]]
    assert fake.stdin == [private_script(path.read_text())]


def test_the_job_script_gets_the_private_output_lines_after_its_shebang() -> None:
    """The prologue comes right after ``#!`` (qsub reads ``#$`` lines anywhere); a script
    without ``#!`` gets it first. What it does is tested in a real job
    (tests/gridengine/test_gridengine_scheduler.py::test_job_output_is_private)."""
    script = "#!/bin/bash\n#$ -S /bin/bash\n#$ -j y\necho hi\n"
    lines = private_script(script).splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1 : 1 + len(PRIVATE_OUTPUT.splitlines())] == PRIVATE_OUTPUT.splitlines()
    assert lines[-3:] == ["#$ -S /bin/bash", "#$ -j y", "echo hi"]
    assert private_script("echo hi\n") == PRIVATE_OUTPUT + "echo hi\n"
    assert "umask 077" in PRIVATE_OUTPUT.splitlines()


def test_an_unreadable_script_is_a_submit_error(tmp_path: Path) -> None:
    fake = FakeCommands()
    with pytest.raises(SubmitError, match="cannot read the job script"):
        sched(fake).submit(tmp_path / "missing.sh", job_name="n")
    assert fake.calls == []


def test_submit_rejection_keeps_qsubs_words(tmp_path: Path) -> None:
    err = 'Unable to run job: unknown resource "nosuchres"\nExiting.\n'
    fake = FakeCommands(qsub=[res(stderr=err, rc=1)])
    with pytest.raises(SubmitError, match='unknown resource "nosuchres"') as info:
        sched(fake).submit(job_script(tmp_path), job_name="n")
    assert not isinstance(info.value, TransientSchedulerError)
    assert info.value.returncode == 1


def test_submit_limit(tmp_path: Path) -> None:
    err = (
        "Unable to run job: job rejected: Only 2 jobs are allowed per user (current job count: 2)\n"
    )
    fake = FakeCommands(qsub=[res(stderr=err, rc=1)])
    with pytest.raises(SubmitLimitError):
        sched(fake).submit(job_script(tmp_path), job_name="n")


def test_transient_qsub_is_retried_and_an_accepted_job_is_adopted(tmp_path: Path) -> None:
    """A qsub whose answer was lost (timeout) but whose job exists is adopted by name."""
    down = (
        "error: commlib error: got select error (Connection refused)\n"
        'Unable to run job: unable to send message to qmaster using port 1 on host "vm": '
        "got send error\nExiting.\n"
    )
    fake = FakeCommands(
        qsub=[res(stderr=down, rc=1), CommandTimeout("qsub timed out after 60s")],
        # the first retry finds no job of that name; the second finds the accepted one
        qstat=[
            res(fx("qstat_mixed.xml")),
            res(fx("qstat_mixed.xml").replace("cap_held", "clearml_task_b")),
        ],
    )
    assert sched(fake).submit(job_script(tmp_path), job_name="clearml_task_b") == "17"
    assert [c[0] for c in fake.calls] == ["qsub", "qstat", "qsub", "qstat"]


def test_transient_gives_up(tmp_path: Path) -> None:
    down = 'error: unable to contact qmaster using port 6444 on host "vm"\n'
    fake = FakeCommands(qsub=[res(stderr=down, rc=1)] * 3, qstat=[res(fx("qstat_mixed.xml"))] * 2)
    with pytest.raises(TransientSchedulerError):
        sched(fake, submit_attempts=3).submit(job_script(tmp_path), job_name="n")
    assert fake.count("qsub") == 3


def test_status_one_qstat_then_qacct_once_per_departed_job() -> None:
    fake = FakeCommands(
        qstat=[res(fx("qstat_mixed.xml"))] * 2,
        qacct=[res(fx("qacct_h_rt.txt"))],
    )
    s = sched(fake)
    st = s.status(["15", "16", "17", "22", "21"])
    assert {j: v.state for j, v in st.items()} == {
        "15": JobState.RUNNING,
        "16": JobState.RUNNING,
        "17": JobState.PENDING,
        "22": JobState.RUNNING,
        "21": JobState.TIMEOUT,  # not in qstat: qacct
    }
    assert st["21"].source == "qacct"
    assert fake.count("qstat") == 1
    assert fake.calls[1] == ["qacct", "-o", "root", "-j", "21"]
    again = s.status(["21"])  # finished states are cached: no command at all
    assert again["21"].state is JobState.TIMEOUT
    assert len(fake.calls) == 2


def test_departed_job_without_record_keeps_its_last_state_then_is_unknown() -> None:
    empty = fx("qstat_mixed.xml").split("<queue_info>")[0] + "<queue_info/><job_info/></job_info>"
    not_found = res(stderr="error: job id 15 not found\n", rc=1)
    fake = FakeCommands(
        qstat=[res(fx("qstat_mixed.xml")), res(empty), res(empty)],
        qacct=[not_found, not_found],
    )
    s = sched(fake, accounting_grace_s=3600)
    assert s.status(["15"])["15"].state is JobState.RUNNING
    st = s.status(["15"])["15"]  # left qstat, no record yet: the last known state
    assert (st.state, st.source) == (JobState.RUNNING, "cache")
    s.accounting_grace_s = 0
    assert s.status(["15"])["15"].state is JobState.UNKNOWN  # never a success


def test_qmaster_down_keeps_the_last_known_state() -> None:
    fake = FakeCommands(
        qstat=[res(fx("qstat_mixed.xml")), CommandTimeout("qstat timed out after 60s")]
    )
    s = sched(fake)
    s.status(["15"])
    st = s.status(["15", "99"])
    assert (st["15"].state, st["15"].source) == (JobState.RUNNING, "cache")
    assert st["99"].state is JobState.UNKNOWN


def test_cancel_ignores_jobs_that_are_gone() -> None:
    fake = FakeCommands(
        qdel=[
            res(fx("qdel_mixed.stdout"), fx("qdel_mixed.stderr"), rc=1),
            res(stderr='denied: job "7" belongs to alice\n', rc=1),
        ]
    )
    s = sched(fake)
    s.cancel(["15", "16", "17", "18", "999"])
    assert fake.calls[0] == ["qdel", "15", "16", "17", "18", "999"]
    with pytest.raises(SchedulerError, match="belongs to alice"):
        s.cancel(["7"])


def test_output_path_follows_the_directives(tmp_path: Path) -> None:
    s = GridEngineScheduler(user="u")
    home = Path.home()
    assert s.output_path("5", job_name="n", script="#!/bin/bash\n", submit_dir=tmp_path) == (
        home / "n.o5"
    )
    script = "#$ -cwd\n#$ -o task-x-$JOB_ID.log\n"
    assert s.output_path("5", job_name="n", script=script, submit_dir=tmp_path) == (
        tmp_path / "task-x-5.log"
    )
    script = f"#$ -o {tmp_path}\n"  # a folder: NAME.oID in it
    assert s.output_path("5", job_name="n", script=script, submit_dir=tmp_path) == tmp_path / "n.o5"
    script = "#$ -wd /work -o host1:/logs/$JOB_NAME.out\n"
    assert s.output_path("5", job_name="n", script=script, submit_dir=tmp_path) == Path(
        "/logs/n.out"
    )


def test_clean_env_drops_the_jobs_variables_and_keeps_the_cells() -> None:
    env = {
        "JOB_ID": "3",
        "JOB_NAME": "x",
        "SGE_TASK_ID": "undefined",
        "SGE_JOB_SPOOL_DIR": "/s",
        "PE_HOSTFILE": "/h",
        "NSLOTS": "1",
        "SGE_ROOT": "/var/lib/gridengine",
        "SGE_CELL": "default",
        "PERL5LIB": "/p",
        "PATH": "/b",
    }
    assert GridEngineScheduler.clean_env(env) == {
        "SGE_ROOT": "/var/lib/gridengine",
        "SGE_CELL": "default",
        "PERL5LIB": "/p",
        "PATH": "/b",
    }
