"""Pure parts of the web UI: where a form may send the browser back to, the task table's view
in the URL, and how a task's Slurm job is read from what the submitter and executor wrote."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from hpcagent.server.ui.core import safe_next
from hpcagent.server.ui.present import slurm_info
from hpcagent.server.ui.table import TableView


@pytest.mark.parametrize(
    "target",
    ["//evil.example/x", "/\t/evil.example", "/\\evil", "http://evil.example/", "javascript:x",
     "tasks", "", "/\n/evil", "/tasks\x00"],
)  # fmt: skip
def test_safe_next_refuses_other_sites(target: str) -> None:
    assert safe_next(target) == "/tasks"


def test_safe_next_keeps_paths_of_this_site() -> None:
    assert safe_next("/tasks?project=a&sort=-name") == "/tasks?project=a&sort=-name"
    assert safe_next("/tasks/0123/edit") == "/tasks/0123/edit"


def test_table_view_round_trips_through_the_url() -> None:
    query = "project=p1&status=queued&status=failed&queue=q&tag=t&name=a b&sort=name&page=3"
    view = TableView.from_query(QueryParams(query + "&size=100&col=loss/train&archived=1"))
    assert view.status == ("queued", "failed")
    assert view.size == 100
    assert view.cols == ("loss/train",)
    assert TableView.from_query(QueryParams(view.url(page=3).split("?", 1)[1])) == view
    body = view.body()
    assert body["name"] == "a\\ b"  # matched literally
    assert body["system_tags"] == ["archived"]
    assert body["execution.queue"] == ["q"]
    bad = TableView.from_query(QueryParams("sort=doc&size=7&page=-1&status=nope"))
    assert (bad.sort, bad.size, bad.page, bad.status) == ("-created", 50, 0, ())


def test_slurm_info_from_the_submitter_and_the_executor() -> None:
    pending = {"status": "queued", "status_message": "slurm job 12: PENDING (Priority)"}
    assert slurm_info(pending) == {"job": "12", "state": "PENDING", "reason": "Priority",
                                   "nodes": ""}  # fmt: skip
    running = {
        "status": "in_progress",
        "hyperparams": {"properties": {"slurm-job-id": {"value": "13"}}},
        "runtime": {"slurm_nodes": "n[1-2]"},
    }
    assert slurm_info(running) == {"job": "13", "state": "RUNNING", "reason": "", "nodes": "n[1-2]"}
    assert slurm_info({"status": "created"})["job"] == ""
