"""The web UI's job box reads the job record under the scheduler-neutral keys, the keys of
tasks recorded by earlier versions, and every scheduler's status message."""

from __future__ import annotations

from typing import Any

from hpcagent.server.ui.present import slurm_info


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
