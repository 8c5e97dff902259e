"""A long scalar series in a real headless Chromium: the server samples it as ClearML's server
does (bucket averages), the chart draws the average line inside the buckets' min-max band so a
spike still shows, and the Scalars tab picks up new points while it is open (live.js)."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from ui_browser import UiBrowser

pytestmark = pytest.mark.ui

POINTS = 5000
SPIKE_AT = 2501
SAMPLES = 2000  # hpcagent/server/ui/data.py SCALAR_SAMPLES
CHART = "document.querySelector('.scalar-chart')"


def _value(i: int) -> float:
    return 100.0 if i == SPIKE_AT else 1.0 / (i + 1)


def _add(srv: Any, events: list[dict[str, Any]]) -> None:
    data = b"\n".join(json.dumps(ev).encode() for ev in events)
    assert srv.request("events.add_batch", data=data).status_code == 200


def test_long_series_is_sampled_with_its_min_max_band(
    ui: UiBrowser, embedded_server_session: Any
) -> None:
    srv = embedded_server_session
    task = str(
        srv.send("tasks.create", {"name": f"long {uuid.uuid4().hex[:6]}", "type": "training"})["id"]
    )
    _add(
        srv,
        [
            {"task": task, "type": "training_stats_scalar", "metric": "loss",
             "variant": "train", "iter": i, "value": _value(i), "timestamp": 1_000_000 + i}
            for i in range(POINTS)
        ],
    )  # fmt: skip
    width = math.ceil(POINTS / SAMPLES)  # the real server's bucket width: 3
    buckets = math.ceil(POINTS / width)
    ui.open(f"/tasks/{task}?tab=scalars")
    ui.wait_until(lambda: ui.js(f"return !!{CHART} && !!{CHART}.data"), what="the chart")
    traces = ui.js(f"return {CHART}.data.map(function (t) {{ return t.name; }})")
    assert traces == ["train", "train max", "train min"]  # the line, then its band
    xs = ui.js(f"return {CHART}.data[0].x")
    assert len(xs) == buckets
    assert xs[:3] == [0, width, 2 * width]
    line = ui.js(f"return {CHART}.data[0].y")
    spike = SPIKE_AT // width
    members = [_value(i) for i in range(spike * width, (spike + 1) * width)]
    assert line[spike] == pytest.approx(sum(members) / width)  # the average hides the spike
    assert max(line) < 100.0
    assert max(ui.js(f"return {CHART}.data[1].y")) == 100.0  # the band keeps it
    assert ui.js(f"return {CHART}.data[2].y")[0] == pytest.approx(1.0 / width)
    assert ui.js(f"return {CHART}.data[2].fill") == "tonexty"
    assert ui.text(".sampled-note").startswith(f"{buckets} of {POINTS} points shown")
    ui.screenshot("task-scalars-sampled")
    # the REST endpoint keeps the real server's shape (averages only)
    hist = srv.send("events.scalar_metrics_iter_histogram", {"task": task, "samples": SAMPLES})
    assert set(hist["loss"]["train"]) == {"name", "x", "y"}
    assert hist["loss"]["train"]["y"] == pytest.approx(line)
    # new points while the tab is open: drawn without a reload
    ui.js("window.__notReloaded = 'yes';")
    _add(
        srv,
        [{"task": task, "type": "training_stats_scalar", "metric": "acc", "variant": "val",
          "iter": i, "value": 0.5 + i / 10, "timestamp": 2_000_000 + i} for i in range(3)],
    )  # fmt: skip
    ui.wait_until(lambda: len(ui.find_all(".scalar-chart")) == 2, 60, "the new metric, live")
    assert ui.js("return window.__notReloaded === 'yes';")
    acc = ui.js("return document.querySelector('.scalar-chart[data-metric=acc]').data")
    assert [t["name"] for t in acc] == ["val"]  # 3 points: not sampled, no band
    assert acc[0]["y"] == pytest.approx([0.5, 0.6, 0.7])
    assert ui.errors() == []
