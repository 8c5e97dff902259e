"""``*.get_all`` filters: ClearML's ``_all_``/``_any_`` pattern filters, and the rule that a
filter the server does not apply is a 400 naming it, never silently ignored (real server)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

Server = Any  # tests/conftest.py::EmbeddedServer


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


def _project(srv: Server) -> str:
    project: str = srv.send("projects.create", {"name": f"p-{uuid.uuid4().hex[:6]}"})["id"]
    return project


def _task(srv: Server, project: str, **fields: Any) -> str:
    body = {"name": f"t-{uuid.uuid4().hex[:8]}", "type": "training", "project": project, **fields}
    task_id: str = srv.send("tasks.create", body)["id"]
    return task_id


def _ids(srv: Server, project: str, **body: Any) -> set[str]:
    reply = srv.send("tasks.get_all", {"project": [project], "only_fields": ["id"], **body})
    return {t["id"] for t in reply["tasks"]}


def _exact(value: str) -> str:
    """The pattern the SDK's step cache sends (clearml.utilities.misc_utils.exact_match_regex)."""
    return "^" + re.escape(value) + "$"


def test_all_pattern_finds_the_step_cache_hash_only(srv: Server) -> None:
    project = _project(srv)
    right = _task(srv, project, runtime={"_pipeline_hash": "a1b2c3"})
    other_hash = _task(srv, project, runtime={"_pipeline_hash": "a1b2c3d4"})
    no_hash = _task(srv, project, runtime={})
    archived = _task(srv, project, runtime={"_pipeline_hash": "a1b2c3"}, system_tags=["archived"])
    query = {"fields": ["runtime._pipeline_hash"], "pattern": _exact("a1b2c3")}
    assert _ids(srv, project, _all_=query) == {right, archived}
    assert _ids(srv, project, _all_=query, system_tags=["-archived"]) == {right}
    unanchored = {"fields": ["runtime._pipeline_hash"], "pattern": "B2C3"}  # case-insensitive
    assert _ids(srv, project, _all_=unanchored) == {right, other_hash, archived}
    assert no_hash not in _ids(srv, project, _any_=unanchored)
    assert (
        _ids(srv, project, _all_={"fields": ["runtime._pipeline_hash"], "pattern": "zz"}) == set()
    )


def test_all_needs_every_field_any_needs_one(srv: Server) -> None:
    project = _project(srv)
    both = _task(srv, project, name="red fish", comment="red")
    name_only = _task(srv, project, name="red cat", comment="blue")
    neither = _task(srv, project, name="green", comment="green")
    red = {"fields": ["name", "comment"], "pattern": "red"}
    assert _ids(srv, project, _all_=red) == {both}
    assert _ids(srv, project, _and_=red) == {both}
    assert _ids(srv, project, _any_=red) == {both, name_only}
    assert _ids(srv, project, _or_=red) == {both, name_only}
    assert neither not in _ids(srv, project, _any_=red)
    # no fields: no condition, as in clearml-server
    assert _ids(srv, project, _all_={"fields": [], "pattern": "x"}) == {both, name_only, neither}


def test_pattern_matches_list_elements_not_numbers(srv: Server) -> None:
    project = _project(srv)
    tagged = _task(srv, project, tags=["alpha", "beta-1"])
    numbered = _task(srv, project, runtime={"n": 1})
    assert _ids(srv, project, _any_={"fields": ["tags"], "pattern": "^beta"}) == {tagged}
    assert _ids(srv, project, _any_={"fields": ["runtime.n"], "pattern": "1"}) == set()
    assert numbered in _ids(srv, project)


def _fault(srv: Server, endpoint: str, body: dict[str, Any]) -> tuple[int, int, str]:
    reply = srv.request(endpoint, body)
    meta = reply.json()["meta"]
    return reply.status_code, meta["result_subcode"], meta["result_msg"]


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [
        ("tasks.get_all", "search_text"),
        ("tasks.get_all", "status_changed"),
        ("tasks.get_all_ex", "include_subprojects"),
        ("projects.get_all", "stats_for_state"),
        ("projects.get_all_ex", "children_type"),
        ("queues.get_all", "max_task_entries"),
        ("models.get_all", "last_update"),
        ("workers.get_all", "tags"),
    ],
)
def test_unsupported_filter_is_a_400_naming_it(srv: Server, endpoint: str, field: str) -> None:
    code, subcode, message = _fault(srv, endpoint, {field: ["x"]})
    assert (code, subcode) == (400, 12)
    assert f"'{field}'" in message


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"fields": ["name"], "datetime": ">2020-01-01"}, "'datetime'"),
        ({"fields": ["name"]}, "_all_.pattern"),
        ({"fields": ["name"], "pattern": "("}, "_all_.pattern"),
        ({"fields": "name", "pattern": 3}, "_all_.pattern"),
        ("name", "_all_"),
    ],
)
def test_malformed_all_is_a_400(srv: Server, query: Any, named: str) -> None:
    code, subcode, message = _fault(srv, "tasks.get_all", {"_all_": query})
    assert (code, subcode) == (400, 12)
    assert named in message


def test_sdk_method_key_and_known_filters_pass(srv: Server) -> None:
    project = _project(srv)
    task = _task(srv, project)
    assert _ids(srv, project, method="get", page=0, page_size=5, order_by=["-name"]) == {task}
    for endpoint in ("projects.get_all", "queues.get_all", "models.get_all", "workers.get_all"):
        assert srv.request(endpoint, {"method": "get"}).status_code == 200
    tagged = srv.send("projects.get_all", {"id": [project], "tags": ["-nope"]})["projects"]
    assert [p["id"] for p in tagged] == [project]


def test_projects_shallow_search_keeps_the_top_level(srv: Server) -> None:
    top = f"top-{uuid.uuid4().hex[:6]}"
    parent = srv.send("projects.create", {"name": top})["id"]
    child = srv.send("projects.create", {"name": f"{top}/child"})["id"]

    def found(shallow: bool) -> set[str]:
        body = {"name": f"^{top}", "shallow_search": shallow}
        return {p["id"] for p in srv.send("projects.get_all", body)["projects"]}

    assert found(False) == {parent, child}
    assert found(True) == {parent}


def test_projects_update_sets_system_tags_and_renames_children(srv: Server) -> None:
    name = f"pipes-{uuid.uuid4().hex[:6]}"
    parent = srv.send("projects.create", {"name": name})["id"]
    child = srv.send("projects.create", {"name": f"{name}/.pipelines/run ä"})["id"]
    reply = srv.send("projects.update", {"project": child, "system_tags": ["pipeline", "hidden"]})
    assert reply["updated"] == 1
    got = srv.send("projects.get_by_id", {"project": child})["project"]
    assert got["system_tags"] == ["pipeline", "hidden"]
    # hidden now: found only with search_hidden, as ClearML's UI lists pipelines
    plain = srv.send("projects.get_all", {"id": None, "name": f"^{name}/"})["projects"]
    assert child not in {p["id"] for p in plain}
    hidden = srv.send("projects.get_all", {"name": f"^{name}/", "search_hidden": True})
    assert child in {p["id"] for p in hidden["projects"]}
    srv.send("projects.update", {"project": parent, "name": f"{name}-new"})
    renamed = srv.send("projects.get_by_id", {"project": child})["project"]
    assert renamed["name"] == f"{name}-new/.pipelines/run ä"
    assert _fault(srv, "projects.update", {"project": parent, "hidden": True})[:2] == (400, 12)
    # another parent: clearml-server's CannotUpdateProjectLocation (projects.move does that)
    assert _fault(srv, "projects.update", {"project": child, "name": f"{name}-new"})[:2] == (
        400,
        408,
    )
    srv.send("projects.create", {"name": f"{name}-other"})
    assert _fault(srv, "projects.update", {"project": parent, "name": f"{name}-other"})[:2] == (
        400,
        12,
    )
    assert _fault(srv, "projects.update", {"project": "0" * 32})[:2] == (400, 401)


def test_output_dest_lands_in_output_destination(srv: Server) -> None:
    project = _project(srv)
    task = _task(srv, project, output_dest="file:///shared/out")
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert doc["output"]["destination"] == "file:///shared/out"
    srv.send("tasks.edit", {"task": task, "output_dest": "http://files.example/x y"})
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert doc["output"]["destination"] == "http://files.example/x y"
    code, subcode, message = _fault(srv, "tasks.edit", {"task": task, "output_uri": "x"})
    assert (code, subcode) == (400, 12)
    assert "'output_uri'" in message
    code, subcode, message = _fault(srv, "tasks.create", {"name": "n", "input": {}})
    assert (code, subcode) == (400, 12)
    assert "'input'" in message


def test_list_operators_as_the_sdk_and_web_ui_send_them(srv: Server) -> None:
    """ClearML's list-filter operators: the SDK's ``Dataset.get`` and pipeline versioning send
    ``system_tags=["__$all", tag, "__$not", "archived"]`` (every listed tag, not archived); the
    web UI's recent-tasks list sends ``type=["__$not", "annotation", ...]``. They were read as
    tag and type names (an archived dataset matched; no task matched the type filter)."""
    project = _project(srv)
    dataset = _task(srv, project, type="data_processing", system_tags=["dataset"])
    archived = _task(srv, project, type="data_processing", system_tags=["dataset", "archived"])
    other = _task(srv, project, system_tags=["pipeline"])
    annotation = _task(srv, project, type="qc", system_tags=["dataset", "pipeline"])
    assert _ids(srv, project, system_tags=["__$all", "dataset", "__$not", "archived"]) == {
        dataset, annotation}  # fmt: skip
    assert _ids(srv, project, system_tags=["__$all", "dataset", "pipeline"]) == {annotation}
    assert _ids(srv, project, system_tags=["dataset", "pipeline"]) == {
        dataset, archived, other, annotation}  # fmt: skip
    assert _ids(srv, project, system_tags=["-archived", "-pipeline"]) == {dataset}
    assert _ids(srv, project, type=["__$not", "qc", "__$not", "dataset_import"]) == {
        dataset, archived, other}  # fmt: skip
    assert _ids(srv, project, type=["qc", "training"]) == {annotation, other}
    srv.send("tasks.enqueue", {"task": other, "queue_name": f"q-{uuid.uuid4().hex[:6]}"})
    assert _ids(srv, project, status=["__$not", "created"]) == {other}
    assert _ids(srv, project, status=["created"], order_by=["-last_update"]) == {
        dataset, archived, annotation}  # fmt: skip
