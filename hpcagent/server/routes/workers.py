"""``workers.*``: register, unregister, status_report, get_all and runtime properties (the
history of the reports' ``machine_stats`` is ``worker_stats.py``).

A worker is "active" while it reported within its ``timeout`` (default 600 s);
``status_report {task}`` stamps ``last_worker``/``last_worker_report``/``last_update`` on the task,
which ``tasks.stop`` uses to decide between "stopping" and an immediate stop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    VALIDATION,
    ApiFault,
    now_iso,
    opt_bool,
    opt_dict,
    opt_int,
    opt_list,
    opt_str,
    opt_str_list,
    reject_unknown,
    req_str,
)
from hpcagent.server.routes import worker_stats

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler

DEFAULT_TIMEOUT_S = 600


def _worker_doc(ctx: Ctx, worker_id: str, now: str) -> dict[str, Any]:
    doc = ctx.store.get_worker(worker_id)
    if doc is None:
        doc = {
            "id": worker_id,
            "user": {"id": ctx.user},
            "company": {"id": ctx.company},
            "register_time": now,
            "last_activity_time": now,
            "last_report_time": None,
            "queues": [],
            "tags": [],
            "task": None,
            "timeout": DEFAULT_TIMEOUT_S,
            "runtime_properties": [],
            "machine_stats": None,
        }
    return doc


def _queue_refs(ctx: Ctx, queue_ids: list[str] | None) -> list[dict[str, Any]]:
    refs = []
    for queue_id in queue_ids or []:
        try:
            queue = ctx.store.get_queue(queue_id)
        except ApiFault:
            refs.append({"id": queue_id, "name": None})
        else:
            refs.append({"id": queue_id, "name": queue.get("name")})
    return refs


def _save(ctx: Ctx, doc: dict[str, Any]) -> None:
    timeout = int(doc.get("timeout") or DEFAULT_TIMEOUT_S)
    ctx.store.put_worker(doc, time.time() + timeout - DEFAULT_TIMEOUT_S)


def _set_reported(doc: dict[str, Any], body: dict[str, Any]) -> None:
    """What clearml-agent's reports add: ``system_tags``, the ``queue`` its task came from,
    the report's own ``timestamp`` (ms) and ``is_daemon``; each kept on the worker as sent."""
    if "system_tags" in body:
        doc["system_tags"] = opt_str_list(body, "system_tags") or []
    if "queue" in body:
        doc["queue"] = opt_str(body, "queue")
    if "timestamp" in body:
        doc["report_timestamp"] = opt_int(body, "timestamp")
    if "is_daemon" in body:
        doc["is_daemon"] = opt_bool(body, "is_daemon")


def register(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    worker_id = req_str(body, "worker")
    now = now_iso()
    with ctx.store.write():
        doc = _worker_doc(ctx, worker_id, now)
        doc["register_time"] = now
        doc["last_activity_time"] = now
        doc["timeout"] = opt_int(body, "timeout", DEFAULT_TIMEOUT_S)
        if "queues" in body:
            doc["queues"] = _queue_refs(ctx, opt_str_list(body, "queues"))
        doc["tags"] = opt_str_list(body, "tags") or doc.get("tags") or []
        _set_reported(doc, body)
        _save(ctx, doc)
    return {}


def unregister(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Remove the worker; ``queues`` (clearml-agent sends the ones it served) are left with it."""
    worker_id = req_str(body, "worker")
    opt_str_list(body, "queues")
    with ctx.store.write():
        ctx.store.delete_worker(worker_id)
    return {}


def status_report(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    worker_id = req_str(body, "worker")
    task_id = opt_str(body, "task")
    machine_stats = opt_dict(body, "machine_stats")
    now = now_iso()
    with ctx.store.write():
        doc = _worker_doc(ctx, worker_id, now)
        doc["last_activity_time"] = now
        doc["last_report_time"] = now
        if machine_stats is not None:
            doc["machine_stats"] = machine_stats
            worker_stats.record(ctx, worker_id, task_id, machine_stats)
        if "queues" in body:
            doc["queues"] = _queue_refs(ctx, opt_str_list(body, "queues"))
        if "tags" in body:
            doc["tags"] = opt_str_list(body, "tags") or []
        _set_reported(doc, body)
        if task_id:
            task = ctx.store.get_task(task_id)
            task["last_worker"] = worker_id
            task["last_worker_report"] = now
            task["last_update"] = now
            ctx.store.put_task(task)
            started = doc.get("task") or {}
            if started.get("id") != task_id:
                started = {"id": task_id, "name": task.get("name"), "started": now}
            doc["task"] = started
        else:
            doc["task"] = None
        _save(ctx, doc)
    return {}


def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    reject_unknown(body, ("last_seen",))
    last_seen = opt_int(body, "last_seen", DEFAULT_TIMEOUT_S) or DEFAULT_TIMEOUT_S
    workers = ctx.store.active_workers(time.time() - last_seen)
    return {"workers": workers}


def get_runtime_properties(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    worker_id = req_str(body, "worker")
    doc = ctx.store.get_worker(worker_id)
    now = time.time()
    props = [
        {"key": p["key"], "value": p["value"]}
        for p in (doc or {}).get("runtime_properties", [])
        if not p.get("expires_at") or p["expires_at"] > now
    ]
    return {"runtime_properties": props}


def set_runtime_properties(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    worker_id = req_str(body, "worker")
    items = opt_list(body, "runtime_properties") or []
    now_s = time.time()
    props: dict[str, dict[str, Any]] = {}
    with ctx.store.write():
        doc = _worker_doc(ctx, worker_id, now_iso())
        for prop in doc.get("runtime_properties", []):
            props[prop["key"]] = prop
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise ApiFault(
                    VALIDATION,
                    "Validation error: field 'runtime_properties' must be "
                    "an array of {key, value, expiry} objects",
                    {"field": "runtime_properties"},
                )
            expiry = item.get("expiry")
            props[item["key"]] = {
                "key": item["key"],
                "value": item.get("value"),
                "expires_at": now_s + float(expiry) if isinstance(expiry, (int, float)) else None,
            }
        doc["runtime_properties"] = list(props.values())
        _save(ctx, doc)
    return {"added": [i["key"] for i in items if isinstance(i, dict)]}


ROUTES: dict[str, Handler] = {
    "workers.register": register,
    "workers.unregister": unregister,
    "workers.status_report": status_report,
    "workers.get_all": get_all,
    "workers.get_runtime_properties": get_runtime_properties,
    "workers.set_runtime_properties": set_runtime_properties,
}
