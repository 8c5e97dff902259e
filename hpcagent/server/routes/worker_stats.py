"""``workers.get_stats``, ``workers.get_activity_report``, ``workers.get_metric_keys``: the
history of the ``machine_stats`` that workers send with ``workers.status_report``, in the
shapes of ClearML server's API 2.4.

:func:`record` keeps every report's ``machine_stats`` (a bounded history: the newest
``KEEP_REPORTS`` per worker, none older than ``RETENTION_S``). ``get_stats`` aggregates them
per ``interval`` seconds: ``{workers: [{worker, metrics: [{metric, variant, dates, stats:
[{aggregation, values}]}]}]}``, dates in seconds, buckets without reports omitted. A list
value (``cpu_usage`` per core, ``gpu_usage`` per GPU) is one series per element with
``split_by_variant`` (variant ``"0"``, ``"1"``, ...), else one series over all elements.
``get_activity_report`` counts the workers that reported in each interval (``total``) and those
that reported a task (``active``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    VALIDATION,
    ApiFault,
    opt_bool,
    opt_str_list,
    req_list,
)

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler

#: Reports kept per worker (a day of reports every 30 s).
KEEP_REPORTS = 2880
#: No report older than this is kept (a week).
RETENTION_S = 7 * 24 * 3600.0
#: The most intervals one get_stats/get_activity_report answer may have.
MAX_INTERVALS = 10000
AGGREGATIONS = ("avg", "min", "max")
#: ClearML's metric categories (workers.get_metric_keys), by key prefix.
CATEGORIES = (("cpu", "cpu_"), ("memory", "memory_"), ("gpu", "gpu_"), ("disk", "disk_"),
              ("network", "network_"))  # fmt: skip

_PRUNE_EVERY = 500
_recorded = 0


def record(ctx: Ctx, worker_id: str, task_id: str | None, stats: dict[str, Any]) -> None:
    """Keep one report's ``machine_stats`` (inside the caller's write transaction)."""
    global _recorded
    now = time.time()
    numeric = {k: v for k, v in stats.items() if _values(v)}
    if not numeric:
        return
    ctx.store.add_worker_stats(worker_id, now, task_id, numeric, KEEP_REPORTS)
    _recorded += 1
    if _recorded % _PRUNE_EVERY == 1:
        ctx.store.prune_worker_stats(now - RETENTION_S)


def _values(value: Any) -> list[float]:
    """The numbers of one stats value (a number, or a list of numbers); [] for anything else."""
    items = value if isinstance(value, list) else [value]
    out = [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return out if len(out) == len(items) else []


def _number(body: dict[str, Any], field: str) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiFault(
            VALIDATION,
            f"Validation error: field '{field}' is required and must be a number",
            {"field": field},
        )
    return float(value)


def _window(body: dict[str, Any]) -> tuple[float, float, int]:
    """``from_date``, ``to_date`` and ``interval`` (>= 1 s, at most MAX_INTERVALS of them)."""
    since, until = _number(body, "from_date"), _number(body, "to_date")
    interval = int(_number(body, "interval"))
    if interval < 1:
        raise ApiFault(VALIDATION, "Validation error: interval must be >= 1", {"field": "interval"})
    if until < since:
        raise ApiFault(VALIDATION, "Validation error: to_date is before from_date", {})
    if (until - since) / interval > MAX_INTERVALS:
        raise ApiFault(
            VALIDATION,
            f"Validation error: more than {MAX_INTERVALS} intervals; use a larger interval",
            {"field": "interval"},
        )
    return since, until, interval


def _items(body: dict[str, Any]) -> list[tuple[str, str]]:
    items = []
    for item in req_list(body, "items"):
        key = item.get("key") if isinstance(item, dict) else None
        category = (item.get("category") or "avg") if isinstance(item, dict) else None
        if not isinstance(key, str) or not key or category not in AGGREGATIONS:
            raise ApiFault(
                VALIDATION,
                "Validation error: items must be {key, category} objects with category one "
                f"of {', '.join(AGGREGATIONS)}",
                {"field": "items"},
            )
        items.append((key, str(category)))
    if not items:
        raise ApiFault(VALIDATION, "Validation error: items is empty", {"field": "items"})
    return items


def _aggregate(values: list[float], how: str) -> float:
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return sum(values) / len(values)


def get_stats(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    since, until, interval = _window(body)
    items = _items(body)
    split = opt_bool(body, "split_by_variant")
    workers = opt_str_list(body, "worker_ids")
    # worker -> (metric, variant) -> bucket start -> values
    series: dict[str, dict[tuple[str, str], dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    keys = {key for key, _ in items}
    for worker, ts, _task, stats in ctx.store.worker_stats(workers, since, until):
        bucket = int(since + (ts - since) // interval * interval)
        for key in keys & stats.keys():
            values = _values(stats[key])
            if split and isinstance(stats[key], list):
                for index, value in enumerate(values):
                    series[worker][(key, str(index))][bucket].append(value)
            elif values:
                series[worker][(key, "")][bucket].extend(values)
    out = []
    for worker in sorted(series):
        metrics = []
        for key, how_list in _by_key(items).items():
            for (metric, variant), buckets in sorted(series[worker].items()):
                if metric != key:
                    continue
                dates = sorted(buckets)
                doc: dict[str, Any] = {"metric": metric, "dates": dates}
                if variant:
                    doc["variant"] = variant
                doc["stats"] = [
                    {"aggregation": how, "values": [_aggregate(buckets[d], how) for d in dates]}
                    for how in how_list
                ]
                metrics.append(doc)
        out.append({"worker": worker, "metrics": metrics})
    return {"workers": out}


def _by_key(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, how in items:
        if how not in grouped.setdefault(key, []):
            grouped[key].append(how)
    return grouped


def get_activity_report(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    since, until, interval = _window(body)
    total: dict[int, set[str]] = defaultdict(set)
    active: dict[int, set[str]] = defaultdict(set)
    for worker, ts, task, _stats in ctx.store.worker_stats(None, since, until):
        bucket = int(since + (ts - since) // interval * interval)
        total[bucket].add(worker)
        if task:
            active[bucket].add(worker)

    def series(buckets: dict[int, set[str]]) -> dict[str, Any]:
        dates = sorted(buckets)
        return {"dates": dates, "counts": [len(buckets[d]) for d in dates]}

    return {"total": series(total), "active": series(active)}


def get_metric_keys(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    workers = opt_str_list(body, "worker_ids")
    keys: set[str] = set()
    for _worker, _ts, _task, stats in ctx.store.worker_stats(workers, 0.0, time.time() + 1):
        keys.update(stats)
    categories = []
    for name, prefix in CATEGORIES:
        found = sorted(k for k in keys if k.startswith(prefix))
        if found:
            categories.append({"name": name, "metric_keys": found})
    return {"categories": categories}


ROUTES: dict[str, Handler] = {
    "workers.get_stats": get_stats,
    "workers.get_activity_report": get_activity_report,
    "workers.get_metric_keys": get_metric_keys,
}
