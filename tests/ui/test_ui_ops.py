"""The operations pages in a real headless Chromium against a real ``hpcagent server``, with a
real ``hpcagent daemon`` as the worker: the queues page (entries in order, reorder, remove,
create and delete, what it refuses), the workers page (the daemon's row, its CPU and memory
series from its reports, no GPU series without NVML) and the home page's figures.

The Slurm side (a running hpcagent-slurm, moving an entry to the top makes it run first, a
job held by ``--begin`` shown as PENDING (BeginTime)) is tests/slurm/test_ui_ops_slurm.py.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import helpers as h
import pytest
from ops_figures import home_figures, server_figures
from ui_browser import UiBrowser

pytestmark = pytest.mark.ui


def _serving(srv: Any, queue: str) -> str:
    """The id of a worker that serves ``queue`` ("" while none)."""
    for worker in srv.send("workers.get_all", {})["workers"]:
        if any(q.get("id") == queue for q in worker.get("queues") or []):
            return str(worker["id"])
    return ""


def _entries(srv: Any, queue: str) -> list[str]:
    return [e["task"] for e in srv.send("queues.get_by_id", {"queue": queue})["queue"]["entries"]]


def _task(srv: Any, name: str) -> str:
    return str(srv.send("tasks.create", {"name": name, "type": "training"})["id"])


def _rows(ui: UiBrowser, queue: str) -> list[str]:
    return [r.get_attribute("data-task") or "" for r in ui.find_all(f"#queue-{queue} tr.entry")]


def _loaded(ui: UiBrowser) -> None:
    """Wait until the page after an action's redirect has finished loading."""
    ui.wait_until(lambda: ui.js("return document.readyState") == "complete", 30, "page load")


def _op(ui: UiBrowser, queue: str, task: str, op: str, *, confirm: bool = False) -> str:
    _loaded(ui)
    text = ui.click_and_load(
        f"#queue-{queue} tr.entry[data-task='{task}'] button.op-{op}", confirm=confirm
    )
    _loaded(ui)
    return text


@pytest.fixture(scope="module")
def daemon(embedded_server_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``hpcagent daemon`` serving a queue of its own (CPU only, NVML absent here)."""
    srv = embedded_server_session
    tmp = tmp_path_factory.mktemp("ops-daemon")
    queue_name = f"ops daemon {uuid.uuid4().hex[:6]}"
    queue = srv.send("queues.create", {"name": queue_name})["id"]
    conf = tmp / "clearml.conf"
    conf.write_text(json.dumps({"api": h.api_section(srv)}))
    env = {k: v for k, v in h.clean_env().items() if not k.startswith("CUDA")}
    env["CLEARML_CONFIG_FILE"] = str(conf)
    argv = [sys.executable, "-c", "from hpcagent.cli import main; main()", "daemon",
            "--state-dir", str(tmp / "state"), "--queue", queue_name,
            "--poll-interval", "0.5"]  # fmt: skip
    log = tmp / "daemon.log"
    proc = h.start_logged(argv, log, cwd=tmp, env=env)
    try:
        worker = h.wait_for(lambda: _serving(srv, queue), timeout=60)
        yield type("Daemon", (), {"worker": worker, "queue": queue, "queue_name": queue_name,
                                  "log": log, "proc": proc})  # fmt: skip
    finally:
        h.stop_process(proc)


def test_queues_page_reorders_removes_creates_and_deletes(ui: UiBrowser, daemon: Any) -> None:
    srv = ui.server
    name = f"ops queue «{uuid.uuid4().hex[:6]}» 'q'"
    queue = str(srv.send("queues.create", {"name": name})["id"])
    a, b, c = (_task(srv, f"ops {x} <b>{x}</b>") for x in "abc")
    for task in (a, b, c):
        srv.send("tasks.enqueue", {"task": task, "queue": queue})
    ui.open("/queues")
    section = ui.wait(f"#queue-{queue}")
    assert section.find_element("css selector", ".queue-name").text == name
    assert _rows(ui, queue) == [a, b, c]
    names = [e.text for e in ui.find_all(f"#queue-{queue} tr.entry td.name a")]
    assert names == ["ops a <b>a</b>", "ops b <b>b</b>", "ops c <b>c</b>"]  # as text
    assert all(e.text.endswith("s") for e in ui.find_all(f"#queue-{queue} td.waited"))
    assert "no worker" in section.find_element("css selector", ".queue-workers").text
    # the daemon's queue lists the daemon
    served = ui.find(f"#queue-{daemon.queue} .queue-workers").text
    assert daemon.worker in served
    ui.screenshot("queues")
    # live: a task enqueued elsewhere shows up without a reload (live.js swaps #queue-list)
    ui.js("window.notReloaded = true;")
    d = _task(srv, "ops d")
    srv.send("tasks.enqueue", {"task": d, "queue": queue})
    ui.wait_until(lambda: _rows(ui, queue) == [a, b, c, d], 10, "live queue")
    assert ui.js("return window.notReloaded === true")
    srv.send("queues.remove_task", {"queue": queue, "task": d, "update_task_status": True})
    ui.wait_until(lambda: _rows(ui, queue) == [a, b, c], 10, "live queue")
    # top, down, up, bottom: the page and the server agree after each
    _op(ui, queue, c, "top")
    assert _rows(ui, queue) == _entries(srv, queue) == [c, a, b]
    _op(ui, queue, a, "down")
    assert _rows(ui, queue) == _entries(srv, queue) == [c, b, a]
    _op(ui, queue, a, "up")
    assert _rows(ui, queue) == _entries(srv, queue) == [c, a, b]
    _op(ui, queue, c, "bottom")
    assert _rows(ui, queue) == _entries(srv, queue) == [a, b, c]
    # remove (confirmed): out of the queue and back to draft, as queues.remove_task does
    text = _op(ui, queue, b, "remove", confirm=True)
    assert "out of the queue" in text
    assert _rows(ui, queue) == _entries(srv, queue) == [a, c]
    assert srv.send("tasks.get_by_id", {"task": b})["task"]["status"] == "created"
    # a move without the CSRF token is refused, nothing changes
    sess = ui.session()
    reply = sess.post(f"{srv.url}/queues/{queue}/entry", data={"task": c, "op": "top"})
    assert reply.status_code == 403
    assert _entries(srv, queue) == [a, c]
    # create a queue from the page; the API's name rule applies
    new_name = f"ops new {uuid.uuid4().hex[:6]}"
    ui.find("#new-queue-name").send_keys(new_name)
    ui.click_and_load("#create-queue-submit")
    created = srv.send("queues.get_all", {"name": f"^{new_name}$"})["queues"]
    assert len(created) == 1
    assert ui.text(f"#queue-{created[0]['id']} .queue-name") == new_name
    bad = sess.post(f"{srv.url}/queues/create", data={"name": "x", "csrf": _csrf(ui)})
    assert bad.status_code == 400
    # delete: a queue with entries only with "with its entries" (the API's force)
    ui.click_and_load(f"#queue-{queue} .delete-queue button", confirm=True)
    assert "not empty" in ui.find("main").text
    assert [e for e in ui.errors() if "status of 400" not in e] == []  # the refusal's page
    ui.open("/queues")
    ui.find(f"#queue-{queue} .delete-queue input[name=force]").click()
    ui.click_and_load(f"#queue-{queue} .delete-queue button", confirm=True)
    assert ui.find_all(f"#queue-{queue}") == []
    assert not srv.send("queues.get_all", {"id": [queue]})["queues"]
    ui.click_and_load(f"#queue-{created[0]['id']} .delete-queue button", confirm=True)
    assert ui.find_all(f"#queue-{created[0]['id']}") == []
    assert ui.errors() == []


def _csrf(ui: UiBrowser) -> str:
    return str(ui.find("input[name=csrf]").get_attribute("value"))


def test_workers_page_shows_the_daemon_and_its_series(ui: UiBrowser, daemon: Any) -> None:
    ui.open("/workers")
    row = f"tr.worker-row[data-worker='{daemon.worker}']"  # read afresh: the table is live
    ui.wait(row)
    assert ui.text(f"{row} .worker-role") == "daemon"
    assert ui.text(f"{row} .worker-host") == socket.gethostname()
    assert daemon.queue_name in ui.text(f"{row} .worker-queues")
    assert ui.text(f"{row} .worker-state") == "idle"
    assert ui.text(f"{row} .worker-report") != ""
    box = f".worker-charts[data-worker='{daemon.worker}']"
    ui.wait_until(lambda: ui.find(box).get_attribute("data-loaded") == "1", 30, "charts")
    # the CPU and memory series are the daemon's reports (workers.get_stats), point for point
    series = ui.session().get(
        f"{ui.server.url}/data/worker-stats", params={"worker": daemon.worker, "range": "3600"}
    )
    assert series.status_code == 200
    cpu = series.json()["workers"][daemon.worker]["cpu_usage"]
    assert cpu["values"]
    charts = ui.js(
        "return Array.from(document.querySelectorAll(arguments[0] + ' .stats-chart'))"
        ".map(function (c) { return [c.dataset.metric, c.data[0].y]; })",
        box,
    )
    drawn = dict(charts)
    assert set(drawn) == {"cpu_usage", "memory_used"}
    # two reads of a series the daemon keeps adding to: the earlier is the later's beginning
    # (a report may come between the page's request and this one, or a redraw after it)
    common = min(len(drawn["cpu_usage"]), len(cpu["values"]))
    assert common >= 1
    assert drawn["cpu_usage"][:common] == cpu["values"][:common]
    # no NVML here: the GPU chart says so instead of drawing nothing
    assert "No GPU reported" in ui.find(f"{box} .no-series").text
    ui.screenshot("workers")
    # a range that is not offered is read as the default hour, never a 5xx
    odd = ui.session().get(
        f"{ui.server.url}/data/worker-stats", params={"worker": daemon.worker, "range": "9" * 30}
    )
    assert odd.status_code == 200
    assert ui.session().get(f"{ui.server.url}/data/worker-stats").status_code == 400
    assert ui.errors() == []


def test_home_figures_match_the_server(ui: UiBrowser, daemon: Any) -> None:
    srv = ui.server
    failed = _task(srv, "ops failed ✗ task")
    srv.send("tasks.started", {"task": failed, "force": True})
    reason = "out of memory <oom> ✗"
    srv.send("tasks.failed", {"task": failed, "force": True, "status_reason": reason})
    idle_queue = srv.send("queues.create", {"name": f"ops idle {uuid.uuid4().hex[:6]}"})["id"]
    for i in range(2):
        srv.send("tasks.enqueue", {"task": _task(srv, f"ops waiting {i}"), "queue": idle_queue})
    ui.open("/")  # the home page
    ui.wait("#figures")
    assert ui.path() == "/home"
    # the page is live: it settles on the server's figures (a worker may report meanwhile)
    ui.wait_until(lambda: home_figures(ui) == server_figures(srv), 15, "home figures")
    assert home_figures(ui)["queues"][idle_queue] == 2
    failures = {
        r.get_attribute("data-task"): r for r in ui.find_all("#home-failures tr[data-task]")
    }
    assert failed in failures
    assert reason in failures[failed].find_element("css selector", ".failure-reason").text
    assert int(ui.text("#fig-failed")) == len(failures)
    ui.screenshot("home")
    # live: one more waiting task moves the figures without a reload
    before = int(ui.text("#fig-queued"))
    ui.js("window.notReloaded = true;")
    srv.send("tasks.enqueue", {"task": _task(srv, "ops one more"), "queue": idle_queue})
    ui.wait_until(lambda: int(ui.text("#fig-queued")) == before + 1, 10, "live home")
    assert ui.js("return window.notReloaded === true")
    assert ui.errors() == []
