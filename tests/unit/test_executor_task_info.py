"""Pure rules of the executor: task parsing, worker id, rank, should_run, status."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from hpcagent.executor.task_info import (
    ScriptInfo,
    TaskInfo,
    entry_argv,
    final_status,
    rank,
    runtime_record,
    should_run,
    worker_id,
)
from hpcagent.scheduler.base import JobIdentity
from hpcagent.scheduler.registry import job_identity


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
    slurm = job_identity({"SLURM_JOB_ID": "77"})
    assert worker_id({"CLEARML_WORKER_ID": "w1"}, job=slurm) == "w1"
    assert worker_id({}, configured="cfg", job=slurm) == "cfg"
    assert worker_id({}, job=slurm) == f"{host}:slurm-77"
    assert worker_id({}, job=job_identity(GE_ENV)) == f"{host}:gridengine-31"
    assert worker_id({}, job=job_identity({"HPCAGENT_JOB_ID": "4"})) == f"{host}:local-4"
    assert worker_id({}).startswith(f"{host}:")
    assert rank({}) == 0
    env = {"SLURM_JOB_ID": "5", "SLURM_PROCID": "3", "RANK": "0"}
    assert rank(env, job_identity(env)) == 3
    assert rank({"RANK": "2"}) == 2
    env = {**GE_ENV, "RANK": "1"}  # Grid Engine gives no rank: the launcher's RANK applies
    assert rank(env, job_identity(env)) == 1


GE_ENV = {"JOB_ID": "31", "SGE_JOB_SPOOL_DIR": "/var/spool/x/31.1", "HOSTNAME": "n1"}


def test_job_identity_of_each_backend(tmp_path: Path) -> None:
    """The executor's job identity comes from whichever registered backend's variables are
    set; a local job inside a Slurm allocation is the local job (the innermost)."""
    assert job_identity({}) is None
    assert job_identity({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]"}) == JobIdentity(
        "slurm", "9", "n[1-2]", None
    )
    assert job_identity(GE_ENV) == JobIdentity("gridengine", "31", "n1", None)
    assert job_identity({"JOB_ID": "31"}) is None  # JOB_ID alone is not Grid Engine's
    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text("n1 2 all.q@n1 UNDEFINED\nn2 2 all.q@n2 UNDEFINED\n")
    env = {**GE_ENV, "PE_HOSTFILE": str(hostfile)}
    assert job_identity(env) == JobIdentity("gridengine", "31", "n1,n2", None)
    inner = {"SLURM_JOB_ID": "9", "HPCAGENT_JOB_ID": "2"}
    assert job_identity(inner) == JobIdentity("local", "2", "", None)


@pytest.mark.parametrize(
    ("status", "message", "recorded", "env", "expected"),
    [
        ("queued", "", {}, {}, True),
        ("in_progress", "", {}, {"SLURM_JOB_ID": "5"}, True),
        ("in_progress", "", {"runtime": {"job_id": "5"}}, {"SLURM_JOB_ID": "5"}, True),
        ("in_progress", "", {"runtime": {"slurm_job_id": "5"}}, {"SLURM_JOB_ID": "5"}, True),
        ("in_progress", "", {"runtime": {"slurm_job_id": "4"}}, {"SLURM_JOB_ID": "5"}, False),
        ("in_progress", "", {"runtime": {"job_id": "4"}}, {}, False),
        ("in_progress", "", {"props": {"job-id": "31"}}, GE_ENV, True),
        ("in_progress", "", {"props": {"job-id": "30"}}, GE_ENV, False),
        ("in_progress", "", {"props": {"slurm-job-id": "5"}}, {"SLURM_JOB_ID": "5"}, True),
        ("in_progress", "", {"props": {"job-id": "2"}}, {"HPCAGENT_JOB_ID": "2"}, True),
        ("in_progress", "", {"props": {"job-id": "3"}}, {"HPCAGENT_JOB_ID": "2"}, False),
        ("in_progress", "stopping", {}, {}, False),
        # asked for by hand, as clearml-agent execute --id: created/stopped/failed/completed run
        ("created", "", {}, {}, True),
        ("stopped", "", {}, {}, True),
        ("failed", "", {"runtime": {"job_id": "4"}}, {}, True),
        ("completed", "", {}, {}, True),
        # by hand inside another allocation
        ("stopped", "", {"runtime": {"slurm_job_id": "4"}}, {"SLURM_JOB_ID": "9"}, True),
        # launched for this task, which was reset/aborted/ended while the job waited
        ("created", "", {"props": {"job-id": "5"}}, {"SLURM_JOB_ID": "5"}, False),
        ("stopped", "", {"runtime": {"slurm_job_id": "5"}}, {"SLURM_JOB_ID": "5"}, False),
        ("stopped", "", {"props": {"job-id": "31"}}, GE_ENV, False),
        ("published", "", {}, {}, False),
        ("closed", "", {}, {}, False),
        # queued and held by a job the submitter reports pending: only that job runs it
        ("queued", "slurm job 4: PENDING (Priority)", {"props": {"job-id": "4"}}, {}, False),
        ("queued", "slurm job 4: PENDING", {"props": {"job-id": "4"}}, {"SLURM_JOB_ID": "4"}, True),
        ("queued", "", {"props": {"slurm-job-id": "4"}}, {}, True),  # re-enqueued after job 4
    ],
)
def test_should_run(
    status: str,
    message: str,
    recorded: dict[str, dict[str, str]],
    env: dict[str, str],
    expected: bool,
) -> None:
    """The recorded job (property ``job-id``, old ``slurm-job-id``; runtime ``job_id``, old
    ``slurm_job_id``) against the job this process runs in, for every backend."""
    t = _task(status=status, status_message=message, runtime=recorded.get("runtime", {}))
    t = dataclasses.replace(t, properties=recorded.get("props", {}))
    job = job_identity(env)
    assert should_run(t, job, force=False)[0] is expected
    assert should_run(t, job, force=True)[0] is True


def test_runtime_record_names_the_job_generically() -> None:
    job = job_identity({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]"})
    assert runtime_record(job, "w", "n1") == {
        "_exec_agent_hostname": "n1",
        "hpcagent_worker": "w",
        "job_scheduler": "slurm",
        "job_id": "9",
        "job_nodes": "n[1-2]",
    }
    assert runtime_record(None, "w", "h") == {"_exec_agent_hostname": "h", "hpcagent_worker": "w"}


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
