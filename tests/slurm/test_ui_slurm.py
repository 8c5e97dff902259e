"""The web UI on tasks that the real one-host Slurm runs: the embedded server, ``hpcagent-slurm``
as a real process, the real executor in the job, and a real headless Chromium looking at them.

* a task run end to end shows its Slurm job, its console lines (a hostile line as text), a
  scalar chart with the points it reported, its Plotly plot and a downloadable artifact;
* clone -> edit an Arg -> enqueue, all in the UI: the submitter runs the clone with the value;
* abort from the UI (with its confirmation) stops a running job.

The task is a stdlib-only script that reports like the SDK does (``events.add_batch``, the files
server, ``tasks.add_or_update_artifacts``), with its Args on argv (user property
``args-on-argv``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from ui_browser import UiBrowser

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.ui]

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
#SBATCH --ntasks=1
#SBATCH --time=00:10:00
${CLEARML_AGENT_EXECUTE}
"""

REPORTER = r"""
import argparse, base64, json, os, time, urllib.request, uuid

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.5)
p.add_argument("--sleep", type=int, default=0)
a = p.parse_args()
host, tid = os.environ["CLEARML_API_HOST"].rstrip("/"), os.environ["CLEARML_TASK_ID"]
keys = os.environ["CLEARML_API_ACCESS_KEY"] + ":" + os.environ["CLEARML_API_SECRET_KEY"]
basic = base64.b64encode(keys.encode()).decode()
login = urllib.request.Request(host + "/auth.login", headers={"Authorization": "Basic " + basic})
token = json.load(urllib.request.urlopen(login))["data"]["token"]


def post(url, data, content_type="application/json"):
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Authorization": "Bearer " + token, "Content-Type": content_type})
    return json.load(urllib.request.urlopen(req))


print(f"lr={a.lr}", flush=True)
print("<img src=x onerror=alert(1)> hostile line", flush=True)
events = [{"task": tid, "type": "training_stats_scalar", "metric": "loss", "variant": "train",
           "iter": i, "value": a.lr / (i + 1)} for i in range(10)]
figure = {"data": [{"type": "bar", "x": ["a", "b", "c"], "y": [1, 4, 9]}],
          "layout": {"title": {"text": "squares"}}}
events.append({"task": tid, "type": "plot", "metric": "summary", "variant": "bars", "iter": 0,
               "plot_str": json.dumps(figure)})
post(host + "/events.add_batch", "\n".join(json.dumps(e) for e in events).encode())
path = f"slurm-ui/task.{tid}/artifacts/result/result.txt"
content = f"result of {tid} with lr={a.lr}\n".encode()
boundary = uuid.uuid4().hex
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{path}\"; "
        f"filename=\"result.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
body += content + f"\r\n--{boundary}--\r\n".encode()
post(host + "/files", body, f"multipart/form-data; boundary={boundary}")
artifact = {"key": "result", "type": "custom", "mode": "output", "uri": f"{host}/files/{path}",
            "content_size": len(content)}
post(host + "/tasks.add_or_update_artifacts",
     json.dumps({"task": tid, "force": True, "artifacts": [artifact]}).encode())
print("reported", flush=True)
for i in range(a.sleep):
    print(f"tick {i}", flush=True)
    time.sleep(1)
"""


class Rig(h.SubmitterRig):
    """The server, one queue with TEMPLATE and a running ``hpcagent-slurm``."""

    def __init__(self, work: Path, server: Any) -> None:
        self.queue_name = f"ui-run-{work.name}"
        self.queue = str(server.send("queues.create", {"name": self.queue_name})["id"])
        template = work / "run.template"
        template.write_text(TEMPLATE)
        self.start(
            work, server, scheduler="slurm", templates=[str(template)], queues=[self.queue_name]
        )

    def create(self, name: str, lr: str, sleep: int = 0) -> str:
        args = {"lr": lr, "sleep": str(sleep)} if sleep else {"lr": lr}
        body = {
            "name": name,
            "type": "training",
            "script": {
                "binary": "python3",
                "entry_point": "report.py",
                "diff": REPORTER,
                "requirements": {"pip": ""},
            },
            "hyperparams": {
                "Args": {k: {"section": "Args", "name": k, "value": v} for k, v in args.items()},
                "properties": {
                    "args-on-argv": {
                        "section": "properties",
                        "name": "args-on-argv",
                        "value": "true",
                    }
                },
            },
        }
        return str(self.server.send("tasks.create", body)["id"])


@pytest.fixture(scope="module")
def rig(embedded_server_session: Any) -> Iterator[Rig]:
    h.require_slurm()
    made = Rig(h.slurm_workdir("ui"), embedded_server_session)
    try:
        yield made
    finally:
        made.stop()


def _squeue_state(job: str) -> str:
    res = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    return res.stdout.strip()


def test_task_run_by_slurm_in_the_ui(rig: Rig, ui: UiBrowser) -> None:
    tid = rig.create("slurm ui run", "0.125")
    ui.open(f"/tasks/{tid}")
    ui.find(f"#enqueue-queue option[value='{rig.queue}']").click()
    ui.find("#enqueue").click()
    ui.wait_until(lambda: ui.text("#task-status") == "queued")
    # the page stays open: the task's end shows without a reload (live.js), then the tail of
    # the job's output file that the submitter read on the cluster
    ui.js("window.__notReloaded = 'yes';")
    ui.wait_until(
        lambda: ui.text("#task-status") in ("completed", "failed", "stopped"), 300, "task end"
    )
    task = rig.task(tid)
    assert task["status"] == "completed", task
    assert ui.text("#task-status") == "completed"
    ui.wait_until(lambda: ui.find_all("#job-output-tail"), 60, "the output tail, live")
    assert ui.js("return window.__notReloaded === 'yes';")
    tail = ui.text("#job-output-tail").splitlines()
    assert "reported" in tail
    assert "<img src=x onerror=alert(1)> hostile line" in tail
    assert ui.find_all("#job-output-tail img") == []
    props = {k: v["value"] for k, v in rig.task(tid)["hyperparams"]["properties"].items()}
    job = props["job-id"]
    assert props["job-end"] == "COMPLETED"
    output = Path(props["job-output"])
    assert output == rig.work / f"task-{tid}-{job}.log"
    assert ui.text("#job-output") == str(output)
    assert ui.text("#slurm-state") == "COMPLETED"
    # the table: the Slurm job and its final state
    ui.open(f"/tasks?queue={rig.queue}&name=slurm ui run")
    row = ui.wait(f"tr[data-task='{tid}']")
    cells = [c.text for c in row.find_elements("css selector", "td")]
    assert cells[1] == "completed"
    assert cells[6] == job
    assert cells[7] == "COMPLETED"
    ui.screenshot("slurm-tasks")
    ui.open(f"/tasks/{tid}")
    assert ui.text("#slurm-job") == job
    ui.screenshot("slurm-task-info")
    # console: the lines the task printed; the hostile one as text
    ui.open(f"/tasks/{tid}?tab=console")
    ui.wait_until(
        lambda: "reported" in [e.text for e in ui.find_all("#console .line")], 30, "console"
    )
    lines = [e.text for e in ui.find_all("#console .line")]
    assert "lr=0.125" in lines
    assert "<img src=x onerror=alert(1)> hostile line" in lines
    assert ui.find_all("#console img") == []
    assert not ui.alert_open()
    ui.screenshot("slurm-console")
    # scalars: the reported points
    ui.open(f"/tasks/{tid}?tab=scalars")
    ui.wait_until(lambda: ui.js("return !!document.querySelector('.scalar-chart .main-svg')"))
    assert ui.js("return document.querySelector('.scalar-chart').data[0].x") == list(range(10))
    ys = ui.js("return document.querySelector('.scalar-chart').data[0].y")
    assert ys == [0.125 / (i + 1) for i in range(10)]
    # the Plotly plot
    ui.open(f"/tasks/{tid}?tab=plots")
    ui.wait_until(lambda: ui.js("return !!document.querySelector('.plot-chart .main-svg')"))
    assert ui.js("return document.querySelector('.plot-chart').data[0].y") == [1, 4, 9]
    # the artifact, downloaded by the browser from the files server
    ui.open(f"/tasks/{tid}?tab=artifacts")
    ui.wait("#artifacts a.artifact-link").click()
    assert ui.downloaded("result.txt").read_text() == f"result of {tid} with lr=0.125\n"
    assert ui.errors() == []


def test_clone_edit_enqueue_runs_with_the_new_value(rig: Rig, ui: UiBrowser) -> None:
    original = rig.create("slurm ui original", "0.5")
    clone = ui.clone_and_edit(original, "slurm ui clone lr=0.75", "Args/lr", "0.75")
    ui.save_and_enqueue(rig.queue)
    rig.wait_status(clone, ("completed", "failed", "stopped"))
    assert rig.task(clone)["status"] == "completed"
    lines = h.task_log_lines(rig.server, clone)
    assert "lr=0.75" in lines
    assert "lr=0.5" not in lines
    assert rig.task(original)["status"] == "created"  # the original was never run


def test_abort_from_the_ui_stops_a_running_job(rig: Rig, ui: UiBrowser) -> None:
    tid = rig.create("slurm ui abort", "0.1", sleep=300)
    rig.server.send("tasks.enqueue", {"task": tid, "queue": rig.queue})
    h.wait_for(lambda: "tick 1" in h.task_log_lines(rig.server, tid), timeout=180, interval=0.5)
    job = rig.task(tid)["hyperparams"]["properties"]["job-id"]["value"]
    assert _squeue_state(job) == "RUNNING"
    ui.open(f"/tasks/{tid}")
    assert ui.text("#slurm-state") == "RUNNING"
    ui.find("#abort").click()
    ui.accept_confirm()
    ui.wait("#task-status")
    rig.wait_status(tid, ("stopped", "failed", "completed"), timeout=120)
    assert rig.task(tid)["status"] == "stopped"
    h.wait_for(lambda: _squeue_state(job) == "", timeout=60, interval=0.5)
    lines = h.task_log_lines(rig.server, tid)
    assert "tick 100" not in lines


def test_compare_two_slurm_runs_with_different_lr(rig: Rig, ui: UiBrowser) -> None:
    """Two runs made by hpcagent-slurm, ticked in the table and compared: ``lr`` is marked as
    differing and both runs' loss curves are overlaid in one chart."""
    runs = [rig.create(f"slurm ui compare lr={lr}", lr) for lr in ("0.25", "0.5")]
    for tid in runs:
        rig.server.send("tasks.enqueue", {"task": tid, "queue": rig.queue})
    for tid in runs:
        rig.wait_status(tid, ("completed", "failed", "stopped"))
        assert rig.task(tid)["status"] == "completed"
    ui.open(f"/tasks?queue={rig.queue}&name=slurm ui compare&sort=name")
    for tid in runs:
        ui.find(f"tr[data-task='{tid}'] .select-row").click()
    ui.find("#compare-selected").click()
    row = ui.wait("tr[data-param='Args/lr']")
    assert "differs" in row.get_attribute("class")
    assert [c.text for c in row.find_elements("css selector", "td")][2:] == ["0.25", "0.5"]
    chart = "document.querySelector('.compare-chart[data-metric=loss]')"
    ui.wait_until(lambda: ui.js(f"return !!{chart} && !!{chart}.data"), what="the loss chart")
    traces = ui.js(f"return {chart}.data.map(function (t) {{ return t.meta.task; }})")
    assert traces == runs  # one "train" curve per run
    for i, lr in enumerate((0.25, 0.5)):
        assert ui.js(f"return {chart}.data[{i}].y") == [lr / (n + 1) for n in range(10)]
    ui.screenshot("slurm-compare")
    assert ui.errors() == []
