"""The embedded server is as strict as clearml-server: what it accepts, ClearML accepts too, and
nothing stored can make a later read answer 5xx (field types, task type enum, name rules,
``edit_hyper_params`` status rules, artifacts and models)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Server = Any  # tests/conftest.py::EmbeddedServer


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


def _err(srv: Server, endpoint: str, body: dict[str, Any]) -> tuple[int, int]:
    reply = srv.request(endpoint, body)
    meta = reply.json()["meta"]
    assert reply.status_code == meta["result_code"]
    return int(meta["result_code"]), int(meta["result_subcode"])


def _task(srv: Server, **fields: Any) -> str:
    body = {"name": f"strict-{uuid.uuid4().hex[:8]}", "type": "training", **fields}
    return str(srv.send("tasks.create", body)["id"])


def test_tags_must_be_strings_everywhere(srv: Server) -> None:
    task = _task(srv)
    model = srv.send("models.create", {"name": "strict model"})["id"]
    bad = [
        ("tasks.create", {"name": "tagged", "type": "training", "tags": [1]}),
        ("tasks.edit", {"task": task, "tags": [1]}),
        ("tasks.update", {"task": task, "system_tags": [None]}),
        ("tasks.clone", {"task": task, "new_task_tags": [{"a": 1}]}),
        ("projects.create", {"name": "tag project", "tags": [1]}),
        ("queues.create", {"name": "tag queue", "tags": [True]}),
        ("models.create", {"name": "tag model", "tags": [1]}),
        ("models.edit", {"model": model, "system_tags": "archived"}),
    ]
    for endpoint, body in bad:
        assert _err(srv, endpoint, body) == (400, 12), endpoint
    # and the tag filters keep working
    tagged = _task(srv, tags=["good"])
    found = srv.send("tasks.get_all", {"tags": ["good", "-bad"], "only_fields": ["id"]})
    assert tagged in [t["id"] for t in found["tasks"]]
    assert srv.send("models.get_all", {"tags": ["-x"]})["models"] is not None


def test_task_type_enum_and_name_rules(srv: Server) -> None:
    assert _err(srv, "tasks.create", {"name": "no type"}) == (400, 12)
    assert _err(srv, "tasks.create", {"name": "bad type", "type": "trainin"}) == (400, 12)
    for name in ("", "ab", "  a  ", 5):
        assert _err(srv, "tasks.create", {"name": name, "type": "testing"}) == (400, 12), name
    task = srv.send("tasks.create", {"name": "  padded name  ", "type": "data_processing"})["id"]
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert (doc["name"], doc["type"]) == ("padded name", "data_processing")
    assert _err(srv, "tasks.edit", {"task": task, "type": "nonsense"}) == (400, 12)
    assert _err(srv, "tasks.update", {"task": task, "name": "x"}) == (400, 12)
    assert _err(srv, "tasks.clone", {"task": task, "new_task_name": "no"}) == (400, 12)
    assert _err(srv, "models.create", {"name": "m"}) == (400, 12)


def test_queue_name_rules(srv: Server) -> None:
    """clearml-server's queue ``name``: a StrippedStringField of at least 3 characters, on
    create and on update."""
    for name in ("", "  ", "q1", " ab  ", 7, None):
        assert _err(srv, "queues.create", {"name": name}) == (400, 12), name
    name = f"q{uuid.uuid4().hex[:2]}"  # exactly 3 characters
    queue = srv.send("queues.create", {"name": f"  {name} "})["id"]
    assert srv.send("queues.get_by_id", {"queue": queue})["queue"]["name"] == name
    assert _err(srv, "queues.update", {"queue": queue, "name": " qm "}) == (400, 12)
    assert srv.send("queues.get_by_id", {"queue": queue})["queue"]["name"] == name
    srv.send("queues.update", {"queue": queue, "name": f" {name}-renamed "})
    assert srv.send("queues.get_by_id", {"queue": queue})["queue"]["name"] == f"{name}-renamed"


def test_project_name_rules(srv: Server) -> None:
    """clearml-server's ``projects.create`` name: each ``/`` part stripped, empty parts
    dropped, every part (the basename and each parent it creates) at least 3 characters,
    at most 10 parts."""
    tag = uuid.uuid4().hex[:6]
    for name in ("p", " ab ", f"ab/{tag}", f"{tag}/x", f"{tag}/ ab /top", 3):
        assert _err(srv, "projects.create", {"name": name}) == (400, 12), name
    for name in ("", "/", " / / ", "//"):
        assert _err(srv, "projects.create", {"name": name}) == (400, 407), name
    deep = "/".join(f"lvl{i}" for i in range(11))
    assert _err(srv, "projects.create", {"name": deep}) == (400, 409)
    made = srv.send("projects.create", {"name": f" //top {tag} / mid//  leaf  /"})["id"]
    doc = srv.send("projects.get_by_id", {"project": made})["project"]
    assert (doc["name"], doc["basename"]) == (f"top {tag}/mid/leaf", "leaf")
    ten = srv.send("projects.create", {"name": "/".join(f"d{tag}{i}" for i in range(10))})["id"]
    assert srv.send("projects.get_by_id", {"project": ten})["project"]["basename"] == f"d{tag}9"
    three = srv.send("projects.create", {"name": f"a{tag[:2]}"})["id"]
    assert srv.send("projects.get_by_id", {"project": three})["project"]["name"] == f"a{tag[:2]}"
    # projects.update: the new basename >= 3, in the same parent
    for name in (f"top {tag}/mid/ab", f"top {tag}/mid/ x /"):
        assert _err(srv, "projects.update", {"project": made, "name": name}) == (400, 12), name
    assert _err(srv, "projects.update", {"project": made, "name": f"top {tag}/leaf"}) == (400, 408)
    srv.send("projects.update", {"project": made, "name": f"top {tag}//mid/ new leaf /"})
    doc = srv.send("projects.get_by_id", {"project": made})["project"]
    assert (doc["name"], doc["basename"]) == (f"top {tag}/mid/new leaf", "new leaf")


def test_edit_hyper_params_force_rules(srv: Server) -> None:
    task = _task(srv)
    args = [{"section": "Args", "name": "lr", "value": "0.1"}]
    props = [{"section": "Properties", "name": "slurm-job-id", "value": "7"}]
    assert srv.send("tasks.edit_hyper_params", {"task": task, "hyperparams": args})
    srv.send("tasks.started", {"task": task})
    # in progress: Args only with force, properties always (lower-cased)
    assert _err(srv, "tasks.edit_hyper_params", {"task": task, "hyperparams": args}) == (400, 110)
    srv.send("tasks.edit_hyper_params", {"task": task, "hyperparams": args, "force": True})
    srv.send("tasks.edit_hyper_params", {"task": task, "hyperparams": props})
    srv.send("tasks.stopped", {"task": task, "force": True})
    # stopped: even force does not allow Args (created, or queued/in_progress with force)
    body = {"task": task, "hyperparams": args, "force": True}
    assert _err(srv, "tasks.edit_hyper_params", body) == (400, 110)
    srv.send("tasks.edit_hyper_params", {"task": task, "hyperparams": props})
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert doc["hyperparams"]["properties"]["slurm-job-id"]["value"] == "7"
    for item in (
        {"section": "", "name": "a", "value": "1"},
        {"section": "Args", "name": "", "value": "1"},
        {"section": "Args", "name": "a", "value": 1},
        {"section": "Args", "name": "a"},
    ):
        assert _err(srv, "tasks.edit_hyper_params", {"task": task, "hyperparams": [item]}) == (
            400,
            12,
        ), item
    mode = {"task": task, "hyperparams": props, "replace_hyperparams": "some"}
    assert _err(srv, "tasks.edit_hyper_params", mode) == (400, 12)
    gone = srv.send(
        "tasks.delete_hyper_params",
        {"task": task, "hyperparams": [{"section": "properties", "name": "slurm-job-id"}]},
    )
    assert gone == {"deleted": 1}


def test_artifacts_status_rules_and_types(srv: Server) -> None:
    task = _task(srv)
    art = {"key": "data", "type": "json", "uri": "http://h/files/a.json", "mode": "output"}
    srv.send("tasks.add_or_update_artifacts", {"task": task, "artifacts": [art]})
    srv.send("tasks.started", {"task": task})
    body = {"task": task, "artifacts": [{**art, "hash": "abc"}]}
    assert _err(srv, "tasks.add_or_update_artifacts", body) == (400, 110)
    srv.send("tasks.add_or_update_artifacts", {**body, "force": True})
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert [(a["key"], a.get("hash")) for a in doc["execution"]["artifacts"]] == [("data", "abc")]
    for artifact in ({"key": "x"}, {"key": 1, "type": "t"}, {**art, "mode": "sideways"},
                     {**art, "content_size": "big"}, {**art, "type_data": []}):  # fmt: skip
        one = {"task": task, "artifacts": [artifact], "force": True}
        assert _err(srv, "tasks.add_or_update_artifacts", one) == (400, 12), artifact
    deleted = srv.send(
        "tasks.delete_artifacts", {"task": task, "artifacts": [{"key": "data"}], "force": True}
    )
    assert deleted == {"deleted": 1}


def test_models_delete_rules(srv: Server) -> None:
    creator = _task(srv)
    reply = srv.send("models.update_for_task", {"task": creator, "uri": "http://h/files/w.pt"})
    assert reply["created"] is True
    model = reply["id"]
    user = _task(srv)
    srv.send(
        "tasks.add_or_update_model",
        {"task": user, "name": "input", "model": model, "type": "input"},
    )
    assert _err(srv, "models.delete", {"model": model}) == (400, 205)  # used as input
    srv.send("models.set_ready", {"model": model, "publish_task": False})
    assert srv.send("models.get_by_id", {"model": model})["model"]["ready"] is True
    assert srv.send("models.delete", {"model": model, "force": True})["deleted"] is True
    used = srv.send("tasks.get_by_id", {"task": user})["task"]["models"]["input"]
    assert used[0]["model"] == "__DELETED__" + model
    assert srv.send("tasks.get_by_id", {"task": creator})["task"]["models"]["output"] == []
    assert _err(srv, "models.get_by_id", {"model": model}) == (400, 201)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = ["name", "type", "tags", "system_tags", "comment", "parent", "project", "script",
           "execution", "hyperparams", "configuration", "runtime", "container", "models",
           "output", "status_message", "uri", "framework", "labels", "metadata", "ready",
           "design", "artifacts"]  # fmt: skip
_WRITES = ["tasks.create", "tasks.edit", "tasks.update", "tasks.clone", "models.create",
           "models.edit", "queues.create", "projects.create", "tasks.add_or_update_artifacts",
           "tasks.edit_hyper_params", "models.add_or_update_metadata"]  # fmt: skip
_READS = [
    ("tasks.get_all", {"tags": ["a", "-b"], "system_tags": ["-archived"], "order_by": ["name"]}),
    ("tasks.get_all", {"only_fields": ["name", "hyperparams", "execution.artifacts"]}),
    ("models.get_all", {"tags": ["a"], "order_by": ["-name"]}),
    ("queues.get_all", {"tags": ["x"]}),
    ("projects.get_all", {"system_tags": ["-hidden"]}),
    ("tasks.get_hyper_params", None),
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=st.sampled_from(_WRITES),
    fields=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=5),
)
def test_no_stored_value_makes_a_read_fail(
    embedded_server_session: Server, endpoint: str, fields: dict[str, Any]
) -> None:
    """Whatever a client writes is refused with a 4xx or stored; then every read still
    answers 200."""
    srv = embedded_server_session
    task = _task(srv)
    model = srv.send("models.create", {"name": f"prop-{uuid.uuid4().hex[:6]}"})["id"]
    body = {"task": task, "model": model, "force": True, **fields}
    write = srv.request(endpoint, body)
    assert write.status_code < 500, (endpoint, body, write.text)
    for read, read_body in _READS:
        reply = srv.request(read, read_body if read_body is not None else {"tasks": [task]})
        assert reply.status_code == 200, (endpoint, body, read, reply.text)
    doc = srv.request("tasks.get_by_id", {"task": task})
    assert doc.status_code == 200, (endpoint, body, doc.text)


def test_docs_list_every_endpoint() -> None:
    """docs/server.md's endpoint table names every routed endpoint, in its service's row."""
    from pathlib import Path

    from hpcagent.server.app import all_routes

    doc = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    table = doc[doc.index("## Endpoints") :].split("\n\n## ", 1)[0]
    rows = {
        line.split(" | ")[0][2:].strip(): line
        for line in table.splitlines()
        if line.startswith("| ") and " | " in line
    }
    missing = [
        name
        for name in all_routes()
        if f"`{name.split('.', 1)[1]}`" not in rows.get(name.split(".", 1)[0], "")
    ]
    assert missing == []
