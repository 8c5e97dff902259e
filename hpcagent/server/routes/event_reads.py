"""Reading reported events back, as clearml-server answers (API 2.23 shapes):

* scalars: ``scalar_metrics_iter_histogram``, ``multi_task_scalar_metrics_iter_histogram``
  (sampled like the real server: a series with at least ``samples`` points is cut into
  buckets of ``ceil((max_iter - min_iter + 1) / samples)`` iterations, each answered by its
  first iteration and the average value), ``get_task_single_value_metrics`` (the reports at
  iteration -2**31, which the histograms leave out), ``get_scalar_metrics_and_variants``,
  ``get_task_metrics``, ``get_multi_task_metrics``;
* plots: ``get_task_plots``, ``get_multi_task_plots`` (the last ``iters`` iterations of each
  metric/variant);
* debug images: ``debug_images`` (the last ``iters`` iterations per task and metric, paged
  with ``scroll_id``), ``get_debug_image_sample`` and ``next_debug_image_sample`` (one image,
  then its neighbours by iteration and variant).

A re-reported plot or image (same task, metric, variant, iteration) is read back once, the
latest. Functions that the web UI needs take ``(store, ...)`` plain arguments.
"""

from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING, Any

import orjson

from hpcagent.server.fields import (
    VALIDATION,
    ApiFault,
    opt_bool,
    opt_int,
    opt_list,
    opt_str,
    opt_str_list,
    req_str,
)

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler
    from hpcagent.server.store import Store

SCALAR = "training_stats_scalar"
PLOT = "plot"
IMAGE = "training_debug_image"
SINGLE_VALUE_ITER = -(2**31)  # the SDK's report_single_value iteration
DEFAULT_SAMPLES = 2000
MAX_SAMPLES = 6000
MetricFilter = dict[str, set[str]] | None


def clean(doc: bytes) -> dict[str, Any]:
    """A stored event as the API returns it."""
    ev: dict[str, Any] = orjson.loads(doc)
    ev.pop("method", None)
    return ev


def metric_filter(body: dict[str, Any], field: str = "metrics") -> MetricFilter:
    """``{metric: {variants}}`` of a ``[{metric, variants}]`` field (None: everything)."""
    items = opt_list(body, field)
    if not items:
        return None
    wanted: dict[str, set[str]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), str):
            raise ApiFault(
                VALIDATION,
                f"Validation error: field '{field}' must be an array of {{metric, variants}}",
                {"field": field},
            )
        variants = item.get("variants") or []
        if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
            raise ApiFault(
                VALIDATION, f"Validation error: '{field}[].variants' must be strings", {}
            )
        wanted.setdefault(item["metric"], set()).update(variants)
    return wanted


def wanted(flt: MetricFilter, metric: str | None, variant: str | None) -> bool:
    if flt is None:
        return True
    if metric not in flt:
        return False
    variants = flt[metric]
    return not variants or variant in variants


def _task_ids(ctx: Ctx, body: dict[str, Any], field: str = "tasks") -> list[str]:
    ids = opt_str_list(body, field)
    if not ids:
        raise ApiFault(
            VALIDATION, f"Validation error: missing required field '{field}'", {"field": field}
        )
    for task_id in ids:
        ctx.store.get_task(task_id)
    return ids


def _latest_events(
    store: Store, task_ids: list[str], ev_type: str, flt: MetricFilter
) -> list[dict[str, Any]]:
    """Events of one type, the latest per (task, metric, variant, iteration)."""
    marks = ",".join("?" * len(task_ids))
    rows = store.conn.execute(
        f"SELECT metric, variant, doc FROM events WHERE task IN ({marks}) AND type=? "  # noqa: S608
        "ORDER BY seq",
        (*task_ids, ev_type),
    )
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for metric, variant, doc in rows:
        if wanted(flt, metric, variant):
            ev = clean(doc)
            latest[(ev.get("task"), metric or "", variant or "", ev.get("iter") or 0)] = ev
    return list(latest.values())


def _top_iterations(events: list[dict[str, Any]], iters: int) -> list[dict[str, Any]]:
    """Per (task, metric, variant) the events of its last ``iters`` iterations, ordered by
    metric, variant, then iteration descending (the real server's order)."""
    events.sort(
        key=lambda e: (str(e.get("metric")), str(e.get("variant")), -int(e.get("iter") or 0))
    )
    out: list[dict[str, Any]] = []
    counts: dict[tuple[Any, ...], int] = {}
    for ev in events:
        key = (ev.get("task"), ev.get("metric"), ev.get("variant"))
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= iters:
            out.append(ev)
    return out


# ---- scalars ------------------------------------------------------------------------------


def bucket_interval(low: int, high: int, count: int, samples: int) -> int:
    """The real server's bucket width for a series of ``count`` points over ``[low, high]``:
    1 (every x its own point) below ``samples`` points, else ``ceil((high - low + 1) /
    samples)``; a bucket is answered at its floor-aligned start ``(x // width) * width``."""
    if count < samples:
        return 1
    return max(1, math.ceil((high - low + 1) / samples))


def scalar_histogram(
    store: Store,
    task_id: str,
    key: str,
    samples: int,
    flt: MetricFilter,
    *,
    envelope: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{metric: {variant: {name, x, y}}}`` of one task (single values left out), each
    series sampled as the real server does (``y`` the average of each bucket, see
    :func:`bucket_interval`). With ``envelope`` (the web UI) each series also has ``y_min`` and
    ``y_max`` per bucket and ``count``, the number of points it stands for, so a chart keeps
    the spikes that an average hides.

    Read from the ``events_scalar_values`` index alone, bucketed in SQL: no event document is
    read (100,000 points in ~0.1 s)."""
    col = "ts" if key in ("timestamp", "iso_time") else "COALESCE(iter, 0)"
    # The scalar type is a literal so that SQLite sees the partial index's WHERE.
    where = (
        f"task=? AND type='{SCALAR}' AND (iter IS NULL OR iter > {SINGLE_VALUE_ITER}) "
        "AND value IS NOT NULL"
    )
    stats = store.conn.execute(
        f"SELECT metric, variant, COUNT(*), MIN({col}), MAX({col}) FROM events "  # noqa: S608
        f"WHERE {where} GROUP BY metric, variant",
        (task_id,),
    ).fetchall()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for metric, variant, count, low, high in sorted(stats, key=lambda r: (r[0] or "", r[1] or "")):
        if not wanted(flt, metric, variant):
            continue
        width = bucket_interval(int(low), int(high), int(count), samples)
        # floor-aligned buckets also for negative x (SQLite's % truncates toward zero)
        bucket = col if width == 1 else f"({col} - (({col} % {width}) + {width}) % {width})"
        rows = store.conn.execute(
            f"SELECT {bucket} AS b, AVG(value), MIN(value), MAX(value) FROM events "  # noqa: S608
            f"WHERE {where} AND metric IS ? AND variant IS ? GROUP BY b ORDER BY b",
            (task_id, metric, variant),
        ).fetchall()
        series: dict[str, Any] = {
            "name": variant or "",
            "x": [int(r[0]) for r in rows],
            "y": [r[1] for r in rows],
        }
        if envelope:
            series.update(y_min=[r[2] for r in rows], y_max=[r[3] for r in rows], count=count)
        out.setdefault(metric or "", {})[variant or ""] = series
    return out


def _samples_and_key(body: dict[str, Any]) -> tuple[int, str]:
    samples = opt_int(body, "samples")
    samples = DEFAULT_SAMPLES if samples is None else samples
    if not 1 <= samples <= MAX_SAMPLES:
        raise ApiFault(
            VALIDATION,
            f"Validation error: field 'samples' must be 1..{MAX_SAMPLES}",
            {"field": "samples"},
        )
    key = opt_str(body, "key", "iter") or "iter"
    if key not in ("iter", "timestamp", "iso_time"):
        raise ApiFault(
            VALIDATION, "Validation error: field 'key' must be iter|timestamp|iso_time", {}
        )
    return samples, key


def scalar_metrics_iter_histogram(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    samples, key = _samples_and_key(body)
    return scalar_histogram(ctx.store, task_id, key, samples, metric_filter(body))


def multi_task_scalar_metrics_iter_histogram(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """``{metrics: {metric: {variant: {task_id: {name: task name, x, y}}}}}``."""
    if isinstance(body.get("tasks"), str):  # the real server also takes "a,b"
        body = {**body, "tasks": [t.strip() for t in body["tasks"].split(",") if t.strip()]}
    samples, key = _samples_and_key(body)
    flt = metric_filter(body)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task_id in _task_ids(ctx, body):
        name = ctx.store.get_task(task_id).get("name")
        for metric, variants in scalar_histogram(ctx.store, task_id, key, samples, flt).items():
            for variant, data in variants.items():
                out.setdefault(metric, {}).setdefault(variant, {})[task_id] = {
                    **data,
                    "name": name,
                }
    return {"metrics": out}


def get_task_single_value_metrics(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """``{tasks: [{task, task_name, values: [{metric, variant, value, timestamp}]}]}``."""
    flt = metric_filter(body)
    tasks = []
    for task_id in _task_ids(ctx, body):
        rows = ctx.store.conn.execute(
            "SELECT metric, variant, doc FROM events WHERE task=? AND type=? AND iter=? "
            "ORDER BY seq",
            (task_id, SCALAR, SINGLE_VALUE_ITER),
        )
        values = [
            {f: ev.get(f) for f in ("metric", "variant", "value", "timestamp")}
            for metric, variant, doc in rows
            if wanted(flt, metric, variant)
            for ev in (orjson.loads(doc),)
        ]
        if values:
            name = ctx.store.get_task(task_id).get("name")
            tasks.append({"task": task_id, "task_name": name, "values": values})
    return {"tasks": tasks}


def metrics_and_variants(store: Store, task_id: str, ev_type: str) -> dict[str, list[str]]:
    """``{metric: [variants]}`` reported by the task for one event type, sorted."""
    rows = store.conn.execute(
        "SELECT DISTINCT metric, variant FROM events WHERE task=? AND type=? "
        "AND metric IS NOT NULL ORDER BY metric, variant",
        (task_id, ev_type),
    )
    out: dict[str, list[str]] = {}
    for metric, variant in rows:
        out.setdefault(metric, []).append(variant or "")
    return out


def get_scalar_metrics_and_variants(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    return {"metrics": metrics_and_variants(ctx.store, task_id, SCALAR)}


def get_vector_metrics_and_variants(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    return {"metrics": metrics_and_variants(ctx.store, task_id, "training_stats_vector")}


def _event_type(body: dict[str, Any]) -> str:
    ev_type = opt_str(body, "event_type", SCALAR) or SCALAR
    if ev_type not in (SCALAR, "training_stats_vector", IMAGE, PLOT, "log"):
        raise ApiFault(VALIDATION, f"Validation error: unknown event_type {ev_type!r}", {})
    return ev_type


def get_task_metrics(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """``{metrics: [{task, metrics: [names]}]}`` for one event type (default scalars)."""
    ev_type = _event_type(body)
    return {
        "metrics": [
            {"task": task_id, "metrics": sorted(metrics_and_variants(ctx.store, task_id, ev_type))}
            for task_id in _task_ids(ctx, body)
        ]
    }


def get_multi_task_metrics(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """``{metrics: [{metric, variants}]}``: the union over the tasks."""
    ev_type = _event_type(body)
    union: dict[str, set[str]] = {}
    for task_id in _task_ids(ctx, body):
        for metric, variants in metrics_and_variants(ctx.store, task_id, ev_type).items():
            union.setdefault(metric, set()).update(variants)
    return {"metrics": [{"metric": m, "variants": sorted(v)} for m, v in sorted(union.items())]}


# ---- plots --------------------------------------------------------------------------------


def get_task_plots(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    iters = max(1, opt_int(body, "iters", 1) or 1)
    plots = _top_iterations(_latest_events(ctx.store, [task_id], PLOT, metric_filter(body)), iters)
    return {"plots": plots, "returned": len(plots), "total": len(plots), "scroll_id": ""}


def get_multi_task_plots(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """``plots[metric][variant][task][iter] = {name: task name, plots: [events]}``."""
    task_ids = _task_ids(ctx, body)
    iters = max(1, opt_int(body, "iters", 1) or 1)
    names = {t: ctx.store.get_task(t).get("name") for t in task_ids}
    events = _top_iterations(_latest_events(ctx.store, task_ids, PLOT, metric_filter(body)), iters)
    out: dict[str, Any] = {}
    for ev in events:
        task_id = str(ev.get("task"))
        leaf = (
            out.setdefault(str(ev.get("metric")), {})
            .setdefault(str(ev.get("variant")), {})
            .setdefault(task_id, {})
            .setdefault(str(ev.get("iter") or 0), {"name": names.get(task_id), "plots": []})
        )
        leaf["plots"].append(ev)
    return {"plots": out, "returned": len(events), "total": len(events), "scroll_id": ""}


# ---- debug images -------------------------------------------------------------------------


def _encode(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode()


def _decode(scroll_id: str | None) -> dict[str, Any]:
    if not scroll_id:
        return {}
    try:
        state = orjson.loads(base64.urlsafe_b64decode(scroll_id.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise ApiFault(VALIDATION, "Validation error: invalid scroll_id", {}) from None
    if not isinstance(state, dict):
        raise ApiFault(VALIDATION, "Validation error: invalid scroll_id", {})
    return state


def debug_images(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Per requested task/metric the next ``iters`` iterations (newest first by default),
    each ``{iter, events}``; the ``scroll_id`` remembers where each task/metric stopped."""
    items = opt_list(body, "metrics")
    if not items:
        raise ApiFault(VALIDATION, "Validation error: missing required field 'metrics'", {})
    iters = max(1, opt_int(body, "iters", 1) or 1)
    earlier = opt_bool(body, "navigate_earlier", True)
    state = {} if opt_bool(body, "refresh") else _decode(opt_str(body, "scroll_id"))
    result = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise ApiFault(VALIDATION, "Validation error: metrics[] needs a task", {})
        task_id = item["task"]
        ctx.store.get_task(task_id)
        metric = item.get("metric")
        flt = {metric: set(item.get("variants") or [])} if isinstance(metric, str) else None
        by_iter: dict[int, list[dict[str, Any]]] = {}
        for ev in _latest_events(ctx.store, [task_id], IMAGE, flt):
            by_iter.setdefault(int(ev.get("iter") or 0), []).append(ev)
        key = f"{task_id}/{metric or ''}"
        last = state.get(key)
        order = sorted(by_iter, reverse=earlier)
        if isinstance(last, int):
            order = [i for i in order if (i < last if earlier else i > last)]
        page = order[:iters]
        if page:
            state[key] = page[-1]
        result.append(
            {
                "task": task_id,
                "metric": metric,
                "iterations": [
                    {"iter": i, "events": sorted(by_iter[i], key=lambda e: str(e.get("variant")))}
                    for i in page
                ],
            }
        )
    return {"scroll_id": _encode(state), "metrics": result}


def _variant_images(store: Store, task_id: str, metric: str | None) -> list[dict[str, Any]]:
    """The task's images (of one metric, or all), ordered by metric, iteration, variant."""
    flt: MetricFilter = {metric: set()} if metric is not None else None
    events = _latest_events(store, [task_id], IMAGE, flt)
    events.sort(
        key=lambda e: (str(e.get("metric")), int(e.get("iter") or 0), str(e.get("variant")))
    )
    return events


def _sample_reply(
    store: Store, state: dict[str, Any], event: dict[str, Any] | None
) -> dict[str, Any]:
    """The sample reply; the scroll state moves to ``event`` when there is one."""
    if event is not None:
        state = {
            **state,
            "metric": event.get("metric"),
            "variant": event.get("variant"),
            "iter": event.get("iter"),
        }
    same = [
        int(e.get("iter") or 0)
        for e in _variant_images(store, state["task"], state["metric"])
        if e.get("variant") == state["variant"]
    ]
    return {
        "scroll_id": _encode(state),
        "event": event,
        "min_iteration": min(same) if same else None,
        "max_iteration": max(same) if same else None,
    }


def get_debug_image_sample(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """The image of ``task/metric/variant`` at ``iteration`` (default: the latest)."""
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    metric = req_str(body, "metric")
    variant = req_str(body, "variant")
    iteration = opt_int(body, "iteration")
    images = [e for e in _variant_images(ctx.store, task_id, metric) if e.get("variant") == variant]
    if iteration is not None:
        images = [e for e in images if int(e.get("iter") or 0) == iteration]
    state = {
        "task": task_id,
        "metric": metric,
        "variant": variant,
        "iter": iteration,
        "current_metric": opt_bool(body, "navigate_current_metric", True),
    }
    return _sample_reply(ctx.store, state, images[-1] if images else None)


def next_debug_image_sample(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """The neighbour of the sample in ``scroll_id``: the previous (``navigate_earlier``,
    default) or next image by (iteration, variant), or with ``next_iteration`` the same
    variant one iteration away; ``event`` is null at either end."""
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    state = _decode(req_str(body, "scroll_id"))
    if state.get("task") != task_id or not isinstance(state.get("variant"), str):
        raise ApiFault(VALIDATION, "Validation error: scroll_id is not of this task", {})
    earlier = opt_bool(body, "navigate_earlier", True)
    metric = state["metric"] if state.get("current_metric", True) else None
    images = _variant_images(ctx.store, task_id, metric)
    if opt_bool(body, "next_iteration"):
        images = [e for e in images if e.get("variant") == state["variant"]]
    position = (str(state.get("metric")), int(state.get("iter") or 0), str(state["variant"]))
    keys = [(str(e.get("metric")), int(e.get("iter") or 0), str(e.get("variant"))) for e in images]
    if earlier:
        before = [i for i, k in enumerate(keys) if k < position]
        event = images[before[-1]] if before else None
    else:
        after = [i for i, k in enumerate(keys) if k > position]
        event = images[after[0]] if after else None
    return _sample_reply(ctx.store, state, event)


ROUTES: dict[str, Handler] = {
    "events.scalar_metrics_iter_histogram": scalar_metrics_iter_histogram,
    "events.multi_task_scalar_metrics_iter_histogram": multi_task_scalar_metrics_iter_histogram,
    "events.get_task_single_value_metrics": get_task_single_value_metrics,
    "events.get_scalar_metrics_and_variants": get_scalar_metrics_and_variants,
    "events.get_vector_metrics_and_variants": get_vector_metrics_and_variants,
    "events.get_task_metrics": get_task_metrics,
    "events.get_multi_task_metrics": get_multi_task_metrics,
    "events.get_task_plots": get_task_plots,
    "events.get_multi_task_plots": get_multi_task_plots,
    "events.debug_images": debug_images,
    "events.get_debug_image_sample": get_debug_image_sample,
    "events.next_debug_image_sample": next_debug_image_sample,
}
