"""Live pages in a real headless Chromium (static/live.js, server/ui/live.py): a change made
through the API shows on an open page without a reload, what the user did on the page survives
it, and a page makes at most one request a second.

"Without a reload" is checked with a marker set on ``window``: a reload would drop it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests
from ui_browser import UiBrowser

pytestmark = pytest.mark.ui

#: Resource-timing entries of live.js's polls and followers (fetches), with the page's age.
LIVE_REQUESTS = """
return {
  fetches: performance.getEntriesByType('resource')
    .filter(function (e) { return e.initiatorType === 'fetch'; }).length,
  seconds: performance.now() / 1000
};
"""


def _task(srv: Any, name: str) -> str:
    return str(srv.send("tasks.create", {"name": name, "type": "training"})["id"])


def _running_task(srv: Any, name: str) -> str:
    task = _task(srv, name)
    srv.send("tasks.enqueue", {"task": task, "queue": _queue(srv)})
    srv.send("tasks.started", {"task": task, "force": True})
    return task


def _mark(ui: UiBrowser) -> None:
    ui.js("window.__notReloaded = 'yes';")


def _not_reloaded(ui: UiBrowser) -> bool:
    return bool(ui.js("return window.__notReloaded === 'yes';"))


def _at_most_one_request_a_second(ui: UiBrowser) -> None:
    counts = ui.js(LIVE_REQUESTS)
    assert counts["fetches"] >= 1  # it did poll
    assert counts["fetches"] <= counts["seconds"] + 1, counts


def test_task_page_shows_completed_without_reload(
    ui: UiBrowser, embedded_server_session: Any
) -> None:
    srv = embedded_server_session
    task = _running_task(srv, "live task page")
    ui.open(f"/tasks/{task}")
    assert ui.text("#task-status") == "in_progress"
    ui.find("#clone-name").clear()
    ui.find("#clone-name").send_keys("my typed name")
    ui.find("#task-name").click()  # the field loses focus; its value must survive the swap
    _mark(ui)
    srv.send("tasks.completed", {"task": task, "force": True, "status_message": "all done"})
    ui.wait_until(lambda: ui.text("#task-status") == "completed", 60, "completed shown live")
    assert _not_reloaded(ui)
    facts = ui.text("#panel-info")
    assert "completed" in facts
    assert "all done" in facts
    assert ui.find("#clone-name").get_attribute("value") == "my typed name"
    ui.screenshot("task-live")
    _at_most_one_request_a_second(ui)
    assert ui.errors() == []


def test_task_table_updates_rows_and_keeps_the_selection(
    ui: UiBrowser, embedded_server_session: Any
) -> None:
    srv = embedded_server_session
    tag = f"live-{uuid.uuid4().hex[:6]}"
    first, second = (_task(srv, f"{tag} {i}") for i in range(2))
    ui.open(f"/tasks?name={tag}&sort=name")
    rows = ui.find_all("#task-table tbody tr")
    assert [r.get_attribute("data-task") for r in rows] == [first, second]
    ui.find(f"tr[data-task='{first}'] .select-row").click()
    _mark(ui)
    srv.send("tasks.edit", {"task": second, "name": f"{tag} 1 renamed"})
    srv.send("tasks.enqueue", {"task": second, "queue": _queue(srv)})

    def status_of(tid: str) -> str:
        return ui.text(f"tr[data-task='{tid}'] .status")

    ui.wait_until(lambda: status_of(second) == "queued", 60, "queued shown live")
    assert ui.text(f"tr[data-task='{second}'] td.name") == f"{tag} 1 renamed"
    assert _not_reloaded(ui)
    assert ui.find(f"tr[data-task='{first}'] .select-row").is_selected()
    assert not ui.find(f"tr[data-task='{second}'] .select-row").is_selected()
    # a new task in the view appears too
    third = _task(srv, f"{tag} 2")
    ui.wait_until(lambda: len(ui.find_all("#task-table tbody tr")) == 3, 60, "new row")
    assert ui.find_all("#task-table tbody tr")[2].get_attribute("data-task") == third
    _at_most_one_request_a_second(ui)
    assert ui.errors() == []


def test_idle_page_is_not_rendered_again(ui: UiBrowser, embedded_server_session: Any) -> None:
    """The poll of an unchanged page is a 204 without a body (the page is not sent again)."""
    srv = embedded_server_session
    task = _task(srv, "live idle")
    session = ui.session()
    url = f"{srv.url}/tasks/{task}"
    first = session.get(url, headers={"X-Hpcagent-Live": "-"})
    assert first.status_code == 200
    token = first.headers["X-Hpcagent-Live"]
    again = session.get(url, headers={"X-Hpcagent-Live": token})
    assert again.status_code == 204
    assert again.content == b""
    srv.send("tasks.edit", {"task": task, "comment": "changed"})
    changed = session.get(url, headers={"X-Hpcagent-Live": token})
    assert changed.status_code == 200
    assert "changed" in changed.text
    # another task's change: the counter moved, the page did not: 204 with a new token
    _task(srv, "live idle other")
    token = changed.headers["X-Hpcagent-Live"]
    other = session.get(url, headers={"X-Hpcagent-Live": token})
    assert other.status_code == 204
    assert other.headers["X-Hpcagent-Live"] != token
    # events coming in (console lines) change no document: 204 without rendering the page,
    # but the first part of the token moved, which sets off the page's followers (the tail)
    token = other.headers["X-Hpcagent-Live"]
    line = json.dumps({"task": task, "type": "log", "msg": "a line"}).encode()
    assert srv.request("events.add_batch", data=line).status_code == 200
    logged = session.get(url, headers={"X-Hpcagent-Live": token})
    assert logged.status_code == 204
    moved = logged.headers["X-Hpcagent-Live"].split(".")
    assert moved[0] != token.split(".")[0]
    assert moved[1:] == token.split(".")[1:]  # same documents, same page: not rendered
    # without a session: the sign-in redirect, as for any page

    anonymous = requests.get(url, headers={"X-Hpcagent-Live": token}, allow_redirects=False)
    assert anonymous.status_code == 303


def _queue(srv: Any) -> str:
    return str(srv.send("queues.create", {"name": f"live-{uuid.uuid4().hex[:6]}"})["id"])


def test_console_tail_shares_the_one_request_a_second(
    ui: UiBrowser, embedded_server_session: Any
) -> None:
    """On the Console tab the live tail is a follower of the page's poll: new lines appear
    without a reload while the page (status and tail together) stays within one request a
    second, and the status still changes live."""
    srv = embedded_server_session
    task = _running_task(srv, "live console")
    ui.open(f"/tasks/{task}?tab=console")
    _mark(ui)
    for batch in range(3):
        line = f"streamed line {batch}"
        body = {"task": task, "type": "log", "msg": line}
        assert srv.request("events.add_batch", data=json.dumps(body).encode()).status_code == 200
        ui.wait_until(
            lambda line=line: line in [e.text for e in ui.find_all("#console .line")], 60, line
        )
    srv.send("tasks.completed", {"task": task, "force": True})
    ui.wait_until(lambda: ui.text("#task-status") == "completed", 60, "completed shown live")
    assert _not_reloaded(ui)
    lines = [e.text for e in ui.find_all("#console .line")]
    assert lines == [f"streamed line {i}" for i in range(3)]  # each once
    _at_most_one_request_a_second(ui)
    assert ui.errors() == []
