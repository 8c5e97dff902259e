"""Reading events back (hpcagent/server/routes/event_reads.py) over HTTP: the real server's
sampling of long scalar series, single values, multi-task reads, plots, debug images and their
sample navigation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hpcagent.server.routes.event_reads import SINGLE_VALUE_ITER, bucket_interval

Server = Any  # tests/conftest.py::EmbeddedServer


@pytest.fixture
def srv(embedded_server_session: Server) -> Server:
    return embedded_server_session


def _task(srv: Server, name: str = "reads") -> str:
    task_id: str = srv.send("tasks.create", {"name": name, "type": "training"})["id"]
    return task_id


def _scalar(task: str, metric: str, variant: str, it: int, value: float) -> dict[str, Any]:
    return {"type": "training_stats_scalar", "task": task, "metric": metric,
            "variant": variant, "iter": it, "value": value, "timestamp": 1000 + it}  # fmt: skip


def test_bucket_width_follows_the_real_server() -> None:
    assert bucket_interval(0, 5, 3, 10) == 1  # fewer points than samples: every point
    assert bucket_interval(0, 999, 1000, 100) == 10  # ceil(1000 / 100)
    assert bucket_interval(0, 1000, 1001, 300) == 4  # ceil(1001 / 300)
    assert bucket_interval(7, 7, 5000, 2000) == 1


def test_sampling_follows_the_real_server(srv: Server) -> None:
    task = _task(srv, "sampled")
    events = [_scalar(task, "few", "v", it, value) for it, value in ((0, 1.0), (1, 2.0), (5, 3.0))]
    events += [_scalar(task, "long", "v", i, float(i)) for i in range(1000)]
    events += [_scalar(task, "odd", "v", i, 0.0) for i in range(1001)]
    events += [_scalar(task, "negative", "v", i, float(i)) for i in range(-10, 990)]
    srv.request("events.add_batch", events)

    def series(metric: str, samples: int) -> tuple[list[int], list[float]]:
        body = {"task": task, "samples": samples, "metrics": [{"metric": metric}]}
        data = srv.send("events.scalar_metrics_iter_histogram", body)[metric]["v"]
        assert set(data) == {"name", "x", "y"}  # the real server's shape, nothing more
        return data["x"], data["y"]

    assert series("few", 10) == ([0, 1, 5], [1.0, 2.0, 3.0])
    # 1000 iterations into 100 samples: buckets of 10, averaged, keyed by their start
    xs, ys = series("long", 100)
    assert len(xs) == 100
    assert xs[:3] == [0, 10, 20]
    assert ys[0] == pytest.approx(4.5)
    # a range that does not divide: ceil(1001/300)=4 -> ceil(1001/4)=251 buckets
    xs, _ = series("odd", 300)
    assert len(xs) == math.ceil(1001 / 4) == 251
    # negative iterations: buckets start at multiples of the width (floor, as x // width)
    xs, ys = series("negative", 100)
    assert xs[:3] == [-10, 0, 10]
    assert ys[0] == pytest.approx(-5.5)


def test_long_series_sampled_and_single_values_apart(srv: Server) -> None:
    task = _task(srv)
    events = [_scalar(task, "loss", "train", i, float(i)) for i in range(500)]
    events.append(_scalar(task, "Summary", "accuracy", SINGLE_VALUE_ITER, 0.9))
    assert srv.request("events.add_batch", events).json()["data"]["added"] == 501
    hist = srv.send("events.scalar_metrics_iter_histogram", {"task": task, "samples": 50})
    assert list(hist) == ["loss"]
    assert len(hist["loss"]["train"]["x"]) == 50
    assert hist["loss"]["train"]["y"][0] == pytest.approx(4.5)
    single = srv.send("events.get_task_single_value_metrics", {"tasks": [task]})
    values = single["tasks"][0]["values"]
    assert single["tasks"][0]["task_name"] == "reads"
    assert [(v["metric"], v["variant"], v["value"]) for v in values] == [
        ("Summary", "accuracy", 0.9)
    ]
    names = srv.send("events.get_scalar_metrics_and_variants", {"task": task})
    assert names["metrics"] == {"Summary": ["accuracy"], "loss": ["train"]}
    metrics = srv.send("events.get_task_metrics", {"tasks": [task]})
    assert metrics["metrics"] == [{"task": task, "metrics": ["Summary", "loss"]}]
    bad = srv.request("events.scalar_metrics_iter_histogram", {"task": task, "samples": 0})
    assert bad.status_code == 400


def test_multi_task_scalars_and_metrics(srv: Server) -> None:
    one, two = _task(srv, "one"), _task(srv, "two")
    events = [_scalar(one, "acc", "val", i, 0.1 * i) for i in range(3)]
    events += [_scalar(two, "acc", "val", i, 0.2 * i) for i in range(2)]
    events += [_scalar(two, "loss", "train", 0, 1.0)]
    srv.request("events.add_batch", events)
    multi = srv.send(
        "events.multi_task_scalar_metrics_iter_histogram", {"tasks": [one, two], "samples": 10}
    )
    assert multi["metrics"]["acc"]["val"][one]["name"] == "one"
    assert multi["metrics"]["acc"]["val"][one]["x"] == [0, 1, 2]
    assert multi["metrics"]["acc"]["val"][two]["y"] == [0.0, 0.2]
    assert list(multi["metrics"]["loss"]["train"]) == [two]
    union = srv.send("events.get_multi_task_metrics", {"tasks": [one, two]})
    assert union["metrics"] == [
        {"metric": "acc", "variants": ["val"]},
        {"metric": "loss", "variants": ["train"]},
    ]
    missing = srv.request("events.get_multi_task_metrics", {"tasks": ["nope"]})
    assert missing.status_code == 400


def _plot(task: str, metric: str, variant: str, it: int) -> dict[str, Any]:
    return {"type": "plot", "task": task, "metric": metric, "variant": variant, "iter": it,
            "plot_str": json.dumps({"data": [{"y": [it]}]}), "timestamp": 2000 + it}  # fmt: skip


def test_plots_last_iterations_per_variant(srv: Server) -> None:
    task = _task(srv, "plotter")
    events = [_plot(task, "m", v, i) for i in range(4) for v in ("b", "a")]
    events.append({**_plot(task, "m", "a", 3), "plot_str": '{"data": "re-sent"}'})
    srv.request("events.add_batch", events)
    plots = srv.send("events.get_task_plots", {"task": task, "iters": 2})["plots"]
    assert [(p["variant"], p["iter"]) for p in plots] == [("a", 3), ("a", 2), ("b", 3), ("b", 2)]
    assert plots[0]["plot_str"] == '{"data": "re-sent"}'  # the latest report wins
    only_b = srv.send(
        "events.get_task_plots", {"task": task, "metrics": [{"metric": "m", "variants": ["b"]}]}
    )["plots"]
    assert [(p["variant"], p["iter"]) for p in only_b] == [("b", 3)]
    multi = srv.send("events.get_multi_task_plots", {"tasks": [task], "iters": 1})["plots"]
    leaf = multi["m"]["a"][task]["3"]
    assert leaf["name"] == "plotter"
    assert [p["iter"] for p in leaf["plots"]] == [3]


def _image(task: str, variant: str, it: int) -> dict[str, Any]:
    return {"type": "training_debug_image", "task": task, "metric": "img", "variant": variant,
            "iter": it, "url": f"http://x/files/{variant}_{it}.png",
            "timestamp": 3000 + it}  # fmt: skip


def test_debug_images_pages_and_sample_navigation(srv: Server) -> None:
    task = _task(srv, "imager")
    srv.request("events.add_batch", [_image(task, v, i) for i in range(3) for v in ("a", "b")])
    body = {"metrics": [{"task": task, "metric": "img"}], "iters": 2}
    first = srv.send("events.debug_images", body)
    iters = first["metrics"][0]["iterations"]
    assert [it["iter"] for it in iters] == [2, 1]
    assert [e["variant"] for e in iters[0]["events"]] == ["a", "b"]
    second = srv.send("events.debug_images", {**body, "scroll_id": first["scroll_id"]})
    assert [it["iter"] for it in second["metrics"][0]["iterations"]] == [0]
    third = srv.send("events.debug_images", {**body, "scroll_id": second["scroll_id"]})
    assert third["metrics"][0]["iterations"] == []

    sample = srv.send(
        "events.get_debug_image_sample", {"task": task, "metric": "img", "variant": "b"}
    )
    assert (sample["event"]["variant"], sample["event"]["iter"]) == ("b", 2)
    assert (sample["min_iteration"], sample["max_iteration"]) == (0, 2)
    prev = srv.send(
        "events.next_debug_image_sample", {"task": task, "scroll_id": sample["scroll_id"]}
    )
    assert (prev["event"]["variant"], prev["event"]["iter"]) == ("a", 2)
    back = srv.send(
        "events.next_debug_image_sample",
        {"task": task, "scroll_id": prev["scroll_id"], "navigate_earlier": False},
    )
    assert (back["event"]["variant"], back["event"]["iter"]) == ("b", 2)
    end = srv.send(
        "events.next_debug_image_sample",
        {"task": task, "scroll_id": back["scroll_id"], "navigate_earlier": False},
    )
    assert end["event"] is None
    older = srv.send(
        "events.next_debug_image_sample",
        {"task": task, "scroll_id": sample["scroll_id"], "next_iteration": True},
    )
    assert (older["event"]["variant"], older["event"]["iter"]) == ("b", 1)
    at_iter = srv.send(
        "events.get_debug_image_sample",
        {"task": task, "metric": "img", "variant": "a", "iteration": 0},
    )
    assert at_iter["event"]["url"] == "http://x/files/a_0.png"
    garbage = srv.request("events.next_debug_image_sample", {"task": task, "scroll_id": "%%%"})
    assert garbage.status_code == 400
