"""The web UI's job box reads the job record under the scheduler-neutral keys, the keys of
tasks recorded by earlier versions, and every scheduler's status message."""

from __future__ import annotations

from typing import Any

from hpcagent.server.ui.present import job_output, slurm_info


def _task(props: dict[str, str], runtime: dict[str, str], status: str, message: str) -> Any:
    section = {k: {"section": "properties", "name": k, "value": v} for k, v in props.items()}
    return {
        "hyperparams": {"properties": section},
        "runtime": runtime,
        "status": status,
        "status_message": message,
    }


def test_job_record_under_the_new_keys() -> None:
    task = _task({"job-id": "7", "job-nodes": "vm"}, {}, "in_progress", "")
    assert slurm_info(task) == {"job": "7", "state": "RUNNING", "reason": "", "nodes": "vm"}
    task = _task({}, {"job_id": "8", "job_nodes": "n1"}, "completed", "")
    assert slurm_info(task) == {"job": "8", "state": "COMPLETED", "reason": "", "nodes": "n1"}


def test_job_record_of_earlier_versions() -> None:
    task = _task({"slurm-job-id": "5", "slurm-nodes": "c1"}, {}, "failed", "")
    assert slurm_info(task) == {"job": "5", "state": "FAILED", "reason": "", "nodes": "c1"}
    task = _task({}, {"slurm_job_id": "6", "slurm_nodes": "c2"}, "stopped", "")
    assert slurm_info(task)["job"] == "6"


def test_pending_message_of_each_scheduler() -> None:
    for label in ("slurm job", "gridengine job", "local job"):
        task = _task({"job-id": "9"}, {}, "queued", f"{label} 9: PENDING (Priority)")
        assert slurm_info(task) == {
            "job": "9",
            "state": "PENDING",
            "reason": "Priority",
            "nodes": "",
        }


def test_job_end_recorded_by_the_submitter() -> None:
    """Once the job ended the submitter's ``job-end`` is its state (with the exit code)."""
    task = _task({"job-id": "3", "job-end": "FAILED (exit code 2)"}, {}, "failed", "boom")
    assert slurm_info(task) == {"job": "3", "state": "FAILED", "reason": "exit code 2", "nodes": ""}
    task = _task({"job-id": "3", "job-end": "TIMEOUT"}, {}, "failed", "")
    assert slurm_info(task)["state"] == "TIMEOUT"
    props = {
        "job-id": "4",
        "job-end": "COMPLETED",
        "job-output": "/o/4.log",
        "job-output-tail": "x",
    }
    assert job_output(_task(props, {}, "completed", "")) == {
        "end": "COMPLETED",
        "path": "/o/4.log",
        "tail": "x",
    }
    # a re-run (reset, or a clone) carries the earlier job's end until its own job ended
    task = _task({"job-id": "5", "job-end": "COMPLETED"}, {}, "queued", "slurm job 5: PENDING")
    assert slurm_info(task)["state"] == "PENDING"
    task = _task({"job-id": "5", "job-end": "COMPLETED", "job-nodes": "n"}, {}, "in_progress", "")
    assert slurm_info(task)["state"] == "RUNNING"
    assert job_output(task) == {"end": "", "path": "", "tail": ""}
