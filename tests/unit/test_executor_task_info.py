"""Pure rules of the executor: task parsing, worker id, rank, should_run, status."""

from __future__ import annotations

import socket

import pytest

from hpcagent.executor.task_info import (
    ScriptInfo,
    TaskInfo,
    entry_argv,
    final_status,
    job_id,
    rank,
    should_run,
    worker_id,
)


def _task(**over: object) -> TaskInfo:
    base: dict[str, object] = {
        "id": "a" * 32,
        "name": "t",
        "status": "queued",
        "script": {
            "repository": "https://example.org/r.git",
            "entry_point": "train.py",
            "working_dir": "src",
            "requirements": {"pip": "numpy\n# c\n\nrequests==2\n"},
        },
        "hyperparams": {
            "Args": {
                "lr": {"section": "Args", "name": "lr", "value": "0.1"},
                "verbose": {"section": "Args", "name": "verbose", "value": "true"},
            },
            "Environment": {"FOO": {"name": "FOO", "value": "bar"}},
        },
        "container": {"image": "img", "setup_shell_script": "echo hi"},
    }
    base.update(over)
    return TaskInfo.from_task(base)


def test_from_task_reads_script_args_env_container() -> None:
    t = _task()
    assert t.script.repository == "https://example.org/r.git"
    assert t.script.working_dir == "src"
    assert t.args == (("lr", "0.1"), ("verbose", "true"))
    assert t.environment == (("FOO", "bar"),)
    assert t.container_image == "img"
    assert t.setup_shell_script == "echo hi"
    assert t.script.requirements_pip == "numpy\n# c\n\nrequests==2\n"


def test_entry_point_with_dir_prefix_when_no_working_dir() -> None:
    t = TaskInfo.from_task({"id": "x", "script": {"entry_point": "sub:run.py", "working_dir": ""}})
    assert (t.script.working_dir, t.script.entry_point) == ("sub", "run.py")


def test_entry_argv_variants() -> None:
    assert entry_argv("/v/bin/python", ScriptInfo(entry_point="train.py --a 1")) == [
        "/v/bin/python",
        "-u",
        "train.py",
        "--a",
        "1",
    ]
    assert entry_argv("/p", ScriptInfo(entry_point="-m pkg.mod x"))[:4] == [
        "/p",
        "-u",
        "-m",
        "pkg.mod",
    ]
    assert entry_argv("/p", ScriptInfo(entry_point="run.sh", binary="/bin/bash")) == [
        "/bin/bash",
        "run.sh",
    ]
    with pytest.raises(ValueError, match="entry point"):
        entry_argv("/p", ScriptInfo(entry_point=""))


def test_worker_id_and_rank() -> None:
    host = socket.gethostname()
    assert worker_id({"CLEARML_WORKER_ID": "w1", "SLURM_JOB_ID": "5"}) == "w1"
    assert worker_id({}, configured="cfg") == "cfg"
    assert worker_id({"SLURM_JOB_ID": "77"}) == f"{host}:slurm-77"
    assert worker_id({}).startswith(f"{host}:")
    assert rank({}) == 0
    assert rank({"SLURM_PROCID": "3", "RANK": "0"}) == 3
    assert rank({"RANK": "2"}) == 2


@pytest.mark.parametrize(
    ("status", "message", "runtime", "job", "expected"),
    [
        ("queued", "", {}, "", True),
        ("in_progress", "", {}, "5", True),
        ("in_progress", "", {"slurm_job_id": "5"}, "5", True),
        ("in_progress", "", {"slurm_job_id": "4"}, "5", False),
        ("in_progress", "", {"slurm_job_id": "4"}, "", False),
        ("in_progress", "stopping", {}, "", False),
        # asked for by hand, as clearml-agent execute --id: created/stopped/failed/completed run
        ("created", "", {}, "", True),
        ("stopped", "", {}, "", True),
        ("failed", "", {"slurm_job_id": "4"}, "", True),
        ("completed", "", {}, "", True),
        ("stopped", "", {"slurm_job_id": "4"}, "9", True),  # by hand inside another allocation
        # launched for this task, which was reset/aborted/ended while the job waited
        ("created", "", {"slurm_job_id": "5"}, "5", False),
        ("stopped", "", {"slurm_job_id": "5"}, "5", False),
        ("published", "", {}, "", False),
        ("closed", "", {}, "", False),
        # queued and held by a job the submitter reports pending: only that job runs it
        ("queued", "slurm job 4: PENDING (Priority)", {"slurm_job_id": "4"}, "", False),
        ("queued", "slurm job 4: PENDING", {"slurm_job_id": "4"}, "4", True),
        ("queued", "", {"slurm_job_id": "4"}, "", True),  # re-enqueued after job 4
    ],
)
def test_should_run(
    status: str, message: str, runtime: dict[str, str], job: str, expected: bool
) -> None:
    t = _task(status=status, status_message=message, runtime=runtime)
    assert should_run(t, job, force=False)[0] is expected
    assert should_run(t, job, force=True)[0] is True


def test_final_status_mapping() -> None:
    assert final_status(0).action == "completed"
    failed = final_status(3, tail="boom")
    assert failed.action == "failed"
    assert "exit code 3" in failed.reason
    assert "boom" in failed.message
    assert final_status(-2).action == "stopped"
    assert final_status(-15, aborted=True).action == "stopped"
    sig = final_status(143, signal_name="SIGTERM")
    assert (sig.action, sig.reason) == ("stopped", "terminated by signal SIGTERM")


def test_job_id_slurm_then_local_scheduler() -> None:
    assert job_id({"SLURM_JOB_ID": "7", "HPCAGENT_JOB_ID": "3"}) == "7"
    assert job_id({"HPCAGENT_JOB_ID": "3"}) == "3"
    assert job_id({}) == ""
