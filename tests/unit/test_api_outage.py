"""The long-running parts' client waits out a server outage of any length (issue 14, item 1).

Against the real embedded server, stopped and started again on the same port and data:
past its quiet retry budget the client logs one line when the server goes and one when it is
back (never a line per attempt), a call returns once the server answers, and a stop ends the
wait at once. A call that must not be made twice still waits out a refused connection (the
request never reached the server).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from hpcagent.api import ApiClient
from hpcagent.errors import ServerUnreachable


def _patient(server: Any, stop: threading.Event) -> ApiClient:
    client = ApiClient(
        server.url,
        server.access_key,
        server.secret_key,
        retries=1,  # the quiet budget: one retry, then the outage is declared
        backoff_s=0.05,
        backoff_max_s=0.2,
    )
    client.wait_out_outages(stop)
    return client


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_outage_is_waited_out_and_logged_once_each_way(
    embedded_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    client = _patient(embedded_server, stop)
    qid = client.queues.create("outage-q")
    embedded_server.stop()
    with caplog.at_level(logging.DEBUG, logger="hpcagent.api.client"):
        before = client.requests_sent
        thread, out = _in_thread(lambda: client.queues.get_all(id=[qid]))
        # many attempts while the server is away (each one a debug line only)
        deadline = time.monotonic() + 60
        while client.requests_sent < before + 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.requests_sent >= before + 8
        assert thread.is_alive()
        embedded_server.start()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert [q["name"] for q in out["value"]] == ["outage-q"]
    down = _lines(caplog, "unreachable since")
    back = _lines(caplog, "back after")
    assert len(down) == 1, down
    assert "connection refused" in down[0]
    assert f"API server {embedded_server.url}" in down[0]
    assert "retrying every <= 0.2 s" in down[0]
    assert len(back) == 1, back
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # the outage line; the attempts were debug lines


def test_a_stop_ends_the_wait_at_once(embedded_server: Any) -> None:
    stop = threading.Event()
    client = _patient(embedded_server, stop)
    client.token_claims()
    embedded_server.stop()
    before = client.requests_sent
    thread, out = _in_thread(lambda: client.send("workers.unregister", {"worker": "w"}))
    while client.requests_sent < before + 4:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), ServerUnreachable)
    assert "workers.unregister: connection refused" in str(out["error"])


def test_non_repeatable_call_waits_out_a_refused_connection(embedded_server: Any) -> None:
    """tasks.enqueue is never sent twice after a lost reply, but a refused connection means
    the server never saw it: it is sent again once the server is back, and enqueues once."""
    stop = threading.Event()
    client = _patient(embedded_server, stop)
    qid = client.queues.create("outage-enqueue")
    tid = str(client.send("tasks.create", {"name": "enqueue me", "type": "training"})["id"])
    embedded_server.stop()
    before = client.requests_sent
    thread, out = _in_thread(lambda: client.send("tasks.enqueue", {"task": tid, "queue": qid}))
    while client.requests_sent < before + 4:
        time.sleep(0.05)
    embedded_server.start()
    thread.join(timeout=60)
    assert "error" not in out, out
    queue = client.queues.get_by_id(qid)
    assert [e["task"] for e in queue["entries"]] == [tid]


def test_an_error_about_one_record_is_an_answer_not_an_outage(embedded_server: Any) -> None:
    """A stored record the server cannot take an edit on answers an error every time (the
    embedded server: 400/12 naming the field; it answered 500 before 3d49afd): the patient
    client returns that error at once instead of waiting, so one bad task never holds a
    daemon (issue 14, item 5)."""
    from hostile_tasks import plant

    from hpcagent.errors import ApiError

    task = embedded_server.send("tasks.create", {"name": "odd", "type": "training"})["id"]
    embedded_server.stop()
    plant(embedded_server.data_dir, {task: {"hyperparams": "not an object"}})
    embedded_server.start()
    stop = threading.Event()
    client = _patient(embedded_server, stop)
    body = {"task": task, "hyperparams": [{"section": "properties", "name": "k", "value": "v"}]}
    thread, out = _in_thread(lambda: client.send("tasks.edit_hyper_params", body))
    thread.join(timeout=60)
    stop.set()
    assert not thread.is_alive(), "still waiting: an error about one record taken for an outage"
    assert isinstance(out.get("error"), ApiError), out
    assert (out["error"].result_code, out["error"].subcode) == (400, 12)
