"""The client's explicit fallbacks for a real ClearML server (hpcagent/api/compat.py), against
recorded replies of the real server's shapes (a stub HTTP server), and against the embedded
server: no ``workers.get/set_runtime_properties`` in the open-source server (404/0 "Unable to
find endpoint"), ``tasks.dequeue``'s ``new_status`` and ``updated`` only from API 2.26."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jwt
import pytest
from test_api_client import KEY, SECRET, Stub, envelope, stub  # noqa: F401 - the fixture

from hpcagent.api import ApiClient
from hpcagent.api.compat import dequeue_to_start


# Recorded from clearml-server 1.16 (API 2.23, no runtime properties) and 1.17+ (2.26+).
def unknown_endpoint(name: str) -> dict[str, Any]:
    """clearml-server's reply to an endpoint it does not have."""
    return envelope(None, 404, 0, f"Unable to find endpoint for name {name} and version 2.23")


DEQUEUED_223 = envelope(
    {
        "updated": 1,
        "dequeued": 1,
        "fields": {"status": "created", "status_reason": "starting", "status_message": ""},
    }
)
NOT_QUEUED_OLD = envelope(
    None, 400, 110, "Invalid task status (Invalid status change: in_progress => created)"
)


def _login_as(to: Stub, api_version: str, server_version: str) -> None:
    """Make the stub answer auth.login with a token carrying the real server's claims."""
    now = int(time.time())
    claims = {"iat": now, "exp": now + 86400, "api_version": api_version,
              "server_version": server_version, "env": "production",
              "identity": {"user": "u", "company": "c", "role": "user"}}  # fmt: skip
    token = jwt.encode(claims, "k" * 32, algorithm="HS256")
    to.valid_tokens.add(token)
    to.reply("auth.login", 200, envelope({"token": token}))


def _client(to: Stub) -> ApiClient:
    return ApiClient(to.url, KEY, SECRET, retries=0, worker="w1")


def test_open_source_server_has_no_runtime_properties(
    stub: Stub,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    _login_as(stub, "2.23", "1.16.0")
    for name in ("workers.get_runtime_properties", "workers.set_runtime_properties"):
        stub.reply(name, 404, unknown_endpoint(name))
    client = _client(stub)
    with caplog.at_level(logging.INFO, logger="hpcagent.api.compat"):
        assert client.workers.get_runtime_properties() is None
        assert client.workers.get_runtime_properties() is None
        assert client.workers.set_runtime_properties([{"key": "a", "value": "1"}]) is False
        assert client.workers.set_runtime_properties([{"key": "a", "value": "2"}]) is False
    # asked once each, then remembered; one log line each
    assert len(stub.calls("workers.get_runtime_properties")) == 1
    assert len(stub.calls("workers.set_runtime_properties")) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert sum("workers.get_runtime_properties" in line for line in lines) == 1
    assert sum("workers.set_runtime_properties" in line for line in lines) == 1


def test_other_errors_are_not_taken_for_a_missing_endpoint(stub: Stub) -> None:  # noqa: F811
    _login_as(stub, "2.23", "1.16.0")
    stub.reply("workers.get_runtime_properties", 400, envelope(None, 400, 1001, "bad worker"))
    client = _client(stub)
    with pytest.raises(Exception, match="bad worker"):
        client.workers.get_runtime_properties()


def test_dequeue_before_2_26_sends_no_new_status(
    stub: Stub,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    _login_as(stub, "2.23", "1.16.0")
    stub.reply("tasks.dequeue", 200, DEQUEUED_223)
    stub.reply("tasks.dequeue", 400, NOT_QUEUED_OLD)
    client = _client(stub)
    with caplog.at_level(logging.INFO, logger="hpcagent.api.compat"):
        assert dequeue_to_start(client, "t1", "starting") is True
        assert client.tasks.dequeue_to_start("t1") is False  # refused: not queued any more
    bodies = [json.loads(r.body) for r in stub.calls("tasks.dequeue")]
    assert all("new_status" not in b for b in bodies)
    assert bodies[0] == {"task": "t1", "status_reason": "starting"}
    notes = [r.getMessage() for r in caplog.records if "2.26" in r.getMessage()]
    assert len(notes) == 1


def test_dequeue_from_2_26_goes_straight_to_in_progress(stub: Stub) -> None:  # noqa: F811
    _login_as(stub, "2.26", "1.17.0")
    stub.reply("tasks.dequeue", 200, envelope({"updated": 1, "dequeued": 1, "fields": {}}))
    stub.reply("tasks.dequeue", 200, envelope({"updated": 0, "dequeued": 1}))
    client = _client(stub)
    assert dequeue_to_start(client, "t2") is True
    assert dequeue_to_start(client, "t2") is False
    bodies = [json.loads(r.body) for r in stub.calls("tasks.dequeue")]
    assert [b.get("new_status") for b in bodies] == ["in_progress", "in_progress"]


def test_embedded_server_keeps_properties_and_dequeue_status(embedded_server: Any) -> None:
    srv = embedded_server
    client = ApiClient(srv.url, srv.access_key, srv.secret_key, worker="w1")
    assert client.compat.embedded is True
    assert client.compat.api_version == (2, 23)
    assert client.workers.set_runtime_properties([{"key": "force", "value": "1"}]) is True
    props = client.workers.get_runtime_properties()
    assert props is not None
    assert [(p["key"], p["value"]) for p in props] == [("force", "1")]
    queue = srv.send("queues.create", {"name": "compat queue"})["id"]
    task = srv.send("tasks.create", {"name": "compat task", "type": "training"})["id"]
    srv.send("tasks.enqueue", {"task": task, "queue": queue})
    assert client.tasks.dequeue_to_start(task, status_reason="starting") is True
    assert srv.send("tasks.get_by_id", {"task": task})["task"]["status"] == "in_progress"
    assert client.tasks.dequeue_to_start(task) is False  # not queued any more
