"""The web UI in a real headless Chromium against a real ``hpcagent server``: sign-in, the task
table (filters, sort, pages, metric columns, the URL as the view), the task page's tabs, the
actions (clone -> edit -> enqueue, abort, archive, bulk) and what the UI refuses (wrong keys,
actions without the CSRF token, markup in task data).

The Slurm end to end (a task run by hpcagent-slurm seen in the UI, abort stopping its job, a
clone run with the edited value) is tests/slurm/test_ui_slurm.py.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from typing import Any

import helpers as h
import pytest
import requests
from ui_browser import UiBrowser

pytestmark = pytest.mark.ui

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_LINE = "<script>alert('log')</script> & <b>not bold</b>"
ARTIFACT = bytes(range(256)) * 40
MODEL = b"model weights " * 100


def add_events(srv: Any, events: list[dict[str, Any]]) -> None:
    data = b"\n".join(json.dumps(ev).encode() for ev in events)
    reply = srv.request("events.add_batch", data=data)
    assert reply.status_code == 200, reply.text


def upload(srv: Any, path: str, content: bytes) -> str:
    """Store ``content`` on the server's files server, as the SDK uploads; returns its URL."""
    reply = requests.post(
        f"{srv.url}/files",
        files={path: (path.rsplit("/", 1)[1], content)},
        headers={"Authorization": f"Bearer {srv.token()}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return f"{srv.url}/files/{path}"


def png(width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` x ``height`` pixels (a red-to-blue gradient)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(
        b"\x00" + b"".join(bytes((255 - x * 255 // width, y * 255 // height, x * 255 // width))
                           for x in range(width))
        for y in range(height)
    )  # fmt: skip
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def new_task(srv: Any, name: str, **fields: Any) -> str:
    return str(srv.send("tasks.create", {"name": name, "type": "training", **fields})["id"])


@pytest.fixture(scope="module")
def world(embedded_server_session: Any) -> dict[str, Any]:
    """A project with tasks: a hostile name, scalars, a plot, a console, an artifact."""
    srv = embedded_server_session
    suffix = uuid.uuid4().hex[:6]
    project = str(srv.send("projects.create", {"name": f"ui-project {suffix}"})["id"])
    queue = str(srv.send("queues.create", {"name": f"ui-queue-{suffix}"})["id"])
    hostile = new_task(srv, HOSTILE, project=project, tags=["hostile"])
    main = new_task(
        srv,
        f"train résumé 'quoted' {suffix}",
        project=project,
        tags=["main"],
        script={
            "repository": "https://example.invalid/repo.git",
            "branch": "main",
            "version_num": "abc123",
            "entry_point": "train.py",
            "diff": "--- a/train.py\n+++ b/train.py\n",
            "requirements": {"pip": "numpy==2.0\n"},
        },
        hyperparams={
            "Args": {
                "lr": {"section": "Args", "name": "lr", "value": "0.5", "type": "float"},
                "epochs": {"section": "Args", "name": "epochs", "value": "3", "type": "int"},
            },
            "properties": {"owner": {"section": "properties", "name": "owner", "value": HOSTILE}},
        },
        configuration={"General": {"name": "General", "value": "batch: 32", "type": "yaml"}},
    )
    # an artifact stored on the server's files server, as the SDK uploads it
    path = f"ui/task.{main}/artifacts/weights/weights-{suffix}.bin"
    artifact = {"key": "weights", "type": "custom", "mode": "output",
                "uri": upload(srv, path, ARTIFACT), "content_size": len(ARTIFACT)}  # fmt: skip
    srv.send("tasks.add_or_update_artifacts", {"task": main, "artifacts": [artifact]})
    model_uri = upload(srv, f"ui/task.{main}/models/model-{suffix}.pt", MODEL)
    body = {"name": f"model {suffix}", "uri": model_uri, "framework": "PyTorch", "task": main}
    model = srv.send("models.create", body)["id"]
    srv.send(
        "tasks.add_or_update_model",
        {"task": main, "name": "best", "model": model, "type": "output"},
    )
    image_url = upload(srv, f"ui/task.{main}/metrics/sample-{suffix}.png", png(240, 135))
    others = [new_task(srv, f"sweep {i:02d} {suffix}", project=project) for i in range(30)]
    now = int(time.time() * 1000)
    events: list[dict[str, Any]] = []
    for i in range(20):
        events.append(
            {"task": main, "type": "training_stats_scalar", "metric": "loss",
             "variant": "train", "iter": i, "value": 1.0 / (i + 1), "timestamp": now + i}
        )  # fmt: skip
    events += [
        {"task": main, "type": "log", "level": "info", "msg": f"epoch {i} done",
         "timestamp": now + 100 + i}
        for i in range(50)
    ]  # fmt: skip
    events.append({"task": hostile, "type": "log", "msg": HOSTILE_LINE, "timestamp": now})
    figure = {
        "data": [{"type": "bar", "x": ["cat", "dog"], "y": [3, 5], "name": "counts"}],
        "layout": {"title": {"text": HOSTILE}},
    }
    events.append(
        {"task": main, "type": "plot", "metric": "histogram", "variant": "classes", "iter": 0,
         "plot_str": json.dumps(figure), "timestamp": now}
    )  # fmt: skip
    events.append(
        {"task": main, "type": "training_debug_image", "metric": "samples", "variant": "input",
         "iter": 3, "url": image_url, "timestamp": now}
    )  # fmt: skip
    add_events(srv, events)
    return {
        "srv": srv,
        "project": project,
        "queue": queue,
        "hostile": hostile,
        "main": main,
        "others": others,
        "suffix": suffix,
        "now": now,
    }


def test_sign_in_refuses_wrong_keys_and_signs_out(ui_browser: UiBrowser) -> None:
    ui_browser.driver.delete_all_cookies()
    ui_browser.open("/tasks")
    assert ui_browser.path().startswith("/login?next=")
    ui_browser.screenshot("login")
    ui_browser.sign_in(secret_key="wrong-secret")
    assert "Unknown access key or wrong secret key" in ui_browser.wait("#login-error").text
    ui_browser.sign_in()
    ui_browser.wait("#task-table")
    assert ui_browser.path() == "/tasks"
    cookie = ui_browser.driver.get_cookie("clearml_token_basic")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert ui_browser.js("return document.cookie") == ""  # no script can read the session
    ui_browser.find("#sign-out").click()
    ui_browser.wait("#login-form")
    ui_browser.open("/tasks")
    assert ui_browser.path().startswith("/login")


def test_projects_and_task_table_view_in_the_url(ui: UiBrowser, world: dict[str, Any]) -> None:
    ui.open("/projects")
    row = next(r for r in ui.find_all("#projects tbody tr") if world["suffix"] in r.text)
    assert row.find_elements("css selector", "td")[1].text == "32"
    ui.screenshot("projects")
    row.find_element("css selector", "a").click()
    ui.wait("#task-table")
    assert f"project={world['project']}" in ui.path()
    names = [a.text for a in ui.find_all("#task-table td.name a")]
    assert len(names) == 32
    # name filter, sort by name descending, a metric column: all in the URL
    ui.find("#filter-name").send_keys("sweep")
    ui.find("#apply-filters").click()
    ui.wait_until(lambda: "name=sweep" in ui.path())
    ui.find("#task-table th:nth-child(3) a").click()  # name: ascending
    ui.wait_until(lambda: "sort=name" in ui.path())
    ui.find("#task-table th:nth-child(3) a").click()  # again: descending
    ui.wait_until(lambda: "sort=-name" in ui.path())
    names = [a.text for a in ui.find_all("#task-table td.name a")]
    assert names == sorted(names, reverse=True)
    assert len(names) == 30
    assert names[0].startswith("sweep 29")
    shared = ui.path()
    # the same URL in a fresh tab shows the same view; page size 25 pages it
    ui.open(shared + "&size=25")
    assert len(ui.find_all("#task-table td.name a")) == 25
    ui.find("#next-page").click()
    ui.wait_until(lambda: "page=1" in ui.path())
    assert [a.text for a in ui.find_all("#task-table td.name a")] == names[25:]
    # metric column: last value of loss/train
    ui.open(f"/tasks?project={world['project']}&col=loss/train&name=train")
    assert ui.text("th.metric-col") == "loss/train"
    assert ui.text("#task-table tbody td.num") == "0.05"
    ui.open(f"/tasks?project={world['project']}&tag=main")
    assert [a.text for a in ui.find_all("#task-table td.name a")] == [
        f"train résumé 'quoted' {world['suffix']}"
    ]
    assert ui.errors() == []


def test_hostile_name_and_log_line_render_as_text(ui: UiBrowser, world: dict[str, Any]) -> None:
    ui.open(f"/tasks?project={world['project']}&tag=hostile")
    link = ui.wait("#task-table td.name a")
    assert link.text == HOSTILE
    assert ui.find_all("#task-table img") == []
    assert not ui.alert_open()
    ui.screenshot("tasks")
    ui.open(f"/tasks/{world['hostile']}?tab=console")
    line = ui.wait_until(lambda: ui.find_all("#console .line"), what="console lines")[0]
    assert line.text == HOSTILE_LINE
    assert ui.find_all("#console script, #console b") == []
    assert ui.text("#task-name") == HOSTILE
    assert not ui.alert_open()
    ui.open(f"/tasks/{world['main']}?tab=configuration")
    values = [e.text for e in ui.find_all("table[data-section=properties] .param-value")]
    assert values == [HOSTILE]
    assert not ui.alert_open()
    assert ui.errors() == []


def test_action_without_csrf_token_is_refused(ui: UiBrowser, world: dict[str, Any]) -> None:
    srv = world["srv"]
    victim = new_task(srv, "csrf victim")
    session = ui.session()
    url = f"{srv.url}/tasks/{victim}/action"
    reply = session.post(url, data={"action": "delete"}, allow_redirects=False)
    assert reply.status_code == 403
    assert "CSRF" in reply.text
    reply = session.post(url, data={"action": "delete", "csrf": "0" * 64}, allow_redirects=False)
    assert reply.status_code == 403
    assert srv.send("tasks.get_by_id", {"task": victim})["task"]["status"] == "created"
    # the same request with the page's token is accepted: the token is what made the difference
    ui.open(f"/tasks/{victim}")
    token = ui.find("input[name=csrf]").get_attribute("value")
    reply = session.post(url, data={"action": "archive", "csrf": token}, allow_redirects=False)
    assert reply.status_code == 303
    tags = srv.send("tasks.get_by_id", {"task": victim})["task"]["system_tags"]
    assert "archived" in tags
    # headers of a page: CSP without inline script
    page = session.get(f"{srv.url}/tasks")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


def test_task_page_tabs(ui: UiBrowser, world: dict[str, Any]) -> None:
    main = world["main"]
    ui.open(f"/tasks/{main}")
    assert ui.text("#task-name") == f"train résumé 'quoted' {world['suffix']}"
    ui.screenshot("task-info")
    ui.open(f"/tasks/{main}?tab=execution")
    assert "abc123" in ui.text("#panel-execution")
    assert ui.text("#requirements") == "numpy==2.0"
    ui.screenshot("task-execution")
    ui.open(f"/tasks/{main}?tab=configuration")
    assert "batch: 32" in ui.text("#panel-configuration")
    ui.screenshot("task-configuration")
    ui.open(f"/tasks/{main}?tab=console")
    ui.wait_until(lambda: len(ui.find_all("#console .line")) == 50, what="50 console lines")
    ui.find("#console-search").send_keys("epoch 4")
    shown = [e.text for e in ui.find_all("#console .line") if e.is_displayed()]
    assert shown == ["epoch 4 done", *[f"epoch {i} done" for i in range(40, 50)]]
    ui.screenshot("task-console")
    # live tail: a new line appears without reloading
    add_events(
        world["srv"],
        [{"task": main, "type": "log", "msg": "tail line", "timestamp": int(time.time() * 1000)}],
    )
    ui.find("#console-search").clear()
    ui.wait_until(
        lambda: any(e.text == "tail line" for e in ui.find_all("#console .line")), 20, "tail"
    )
    ui.open(f"/tasks/{main}?tab=scalars")
    ui.wait_until(lambda: ui.js("return !!document.querySelector('.scalar-chart .main-svg')"))
    points = ui.js("return document.querySelector('.scalar-chart').data[0].y")
    assert points == [1.0 / (i + 1) for i in range(20)]
    assert ui.js("return document.querySelector('.scalar-chart').data[0].x") == list(range(20))
    ui.find("#log-scale").click()
    assert ui.js("return document.querySelector('.scalar-chart').layout.yaxis.type") == "log"
    # smoothing: an exponential moving average with the slider's weight
    ui.js(
        "var s = document.getElementById('smoothing'); s.value = '0.5';"
        "s.dispatchEvent(new Event('input'));"
    )
    smoothed = ui.js("return document.querySelector('.scalar-chart').data[0].y")
    assert smoothed[:3] == [1.0, 0.75, 0.75 * 0.5 + (1 / 3) * 0.5]
    # x axis by time: the points' timestamps
    ui.find("#x-axis option[value=time]").click()
    ui.wait_until(
        lambda: (
            ui.js("return document.querySelector('.scalar-chart').layout.xaxis.title.text")
            == "time"
        )
    )
    first_x = ui.js("return document.querySelector('.scalar-chart').data[0].x[0].getTime()")
    assert abs(first_x - world["now"]) < 1000
    ui.find("#x-axis option[value=iter]").click()
    ui.js(
        "var s = document.getElementById('smoothing'); s.value = '0';"
        "s.dispatchEvent(new Event('input'));"
    )
    ui.wait_until(lambda: ui.js("return document.querySelector('.scalar-chart').data[0].x[0]") == 0)
    ui.screenshot("task-scalars")
    ui.open(f"/tasks/{main}?tab=plots")
    ui.wait_until(lambda: ui.js("return !!document.querySelector('.plot-chart .main-svg')"))
    assert ui.js("return document.querySelector('.plot-chart').data[0].y") == [3, 5]
    assert ui.find_all(".plot-chart img") == []
    assert not ui.alert_open()
    ui.screenshot("task-plots")
    ui.open(f"/tasks/{main}?tab=artifacts")
    link = ui.wait("#artifacts a.artifact-link")
    assert link.text.endswith(f"weights-{world['suffix']}.bin")
    link.click()
    assert ui.downloaded(f"weights-{world['suffix']}.bin").read_bytes() == ARTIFACT
    model_link = ui.find("#models a.model-link")
    assert model_link.text.endswith(f"model-{world['suffix']}.pt")
    model_link.click()
    assert ui.downloaded(f"model-{world['suffix']}.pt").read_bytes() == MODEL
    assert "PyTorch" in ui.text("#models")
    ui.screenshot("task-artifacts")
    ui.open(f"/tasks/{main}?tab=debug")
    image = ui.wait("#debug img.debug-image")
    ui.wait_until(lambda: ui.js("return arguments[0].naturalWidth", image) == 240, what="image")
    assert "samples / input · iteration 3" in ui.text("#debug")
    ui.screenshot("task-debug-samples")
    assert ui.errors() == []


def test_console_download_has_every_line(ui: UiBrowser, world: dict[str, Any]) -> None:
    reply = ui.session().get(f"{world['srv'].url}/tasks/{world['main']}/console.txt")
    assert reply.status_code == 200
    lines = reply.text.splitlines()
    assert lines[:50] == [f"epoch {i} done" for i in range(50)]


def test_clone_edit_enqueue(ui: UiBrowser, world: dict[str, Any]) -> None:
    srv = world["srv"]
    clone_id = ui.clone_and_edit(world["main"], "clone with lr 0.25", "Args/lr", "0.25")
    ui.find("#edit-commit").clear()
    ui.find("#edit-commit").send_keys("def456")
    ui.screenshot("task-edit")
    ui.save_and_enqueue(world["queue"])
    clone = srv.send("tasks.get_by_id", {"task": clone_id})["task"]
    assert clone["name"] == "clone with lr 0.25"
    assert clone["parent"] == world["main"]
    assert clone["hyperparams"]["Args"]["lr"]["value"] == "0.25"
    assert clone["hyperparams"]["Args"]["lr"]["type"] == "float"
    assert clone["hyperparams"]["Args"]["epochs"]["value"] == "3"
    assert clone["script"]["version_num"] == "def456"
    assert clone["execution"]["queue"] == world["queue"]
    assert ui.errors() == []
    # the API's own error for a forbidden edit: the task is queued now
    ui.open(f"/tasks/{clone_id}/edit")
    ui.find("#save").click()
    assert "edit needs a created task" in ui.wait("#error-message").text
    assert any("status of 400" in e for e in ui.errors())
    # abort from the UI (with its confirmation): a queued task is dequeued and stopped
    ui.open(f"/tasks/{clone_id}")
    ui.find("#abort").click()
    assert "Abort this task" in ui.accept_confirm()
    ui.wait_until(lambda: ui.text("#task-status") == "stopped")
    assert ui.errors() == []


def test_bulk_enqueue_abort_archive(ui: UiBrowser, world: dict[str, Any]) -> None:
    srv = world["srv"]
    picked = world["others"][:3]
    ui.open(f"/tasks?project={world['project']}&name=sweep&sort=name")
    for nth in range(3):  # found afresh each time: the table is a live region
        ui.click(".select-row", nth)
    ui.click(f"#bulk-queue option[value='{world['queue']}']")
    ui.click_and_load("#bulk-enqueue")
    assert "name=sweep" in ui.path()
    statuses = {srv.send("tasks.get_by_id", {"task": t})["task"]["status"] for t in picked}
    assert statuses == {"queued"}
    ui.open(f"/tasks?project={world['project']}&status=queued&queue={world['queue']}&name=sweep")
    assert len(ui.find_all("#task-table td.name a")) == 3
    for nth in range(2):
        ui.click(".select-row", nth)
    assert "Abort the selected tasks" in ui.click_and_load("#bulk-abort", confirm=True)
    assert len(ui.find_all("#task-table td.name a")) == 1
    statuses = sorted(srv.send("tasks.get_by_id", {"task": t})["task"]["status"] for t in picked)
    assert statuses == ["queued", "stopped", "stopped"]
    ui.open(f"/tasks?project={world['project']}&queue={world['queue']}&name=sweep")
    assert len(ui.find_all("#task-table td.name a")) == 3
    ui.click("#select-all")
    ui.click_and_load("#bulk-archive")
    assert "No tasks in this view" in ui.text("#task-table")
    ui.open(f"/tasks?project={world['project']}&archived=1")
    assert len(ui.find_all("#task-table td.name a")) >= 3
    for task_id in picked:
        assert "archived" in srv.send("tasks.get_by_id", {"task": task_id})["task"]["system_tags"]


def test_console_pages_across_a_shared_timestamp(ui: UiBrowser, world: dict[str, Any]) -> None:
    """Events that share a millisecond across page boundaries are all shown, once, in order;
    the live tail adds new events of the newest millisecond once."""
    srv = world["srv"]
    task = new_task(srv, "console paging")
    t0 = int(time.time() * 1000)
    stamps = [t0] * 5 + [t0 + 1] * 10 + [t0 + 2] * 10
    add_events(srv, [{"task": task, "type": "log", "msg": f"line {i:02d}", "timestamp": ts}
                     for i, ts in enumerate(stamps)])  # fmt: skip
    ui.open(f"/tasks/{task}?tab=console&console_page=4")

    def shown() -> list[str]:
        return [e.text for e in ui.find_all("#console .line")]

    ui.wait_until(lambda: shown() == [f"line {i:02d}" for i in range(21, 25)], what="newest 4")
    for _ in range(8):
        ui.find("#console-older").click()
        time.sleep(0.3)
    ui.wait_until(lambda: len(shown()) == 25, what="all 25 lines")
    assert shown() == [f"line {i:02d}" for i in range(25)]
    add_events(srv, [{"task": task, "type": "log", "msg": f"late {i}", "timestamp": t0 + 2}
                     for i in range(3)])  # fmt: skip
    ui.wait_until(lambda: len(shown()) == 28, 20, "tail")
    assert shown()[25:] == ["late 0", "late 1", "late 2"]
    time.sleep(2.5)  # another tail poll: nothing shown twice
    assert len(shown()) == 28
    assert ui.errors() == []


def test_hostile_query_values_get_4xx_or_defaults(ui: UiBrowser, world: dict[str, Any]) -> None:
    session = ui.session()
    url = world["srv"].url
    huge = "9" * 5000
    page = session.get(f"{url}/tasks?size={huge}&page={huge}&sort=;drop&status=nope")
    assert page.status_code == 200
    assert session.get(f"{url}/tasks/{world['main']}?tab=console&console_page={huge}").ok
    reply = session.get(f"{url}/data/tasks/{world['main']}/console?before={huge}")
    assert reply.status_code == 400
    assert "before" in reply.json()["error"]
    assert session.get(f"{url}/data/tasks/{'f' * 32}/console").status_code == 400
    assert session.get(f"{url}/tasks/{'f' * 32}").status_code == 400
    assert session.get(f"{url}/data/tasks/{world['main']}/events?kind=x").status_code == 400
    assert session.get(f"{url}/static/..%2Fcore.py").status_code == 404
    assert requests.get(f"{url}/data/tasks/{world['main']}/console").status_code == 401
    action = f"{url}/tasks/{world['main']}/action"
    big = session.post(action, data={"csrf": "x", "pad": "a" * (5 * 1024 * 1024)})
    assert big.status_code == 400
    assert "too large" in big.text
    as_json = session.post(action, json={"action": "delete"})
    assert as_json.status_code == 400
    assert world["srv"].send("tasks.get_by_id", {"task": world["main"]})["task"]["id"]


def test_reset_and_delete_from_the_task_page(ui: UiBrowser, world: dict[str, Any]) -> None:
    srv = world["srv"]
    task = new_task(srv, "reset and delete me")
    srv.send("tasks.enqueue", {"task": task, "queue": world["queue"]})
    srv.send("tasks.started", {"task": task, "force": True})
    srv.send("tasks.failed", {"task": task, "force": True, "status_message": "boom"})
    add_events(srv, [{"task": task, "type": "log", "msg": "old line", "timestamp": 1}])
    ui.open(f"/tasks/{task}")
    assert ui.text("#task-status") == "failed"
    ui.find("#reset").click()
    assert "Reset this task" in ui.accept_confirm()
    ui.wait_until(lambda: ui.text("#task-status") == "created")
    assert srv.send("events.get_task_log", {"task": task})["total"] == 0
    ui.find("#delete").click()
    ui.driver.switch_to.alert.dismiss()  # cancelled: nothing happens
    assert ui.text("#task-status") == "created"
    ui.find("#delete").click()
    assert "Delete this task" in ui.accept_confirm()
    ui.wait_until(lambda: ui.path() == "/tasks")
    reply = srv.request("tasks.get_by_id", {"task": task})
    assert reply.status_code == 400
    assert ui.errors() == []


def test_the_sdk_results_page_link_opens_the_task(
    ui: UiBrowser, world: dict[str, Any], tmp_path: Any
) -> None:
    """The clearml SDK's "results page" (web_server from the server's own clearml.conf
    snippet) leads to the task's page."""
    script = """
        import json, sys
        from clearml import Task
        task = Task.get_task(task_id=sys.argv[1])
        print("RESULT " + json.dumps({"url": task.get_output_log_web_page()}))
    """
    url = h.run_sdk(world["srv"], tmp_path, script, world["main"])["url"]
    assert url.startswith(world["srv"].url + "/projects/")
    ui.driver.get(url)
    ui.wait_until(lambda: ui.path() == f"/tasks/{world['main']}", what="the task page")
    assert ui.text("#task-name") == f"train résumé 'quoted' {world['suffix']}"
