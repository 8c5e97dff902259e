"""The operations pages on the real one-host Slurm, in a real headless Chromium: a running
``hpcagent-slurm`` serving two queues and a running ``hpcagent daemon`` serving a third.

* the queues page shows the queues with their workers;
* a job held by ``#SBATCH --begin=now+1hour`` (the "later" queue's template) shows as
  PENDING (BeginTime) on the workers page: what the submitter reported, not what the server
  asked Slurm (the server never talks to the cluster);
* moving the last entry of a queue to the top in the UI makes the submitter run it first
  (``--max-jobs 1``: the queue's slot is held by a task that waits for a file the test writes);
* the home page's figures match the server's state.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from ops_figures import home_figures, server_figures
from ui_browser import UiBrowser

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.ui]

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
#SBATCH --ntasks=1
#SBATCH --time=00:10:00
${CLEARML_AGENT_EXECUTE}
"""
LATER = TEMPLATE.replace("#SBATCH --ntasks=1\n", "#SBATCH --ntasks=1\n#SBATCH --begin=now+1hour\n")

SCRIPT = r"""
import argparse, os, time
p = argparse.ArgumentParser()
p.add_argument("--flag", default="")
flag = p.parse_args().flag
deadline = time.time() + 300
while flag and not os.path.exists(flag) and time.time() < deadline:
    time.sleep(0.2)
print("ran", os.environ.get("SLURM_JOB_ID"), flush=True)
"""


class Rig(h.SubmitterRig):
    """The server, three queues, ``hpcagent-slurm`` (two of them, --max-jobs 1) and a daemon."""

    def __init__(self, work: Path, server: Any) -> None:
        tag = work.name[-6:]
        self.names = {k: f"ops {k} {tag}" for k in ("slurm", "later", "local")}
        self.queues = {
            k: str(server.send("queues.create", {"name": n})["id"]) for k, n in self.names.items()
        }
        plain, later = work / "plain.template", work / "later.template"
        plain.write_text(TEMPLATE)
        later.write_text(LATER)
        self.start(
            work,
            server,
            scheduler="slurm",
            templates=[str(plain), str(later)],
            queues=[self.names["slurm"], self.names["later"]],
            extra=["--max-jobs", "1"],
        )
        daemon_conf = work / "daemon.conf"
        daemon_conf.write_text(json.dumps({"api": h.api_section(server)}))
        env = {k: v for k, v in h.clean_env().items() if not k.startswith("CUDA")}
        self.daemon_log = work / "daemon.log"
        daemon_argv = [
            sys.executable, "-c", "from hpcagent.cli import main; main()",
            "--config-file", str(daemon_conf), "daemon", "--state-dir", str(work / "daemon"),
            "--queue", self.names["local"], "--poll-interval", "0.5",
        ]  # fmt: skip
        self.daemon = h.start_logged(daemon_argv, self.daemon_log, cwd=work, env=env)

    def create(self, name: str, flag: Path | None = None) -> str:
        body: dict[str, Any] = {
            "name": name,
            "type": "training",
            "script": {
                "binary": "python3",
                "entry_point": "wait.py",
                "diff": SCRIPT,
                "requirements": {"pip": ""},
            },
        }
        if flag is not None:
            body["hyperparams"] = {
                "Args": {"flag": {"section": "Args", "name": "flag", "value": str(flag)}},
                "properties": {
                    "args-on-argv": {"section": "properties", "name": "args-on-argv",
                                     "value": "true"},
                },
            }  # fmt: skip
        return str(self.server.send("tasks.create", body)["id"])

    def enqueue_task(self, task: str, queue: str) -> None:
        self.server.send("tasks.enqueue", {"task": task, "queue": self.queues[queue]})

    def worker_serving(self, queue: str) -> str:
        for worker in self.server.send("workers.get_all", {})["workers"]:
            if any(q.get("id") == self.queues[queue] for q in worker.get("queues") or []):
                return str(worker["id"])
        return ""

    def executor_of(self, task: str) -> str:
        for worker in self.server.send("workers.get_all", {})["workers"]:
            if (worker.get("task") or {}).get("id") == task:
                return str(worker["id"])
        return ""

    def job(self, task: str) -> str:
        props = h.get_task(self.server, task)["hyperparams"].get("properties") or {}
        return str((props.get("job-id") or {}).get("value") or "")

    def stop(self) -> None:
        super().stop()
        h.stop_process(self.daemon)


@pytest.fixture(scope="module")
def rig(embedded_server_session: Any) -> Iterator[Rig]:
    h.require_slurm()
    made = Rig(h.slurm_workdir("ui-ops"), embedded_server_session)
    try:
        yield made
    finally:
        made.stop()


def _loaded(ui: UiBrowser) -> None:
    ui.wait_until(lambda: ui.js("return document.readyState") == "complete", 30, "page load")


def _job_cell(ui: UiBrowser, job: str) -> str:
    ui.open("/workers")
    _loaded(ui)
    cells = ui.find_all(f"tr.job[data-job='{job}'] td.job-state")
    return str(cells[0].text) if cells else ""


def _executor_holds(ui: UiBrowser, task: str) -> bool:
    ui.open("/workers")
    _loaded(ui)
    for section in ui.find_all("section.worker"):
        links = section.find_elements("css selector", f"a.worker-task[href='/tasks/{task}']")
        if links:
            wid = section.get_attribute("data-worker")
            row = ui.find_all(f"tr.worker-row[data-worker='{wid}'][data-role='executor']")
            return bool(row) and row[0].find_element("css selector", ".worker-held").text == "1"
    return False


def test_queues_workers_and_moving_to_the_top_in_the_ui(rig: Rig, ui: UiBrowser) -> None:
    submitter = h.wait_for(lambda: rig.worker_serving("slurm"), timeout=60)
    daemon = h.wait_for(lambda: rig.worker_serving("local"), timeout=60)
    assert submitter != daemon
    # a task held an hour by the "later" template: PENDING (BeginTime) on the workers page
    held = rig.create("ops held by --begin")
    rig.enqueue_task(held, "later")
    job = h.wait_for(lambda: rig.job(held), timeout=120)
    ui.wait_until(lambda: _job_cell(ui, job) == "PENDING (BeginTime)", 60, "BeginTime")
    row = ui.find(f"tr.job[data-job='{job}']")
    assert row.get_attribute("data-task") == held
    assert row.find_element("css selector", ".job-reason").text == "BeginTime"
    section = ui.find(f"section.worker[data-worker='{submitter}']")
    assert section.find_elements("css selector", f"tr.job[data-job='{job}']")
    worker_row = ui.find(f"tr.worker-row[data-worker='{submitter}']")
    assert worker_row.find_element("css selector", ".worker-role").text == "submitter"
    queues_text = worker_row.find_element("css selector", ".worker-queues").text
    assert rig.names["slurm"] in queues_text
    assert rig.names["later"] in queues_text
    assert ui.find(f"tr.worker-row[data-worker='{daemon}'] .worker-role").text == "daemon"
    ui.wait_until(
        lambda: (
            ui.find(f".worker-charts[data-worker='{submitter}']").get_attribute("data-loaded")
            == "1"
        )
    )
    ui.screenshot("slurm-workers")
    # the slot of the "slurm" queue (--max-jobs 1) is held by a task waiting for a file
    flag = rig.work / "go"
    first = rig.create("ops first (holds the slot)", flag)
    rig.enqueue_task(first, "slurm")
    h.wait_for(lambda: rig.job(first), timeout=120)
    # its executor (hpcagent execute in the job) is a worker of its own, holding the task
    rig.wait_status(first, ("in_progress",), timeout=180)
    ui.wait_until(lambda: _executor_holds(ui, first), 60, "executor row")
    b, c = rig.create("ops b"), rig.create("ops c")
    rig.enqueue_task(b, "slurm")
    rig.enqueue_task(c, "slurm")
    ui.open("/queues")
    _loaded(ui)
    for key, worker in (("slurm", submitter), ("later", submitter), ("local", daemon)):
        section = ui.find(f"#queue-{rig.queues[key]}")
        assert section.find_element("css selector", ".queue-name").text == rig.names[key]
        assert worker in section.find_element("css selector", ".queue-workers").text
    rows = ui.find_all(f"#queue-{rig.queues['slurm']} tr.entry")
    assert [r.get_attribute("data-task") for r in rows] == [b, c]
    ui.screenshot("slurm-queues")
    ui.click_and_load(f"#queue-{rig.queues['slurm']} tr.entry[data-task='{c}'] button.op-top")
    _loaded(ui)
    rows = ui.find_all(f"#queue-{rig.queues['slurm']} tr.entry")
    assert [r.get_attribute("data-task") for r in rows] == [c, b]
    assert rig.job(b) == rig.job(c) == ""  # neither was pulled while the slot was held
    flag.write_text("go")
    for task in (first, c, b):
        rig.wait_status(task, ("completed", "failed", "stopped"))
        assert h.get_task(rig.server, task)["status"] == "completed"
    # c ran first: submitted and started before b
    assert int(rig.job(c)) < int(rig.job(b))
    started = {t: h.get_task(rig.server, t)["started"] for t in (b, c)}
    assert started[c] < started[b]
    # the held task: aborted, its job cancelled by the submitter (our own job only)
    rig.server.send("tasks.stop", {"task": held, "force": True})
    rig.wait_status(held, ("stopped",), timeout=120)
    h.wait_for(lambda: _job_cell(ui, job) == "", timeout=60)
    assert ui.errors() == []


def test_home_figures_on_the_cluster(rig: Rig, ui: UiBrowser) -> None:
    flag = rig.work / "home-go"
    running = rig.create("ops running for home", flag)
    rig.enqueue_task(running, "slurm")
    rig.wait_status(running, ("in_progress",), timeout=180)
    h.wait_for(lambda: rig.executor_of(running), timeout=60)
    waiting = rig.create("ops waiting for home")
    rig.enqueue_task(waiting, "slurm")  # --max-jobs 1: it waits behind the running one
    try:
        ui.open("/home")
        ui.wait("#figures")
        figures = server_figures(rig.server)
        assert figures["queues"][rig.queues["slurm"]] == 1
        assert figures["running"] >= 1
        # the page is live: it settles on the server's figures (workers report meanwhile)
        ui.wait_until(lambda: home_figures(ui) == server_figures(rig.server), 15, "home")
        assert ui.find_all(f"#home-running li[data-task='{running}']")
        ui.screenshot("slurm-home")
    finally:
        (rig.work / "home-go").write_text("go")
    rig.wait_status(waiting, ("completed", "failed", "stopped"))
    assert h.get_task(rig.server, waiting)["status"] == "completed"
