"""The step cache of the official SDK's pipelines (``cache_executed_step=True``) against the
embedded server: ``ClearmlJob._get_cached_task`` sends ``tasks.get_all`` with an ``_all_``
filter on the step's hash, and must get the one completed task with that hash, never an
unrelated completed task (issue 21: the filter was ignored and any task was "reused")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import run_sdk

pytestmark = pytest.mark.e2e

CACHE_SCRIPT = """
import json
from clearml import Task
from clearml.automation.job import ClearmlJob

def completed(name, step_hash=None):
    task = Task.create(project_name="pipeline cache ä", task_name=name)
    if step_hash is not None:
        ClearmlJob._set_task_cache_hash(task, step_hash)
    task.mark_started(force=True)
    task.mark_completed(force=True)
    return task.id

unrelated = completed("unrelated 'step'")
right = completed("right step", "0f1e2d3c")
longer = completed("longer hash", "0f1e2d3c4b")
archived = completed("archived step", "aaaa1111")
Task.get_task(task_id=archived).set_archived(True)
found = ClearmlJob._get_cached_task("0f1e2d3c")
none = ClearmlJob._get_cached_task("ffff0000")
only_archived = ClearmlJob._get_cached_task("aaaa1111")
print("RESULT " + json.dumps({
    "right": right, "found": found.id if found else None,
    "none": none.id if none else None,
    "only_archived": only_archived.id if only_archived else None,
    "unrelated": unrelated, "longer": longer,
}))
"""


def test_step_cache_reuses_the_task_with_the_same_hash_only(
    embedded_server: Any, tmp_path: Path
) -> None:
    result = run_sdk(embedded_server, tmp_path, CACHE_SCRIPT)
    assert result["found"] == result["right"]
    assert result["none"] is None  # no task has that hash: the step runs
    assert result["only_archived"] is None  # archived tasks are never reused
    stored = embedded_server.send("tasks.get_by_id", {"task": result["right"]})["task"]
    assert stored["status"] == "completed"
    assert stored["runtime"]["pipeline_job_hash"] == "0f1e2d3c"
