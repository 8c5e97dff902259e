"""Comparing tasks in a real headless Chromium: tick tasks in the table, Compare, and the page
overlays their scalars (one chart per metric, a trace per task and variant), marks the
hyperparameters and execution fields that differ, and refuses fewer than 2 or more than 10.

The same comparison of two runs made by ``hpcagent-slurm`` is in tests/slurm/test_ui_slurm.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from ui_browser import UiBrowser

pytestmark = pytest.mark.ui

HOSTILE = "<img src=x onerror=alert(1)>"


def _run(srv: Any, name: str, lr: str, commit: str, requirements: str) -> str:
    body = {
        "name": name,
        "type": "training",
        "script": {
            "repository": "https://example.invalid/repo.git",
            "branch": "main",
            "version_num": commit,
            "entry_point": "train.py",
            "requirements": {"pip": requirements},
        },
        "container": {"image": "python:3.11"},
        "hyperparams": {
            "Args": {
                "lr": {"section": "Args", "name": "lr", "value": lr},
                "epochs": {"section": "Args", "name": "epochs", "value": "10"},
            }
        },
    }
    task = str(srv.send("tasks.create", body)["id"])
    events = [
        {"task": task, "type": "training_stats_scalar", "metric": metric, "variant": variant,
         "iter": i, "value": float(lr) / (i + 1) + offset, "timestamp": 1_000_000 + i}
        for i in range(10)
        for metric, variant, offset in (("loss", "train", 0.0), ("loss", "val", 0.1),
                                        ("acc", "val", 0.5))
    ]  # fmt: skip
    data = b"\n".join(json.dumps(ev).encode() for ev in events)
    assert srv.request("events.add_batch", data=data).status_code == 200
    return task


def test_compare_two_runs_with_different_lr(ui: UiBrowser, embedded_server_session: Any) -> None:
    srv = embedded_server_session
    tag = f"cmp-{uuid.uuid4().hex[:6]}"
    one = _run(srv, f"{tag} a lr 0.1", "0.1", "aaa111", "numpy==1.26\ntorch==2.3\n")
    two = _run(srv, f"{tag} b {HOSTILE}", "0.2", "bbb222", "numpy==1.26\ntorch==2.4\n")
    ui.open(f"/tasks?name={tag}&sort=name")
    ui.find(f"tr[data-task='{one}'] .select-row").click()
    ui.find("#compare-selected").click()
    assert "Tick 2 to 10 tasks" in ui.text("#compare-note")  # one ticked: refused
    ui.find(f"tr[data-task='{two}'] .select-row").click()
    ui.find("#compare-selected").click()
    ui.wait("#compare-params")
    assert ui.path() == f"/compare?ids={one}&ids={two}"  # in the table's order
    # hyperparameters: lr differs and is marked, epochs is the same
    lr = ui.find("tr[data-param='Args/lr']")
    assert "differs" in lr.get_attribute("class")
    assert [c.text for c in lr.find_elements("css selector", "td")][2:] == ["0.1", "0.2"]
    assert "same" in ui.find("tr[data-param='Args/epochs']").get_attribute("class")
    ui.find("#only-differences").click()
    assert not ui.find("tr[data-param='Args/epochs']").is_displayed()
    assert ui.find("tr[data-param='Args/lr']").is_displayed()
    # execution: the commit and one requirement differ, the image does not
    assert "differs" in ui.find("tr[data-field='Commit']").get_attribute("class")
    assert "same" in ui.find("tr[data-field='Container image']").get_attribute("class")
    changed = [e.text for e in ui.find_all("tr[data-field='Requirements'] span.changed")]
    assert changed == ["torch==2.3", "torch==2.4"]
    # scalars: a chart per metric, both runs' curves overlaid (a trace per task and variant)
    chart = "document.querySelector('.compare-chart[data-metric=loss]')"
    ui.wait_until(lambda: ui.js(f"return !!{chart} && !!{chart}.data"), what="the loss chart")
    traces = ui.js(
        f"return {chart}.data.map(function (t) {{ return [t.meta.task, t.meta.variant, t.name]; }})"
    )
    assert [t[:2] for t in traces] == [[one, "train"], [two, "train"], [one, "val"], [two, "val"]]
    assert traces[1][2] == f"{tag} b {HOSTILE} · train"
    ys = ui.js(f"return {chart}.data[1].y")
    assert ys == pytest.approx([0.2 / (i + 1) for i in range(10)])
    assert len(ui.find_all(".compare-chart")) == 2  # acc and loss
    assert ui.find_all("img") == []  # the hostile name is text
    assert not ui.alert_open()
    ui.screenshot("compare")
    assert ui.errors() == []


def test_compare_refuses_too_few_too_many_and_unknown_ids(
    ui: UiBrowser, embedded_server_session: Any
) -> None:
    srv = embedded_server_session
    session = ui.session()
    task = str(srv.send("tasks.create", {"name": "cmp alone", "type": "training"})["id"])
    assert session.get(f"{srv.url}/compare?ids={task}").status_code == 400
    many = "&".join(f"ids={uuid.uuid4().hex}" for _ in range(11))
    reply = session.get(f"{srv.url}/compare?{many}")
    assert reply.status_code == 400
    assert "Compare 2 to 10 tasks" in reply.text
    reply = session.get(f"{srv.url}/compare?ids={task}&ids={'f' * 32}")
    assert reply.status_code == 400
    assert "Unknown task ids" in reply.text
    data = session.get(f"{srv.url}/data/compare/scalars?ids={task}")
    assert data.status_code == 400
    assert "error" in data.json()
