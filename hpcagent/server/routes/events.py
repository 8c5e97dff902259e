"""``events.*``: add_batch (json-lines or a JSON list), get_task_log, get_task_events (the
other reads are in ``event_reads``).

``add_batch`` is the hot path (console logs and scalars): lines are parsed with orjson, the raw
line is stored as the event document when it needed no change, rows go in with one
``executemany``, and scalar events update the task's ``last_metrics``/``last_iteration`` once
per task per batch.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from hpcagent.server.fields import (
    INT_LIMIT,
    VALIDATION,
    ApiFault,
    now_iso,
    opt_bool,
    opt_int,
    opt_str,
    req_str,
)
from hpcagent.server.routes.event_reads import clean, metric_filter, wanted
from hpcagent.server.store import EVENT_INSERT, dumps, scalar_value
from hpcagent.server.validation import check_depth

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler

SCALAR = "training_stats_scalar"
LOG = "log"
_Row = tuple[str, str, int, "int | None", "str | None", "str | None", bytes, "float | None"]


def _bad_event(index: int, message: str) -> ApiFault:
    return ApiFault(
        VALIDATION, f"Validation error: event {index}: {message}", {"field": f"events[{index}]"}
    )


def _parse_events(raw: bytes) -> list[tuple[dict[str, Any], bytes | None]]:
    """``(event, raw line or None)`` pairs from a json-lines body or a JSON list body, each
    event at most :data:`~hpcagent.server.validation.MAX_DEPTH` levels deep."""
    events = _split_events(raw)
    for index, (event, _line) in enumerate(events):
        check_depth(event, f"events[{index}]")
    return events


def _split_events(raw: bytes) -> list[tuple[dict[str, Any], bytes | None]]:
    stripped = raw.strip()
    if not stripped:
        return []
    try:
        if stripped[:1] == b"[":
            items = orjson.loads(stripped)
            return [(item, None) for item in items]  # a list of anything: add_batch checks
        if stripped[:1] == b"{" and b"\n" not in stripped:
            single = orjson.loads(stripped)
            if isinstance(single, dict) and isinstance(single.get("requests"), list):
                return [(item, None) for item in single["requests"]]
            return [(single, stripped)]
        out: list[tuple[dict[str, Any], bytes | None]] = []
        for line in stripped.split(b"\n"):
            line = line.strip()
            if line:
                out.append((orjson.loads(line), line))
        return out
    except orjson.JSONDecodeError as exc:
        raise ApiFault(VALIDATION, f"Malformed JSON in events batch: {exc}") from exc


#: Metrics that never move a task's ``last_iteration`` (ClearML server's
#: ``services.events.ignore_iteration.metrics``): the machine monitors report with elapsed
#: seconds as the iteration, and the SDK, running remotely, starts its own iterations at
#: ``last_iteration + 1``; an executor's monitor reporting before ``Task.init()`` would shift
#: every iteration of the task.
IGNORE_ITERATION_METRICS = frozenset({":monitor:machine", ":monitor:gpu"})


def _metric_key(name: str) -> str:
    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


def _update_metrics(ctx: Ctx, task_id: str, scalars: list[dict[str, Any]], now: str) -> None:
    task = ctx.store.get_task(task_id)
    metrics: dict[str, Any] = task.get("last_metrics") or {}
    last_iter = int(task.get("last_iteration") or 0)
    for ev in scalars:
        metric = str(ev.get("metric") or "")
        variant = str(ev.get("variant") or "")
        value = ev.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        it = ev.get("iter")
        if isinstance(it, int) and it > last_iter and metric not in IGNORE_ITERATION_METRICS:
            last_iter = it
        variants = metrics.setdefault(_metric_key(metric), {})
        entry = variants.setdefault(
            _metric_key(variant),
            {
                "metric": metric,
                "variant": variant,
                "min_value": value,
                "max_value": value,
            },
        )
        entry["value"] = value
        entry["min_value"] = min(entry.get("min_value", value), value)
        entry["max_value"] = max(entry.get("max_value", value), value)
        if isinstance(it, int):
            entry["iter"] = it
    task["last_metrics"] = metrics
    task["last_iteration"] = last_iter
    task["last_update"] = now
    ctx.store.put_task(task)


def add_batch(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Insert events; unknown task ids are counted in ``errors`` and skipped."""
    parsed = _parse_events(ctx.raw)
    rows: list[_Row] = []
    now_ms = int(time.time() * 1000)
    task_ids: set[str] = set()
    scalars: dict[str, list[dict[str, Any]]] = {}
    for index, (ev, line) in enumerate(parsed):
        if not isinstance(ev, dict):
            raise _bad_event(index, "must be an object")
        task_id = ev.get("task")
        ev_type = ev.get("type")
        if not isinstance(task_id, str) or not task_id:
            raise _bad_event(index, "field 'task' must be a non-empty string")
        if not isinstance(ev_type, str) or not ev_type:
            raise _bad_event(index, "field 'type' must be a non-empty string")
        ts = ev.get("timestamp")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 <= ts < INT_LIMIT:
            ev["timestamp"] = ts = now_ms
            line = None
        it = ev.get("iter")
        if not isinstance(it, int) or isinstance(it, bool) or abs(it) >= INT_LIMIT:
            it = None
        metric = ev.get("metric")
        variant = ev.get("variant")
        rows.append(
            (
                task_id,
                ev_type,
                int(ts),
                it if isinstance(it, int) else None,
                metric if isinstance(metric, str) else None,
                variant if isinstance(variant, str) else None,
                line if line is not None else dumps(ev),
                scalar_value(ev) if ev_type == SCALAR else None,
            )
        )
        task_ids.add(task_id)
        if ev_type == SCALAR:
            scalars.setdefault(task_id, []).append(ev)
    errors_info: dict[str, Any] = {}
    now = now_iso()
    with ctx.store.write() as conn:
        known = _known_tasks(ctx, task_ids)
        if len(known) != len(task_ids):
            before = len(rows)
            rows = [r for r in rows if r[0] in known]
            errors_info["Invalid task id"] = before - len(rows)
        changes = conn.total_changes
        conn.executemany(EVENT_INSERT, rows)
        ctx.store.event_changes += conn.total_changes - changes
        for task_id, evs in scalars.items():
            if task_id in known:
                _update_metrics(ctx, task_id, evs, now)
    errors = sum(int(v) for v in errors_info.values())
    return {"added": len(rows), "errors": errors, "errors_info": errors_info}


def _known_tasks(ctx: Ctx, task_ids: set[str]) -> set[str]:
    if not task_ids:
        return set()
    ids = list(task_ids)
    sql = f"SELECT id FROM tasks WHERE id IN ({','.join('?' * len(ids))})"  # noqa: S608
    return {r[0] for r in ctx.store.conn.execute(sql, ids)}


def get_task_log(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Log events in pages of ``batch_size`` from ``from_timestamp`` (ms), newest first by
    default (``navigate_earlier``); ``order`` asc|desc overrides the order of the page."""
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    batch = max(1, min(opt_int(body, "batch_size", 500) or 500, 10000))
    earlier = opt_bool(body, "navigate_earlier", True)
    from_ts = opt_int(body, "from_timestamp")
    order = opt_str(body, "order")
    args: list[Any] = [task_id, LOG]
    cond = ""
    if from_ts is not None:
        cond = " AND ts < ?" if earlier else " AND ts > ?"
        args.append(from_ts)
    direction = "DESC" if earlier else "ASC"
    args.append(batch)
    sql = (
        f"SELECT doc FROM events WHERE task=? AND type=?{cond} "  # noqa: S608
        f"ORDER BY ts {direction}, seq {direction} LIMIT ?"
    )
    events = [clean(r[0]) for r in ctx.store.conn.execute(sql, args)]
    if (order == "asc" and earlier) or (order == "desc" and not earlier):
        events.reverse()
    total = ctx.store.log_count(task_id)
    return {"events": events, "returned": len(events), "total": total}


def get_task_events(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Events of a task in insertion order, paged with an opaque ``scroll_id``."""
    task_id = req_str(body, "task")
    ctx.store.get_task(task_id)
    ev_type = opt_str(body, "event_type")
    batch = max(1, min(opt_int(body, "batch_size", 500) or 500, 10000))
    descending = opt_str(body, "order") == "desc"
    scroll = opt_str(body, "scroll_id")
    flt = metric_filter(body)
    args: list[Any] = [task_id]
    cond = ""
    if ev_type:
        cond += " AND type=?"
        args.append(ev_type)
    total = ctx.store.conn.execute(
        f"SELECT COUNT(*) FROM events WHERE task=?{cond}",  # noqa: S608
        args,
    ).fetchone()[0]
    if scroll and scroll.isdigit():
        cond += " AND seq < ?" if descending else " AND seq > ?"
        args.append(int(scroll))
    direction = "DESC" if descending else "ASC"
    sql = (
        f"SELECT seq, metric, variant, doc FROM events WHERE task=?{cond} "  # noqa: S608
        f"ORDER BY seq {direction}"
    )
    events: list[dict[str, Any]] = []
    last_seq: int | None = None
    for seq, metric, variant, doc in ctx.store.conn.execute(sql, args):
        last_seq = seq
        if wanted(flt, metric, variant):
            events.append(clean(doc))
            if len(events) >= batch:
                break
    scroll_id = str(last_seq) if last_seq is not None else (scroll or "")
    return {"events": events, "returned": len(events), "total": int(total), "scroll_id": scroll_id}


ROUTES: dict[str, Handler] = {
    "events.add_batch": add_batch,
    "events.get_task_log": get_task_log,
    "events.get_task_events": get_task_events,
}
