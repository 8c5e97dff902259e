"""events.* endpoints: add_batch (json-lines and JSON list) and the read-back endpoints."""

from __future__ import annotations

import json
from typing import Any

import pytest

Server = Any  # tests/conftest.py::EmbeddedServer


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


@pytest.fixture
def task(srv: Server) -> str:
    task_id: str = srv.send("tasks.create", {"name": "events", "type": "training"})["id"]
    return task_id


def _lines(events: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(e).encode() for e in events)


def _post_lines(srv: Server, events: list[dict[str, Any]]) -> Any:
    return srv.request(
        "events.add_batch", data=_lines(events), headers={"Content-Type": "application/json-lines"}
    )


def test_add_batch_json_lines_and_log_paging(srv: Server, task: str) -> None:
    events = [
        {
            "type": "log",
            "level": "DEBUG",
            "task": task,
            "worker": "w",
            "method": "get",
            "msg": f"line {i}",
            "timestamp": 1_000 + i,
        }
        for i in range(25)
    ]
    reply = _post_lines(srv, events)
    assert reply.status_code == 200
    assert reply.json()["data"] == {"added": 25, "errors": 0, "errors_info": {}}
    # newest first by default
    page = srv.send("events.get_task_log", {"task": task, "batch_size": 10})
    assert page["total"] == 25
    assert page["returned"] == 10
    assert [e["msg"] for e in page["events"]] == [f"line {i}" for i in range(24, 14, -1)]
    assert "method" not in page["events"][0]
    older = srv.send(
        "events.get_task_log",
        {"task": task, "batch_size": 10, "from_timestamp": page["events"][-1]["timestamp"]},
    )
    assert older["events"][0]["msg"] == "line 14"
    forward = srv.send(
        "events.get_task_log", {"task": task, "navigate_earlier": False, "batch_size": 100}
    )
    assert [e["msg"] for e in forward["events"]] == [f"line {i}" for i in range(25)]
    asc = srv.send("events.get_task_log", {"task": task, "batch_size": 3, "order": "asc"})
    assert [e["msg"] for e in asc["events"]] == ["line 22", "line 23", "line 24"]


def test_add_batch_json_list_scalars_and_histogram(srv: Server, task: str) -> None:
    events = [
        {
            "type": "training_stats_scalar",
            "task": task,
            "metric": "loss",
            "variant": v,
            "iter": i,
            "value": float(10 - i) if v == "train" else float(i),
            "timestamp": 5_000 + i,
            "model_event": False,
        }
        for i in range(5)
        for v in ("train", "val")
    ]
    reply = srv.request("events.add_batch", events)
    assert reply.json()["data"]["added"] == 10
    hist = srv.send("events.scalar_metrics_iter_histogram", {"task": task})
    assert hist["loss"]["train"]["x"] == [0, 1, 2, 3, 4]
    assert hist["loss"]["train"]["y"] == [10.0, 9.0, 8.0, 7.0, 6.0]
    assert hist["loss"]["val"]["name"] == "val"
    sampled = srv.send("events.scalar_metrics_iter_histogram", {"task": task, "samples": 2})
    assert len(sampled["loss"]["val"]["x"]) == 2
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert doc["last_iteration"] == 4
    values = {e["variant"]: e for m in doc["last_metrics"].values() for e in m.values()}
    assert values["train"]["value"] == 6.0
    assert values["train"]["max_value"] == 10.0
    assert values["val"]["min_value"] == 0.0


def test_monitor_scalars_do_not_move_last_iteration(srv: Server, task: str) -> None:
    """As ClearML's server (``ignore_iteration.metrics``): machine monitors report elapsed
    seconds as iterations, and the SDK inside a remote task starts at last_iteration + 1."""
    events = [
        {"type": "training_stats_scalar", "task": task, "metric": metric, "variant": "cpu",
         "iter": 60, "value": 1.0, "timestamp": 9_000}
        for metric in (":monitor:machine", ":monitor:gpu")
    ]  # fmt: skip
    events.append(
        {"type": "training_stats_scalar", "task": task, "metric": "loss", "variant": "train",
         "iter": 3, "value": 1.0, "timestamp": 9_001}
    )  # fmt: skip
    assert srv.request("events.add_batch", events).json()["data"]["added"] == 3
    doc = srv.send("tasks.get_by_id", {"task": task})["task"]
    assert doc["last_iteration"] == 3
    hist = srv.send("events.scalar_metrics_iter_histogram", {"task": task})
    assert hist[":monitor:machine"]["cpu"]["x"] == [60]  # the points themselves are kept


def test_resent_scalar_replaces_the_point(srv: Server, task: str) -> None:
    """A client that re-sends a batch (lost reply) must not double the series (ClearML keys
    scalars by task, metric, variant and iteration)."""

    def scalar(i: int, value: float) -> dict[str, Any]:
        return {
            "type": "training_stats_scalar",
            "task": task,
            "metric": "acc",
            "variant": "val",
            "iter": i,
            "value": value,
            "timestamp": 7_000 + i,
        }

    first = [scalar(i, float(i)) for i in range(3)]
    logs = [{"type": "log", "task": task, "msg": "same line", "timestamp": 7_000}] * 2
    assert srv.request("events.add_batch", first + logs).json()["data"]["added"] == 5
    assert srv.request("events.add_batch", [*first, scalar(2, 20.0)]).json()["data"]["added"] == 4
    hist = srv.send("events.scalar_metrics_iter_histogram", {"task": task})
    assert hist["acc"]["val"]["x"] == [0, 1, 2]
    assert hist["acc"]["val"]["y"] == [0.0, 1.0, 20.0]
    # log lines have no such key: both identical lines stay
    log = srv.send("events.get_task_log", {"task": task})
    assert [e["msg"] for e in log["events"]].count("same line") == 2


def test_get_task_events_scroll_and_filters(srv: Server, task: str) -> None:
    events = [{"type": "log", "task": task, "msg": str(i), "timestamp": i} for i in range(7)]
    events += [
        {
            "type": "training_stats_scalar",
            "task": task,
            "metric": "m",
            "variant": "v",
            "iter": 1,
            "value": 1.0,
        }
    ]
    assert _post_lines(srv, events).json()["data"]["added"] == 8
    first = srv.send("events.get_task_events", {"task": task, "event_type": "log", "batch_size": 4})
    assert (first["returned"], first["total"]) == (4, 7)
    rest = srv.send(
        "events.get_task_events",
        {"task": task, "event_type": "log", "batch_size": 4, "scroll_id": first["scroll_id"]},
    )
    assert [e["msg"] for e in first["events"] + rest["events"]] == [str(i) for i in range(7)]
    scalars = srv.send(
        "events.get_task_events", {"task": task, "metrics": [{"metric": "m", "variants": []}]}
    )
    assert [e["type"] for e in scalars["events"]] == ["training_stats_scalar"]
    assert scalars["events"][0]["timestamp"] > 0  # filled in by the server


def test_add_batch_errors(srv: Server, task: str) -> None:
    unknown = _post_lines(
        srv,
        [{"type": "log", "task": "b" * 32, "msg": "x"}, {"type": "log", "task": task, "msg": "y"}],
    )
    assert unknown.status_code == 200
    assert unknown.json()["data"]["added"] == 1
    assert unknown.json()["data"]["errors"] == 1
    bad_json = srv.request("events.add_batch", data=b'{"type": "log"\nnot json')
    assert (bad_json.status_code, bad_json.json()["meta"]["result_subcode"]) == (400, 12)
    no_task = _post_lines(srv, [{"type": "log", "msg": "x"}])
    assert no_task.status_code == 400
    assert "'task'" in no_task.json()["meta"]["result_msg"]
    empty = srv.request("events.add_batch", data=b"")
    assert empty.json()["data"] == {"added": 0, "errors": 0, "errors_info": {}}
    missing = srv.request("events.get_task_log", {"task": "c" * 32})
    assert (missing.status_code, missing.json()["meta"]["result_subcode"]) == (400, 101)


def test_reset_and_delete_drop_events(srv: Server, task: str) -> None:
    _post_lines(srv, [{"type": "log", "task": task, "msg": "x", "timestamp": 1}])
    reply = srv.send("tasks.reset", {"task": task})
    assert reply["events"]["deleted"] == 1
    assert srv.send("events.get_task_log", {"task": task})["total"] == 0
