"""The operations pages of the web UI: home (queue lengths, workers up, tasks running, recent
failures), queues (entries in order, how long each waited, who serves the queue; reorder,
remove, create, delete) and workers (submitters, daemons and executors with their held jobs
and CPU/memory/GPU series).

Everything is read and changed through :meth:`Ui.call`, i.e. the REST handlers: ``queues.*``
for the queue actions (the API's rules and errors), ``workers.get_all`` /
``workers.get_runtime_properties`` / ``workers.get_stats`` for what the workers reported. A
submitter's jobs come from its runtime property ``hpcagent_jobs`` (submitter/loop.py), so the
page shows them although the server never talks to the cluster.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hpcagent.server.ui import present
from hpcagent.server.ui.core import Identity, Ui, bad_request, form_str, read_form

#: Queue entry operations of the queues page -> the REST endpoint each one calls.
ENTRY_OPS = {
    "top": "queues.move_task_to_front",
    "up": "queues.move_task_forward",
    "down": "queues.move_task_backward",
    "bottom": "queues.move_task_to_back",
    "remove": "queues.remove_task",
}
#: The machine_stats keys the workers page draws (ClearML agent's names; MB for memory).
CHART_KEYS = ("cpu_usage", "memory_used", "gpu_usage", "gpu_memory_used")
#: Chart ranges offered on the workers page (seconds).
RANGES = (600, 3600, 6 * 3600, 24 * 3600)
#: The most workers one chart request covers.
MAX_CHARTED = 200
FAILURE_WINDOW_S = 24 * 3600
MAX_FAILURES = 500  # the newest failed tasks the home page reads


def age(value: Any, now: float | None = None) -> str:
    """How long ago an ISO time was: ``42s``, ``5m 03s``, ``2h 10m``, ``3d 4h``; "" for none."""
    parsed = present.parse_time(value)
    if parsed is None:
        return ""
    seconds = max(0, int((now or time.time()) - parsed.timestamp()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


async def _task_docs(ui: Ui, identity: Identity, ids: set[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    body = {"id": sorted(ids), "only_fields": ["id", "name", "status"], "search_hidden": True}
    return {str(t["id"]): t for t in (await ui.call(identity, "tasks.get_all", body))["tasks"]}


async def worker_props(ui: Ui, identity: Identity, worker_id: str) -> dict[str, str]:
    reply = await ui.call(identity, "workers.get_runtime_properties", {"worker": worker_id})
    return {str(p["key"]): str(p.get("value") or "") for p in reply["runtime_properties"]}


def held_jobs(props: dict[str, str]) -> list[dict[str, str]]:
    """The jobs a submitter or daemon reported (``hpcagent_jobs``); [] when none or unreadable."""
    try:
        rows = json.loads(props.get("hpcagent_jobs") or "[]")
    except ValueError:
        return []
    if not isinstance(rows, list):
        return []
    keys = ("job", "task", "queue", "state", "node", "reason")
    return [{k: str(r.get(k) or "") for k in keys} for r in rows if isinstance(r, dict)]


async def describe_workers(ui: Ui, identity: Identity) -> list[dict[str, Any]]:
    """Every active worker with ``role``, ``host``, ``jobs`` (submitters, daemons) and ``held``
    (the tasks it holds: an executor's task, a submitter's jobs' tasks)."""
    out = []
    for worker in (await ui.call(identity, "workers.get_all", {}))["workers"]:
        wid = str(worker["id"])
        props = await worker_props(ui, identity, wid)
        jobs = held_jobs(props)
        task = worker.get("task") or {}
        role = props.get("hpcagent_role") or ("executor" if task.get("id") else "worker")
        held = [str(task["id"])] if task.get("id") else []
        held += [j["task"] for j in jobs if j["task"] and j["task"] not in held]
        out.append(
            {
                "id": wid,
                "dom": "worker-"
                + hashlib.sha1(wid.encode(), usedforsecurity=False).hexdigest()[:12],
                "role": role,
                "host": wid.split(":", 1)[0],
                "queues": [q for q in worker.get("queues") or [] if isinstance(q, dict)],
                "task": task,
                "jobs": jobs,
                "held": held,
                "state": _state(role, task, jobs),
                "last_report": worker.get("last_report_time") or worker.get("last_activity_time"),
                "registered": worker.get("register_time"),
            }
        )
    order = {"submitter": 0, "daemon": 1, "executor": 2}
    out.sort(key=lambda w: (order.get(w["role"], 3), w["id"]))
    return out


def _state(role: str, task: dict[str, Any], jobs: list[dict[str, str]]) -> str:
    if task.get("id"):
        return "running a task"
    if jobs:
        pending = sum(1 for j in jobs if j["state"] in ("PENDING", ""))
        return f"holding {len(jobs)} job{'s' if len(jobs) != 1 else ''} ({pending} pending)"
    return "idle"


async def queue_view(ui: Ui, identity: Identity) -> list[dict[str, Any]]:
    """Every queue (by name) with its entries in order (task doc, waited) and its workers."""
    queues: list[dict[str, Any]] = (await ui.call(identity, "queues.get_all", {}))["queues"]
    queues.sort(key=lambda q: str(q.get("name") or "").lower())
    ids = {str(e["task"]) for q in queues for e in q.get("entries") or []}
    tasks = await _task_docs(ui, identity, ids)
    workers = (await ui.call(identity, "workers.get_all", {}))["workers"]
    now = time.time()
    for queue in queues:
        queue["rows"] = [
            {
                "task": str(e["task"]),
                "doc": tasks.get(str(e["task"])) or {"name": "(deleted task)"},
                "added": e.get("added"),
                "waited": age(e.get("added"), now),
            }
            for e in queue.get("entries") or []
        ]
        queue["workers"] = sorted(
            str(w["id"])
            for w in workers
            if any(
                isinstance(q, dict) and q.get("id") == queue["id"] for q in w.get("queues") or []
            )
        )
    return queues


async def home_view(ui: Ui, identity: Identity) -> dict[str, Any]:
    """The figures of the home page."""
    queues = await ui.call(identity, "queues.get_all", {"only_fields": ["id", "name", "entries"]})
    workers = await describe_workers(ui, identity)
    body: dict[str, Any] = {
        "status": ["in_progress"], "only_fields": ["id", "name"], "order_by": ["-started"]
    }  # fmt: skip
    running = (await ui.call(identity, "tasks.get_all", body))["tasks"]
    since = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=FAILURE_WINDOW_S)
    body = {
        "status": ["failed"], "order_by": ["-last_update"], "page": 0, "page_size": MAX_FAILURES,
        "only_fields": ["id", "name", "status_reason", "status_message", "status_changed",
                        "last_update"],
    }  # fmt: skip
    failed = (await ui.call(identity, "tasks.get_all", body))["tasks"]
    recent = []
    for task in failed:
        changed = present.parse_time(task.get("status_changed") or task.get("last_update"))
        if changed is not None and changed >= since:
            recent.append(task)
    recent.sort(key=lambda t: str(t.get("status_changed") or ""), reverse=True)
    roles: dict[str, int] = {}
    for worker in workers:
        roles[worker["role"]] = roles.get(worker["role"], 0) + 1
    lengths = sorted(
        ((str(q.get("name") or q["id"]), str(q["id"]), len(q.get("entries") or []))
         for q in queues["queues"]),
        key=lambda item: item[0].lower(),
    )  # fmt: skip
    return {
        "queues": lengths,
        "queued_total": sum(n for _, _, n in lengths),
        "workers": workers,
        "roles": sorted(roles.items()),
        "running": running,
        "failures": recent,
    }


async def stats_series(
    ui: Ui, identity: Identity, worker_ids: list[str], range_s: int
) -> dict[str, Any]:
    """One ``workers.get_stats`` for the charts of ``worker_ids``: ``{workers: {id: {metric:
    {dates, values}}}}`` (avg per interval; per-core or per-GPU lists averaged; metrics a worker
    never reported left out)."""
    now = time.time()
    body = {
        "worker_ids": worker_ids,
        "from_date": now - range_s,
        "to_date": now,
        "interval": max(1, range_s // 360),
        "items": [{"key": key, "category": "avg"} for key in CHART_KEYS],
    }
    out: dict[str, dict[str, Any]] = {wid: {} for wid in worker_ids}
    for worker in (await ui.call(identity, "workers.get_stats", body))["workers"]:
        series = out.setdefault(str(worker["worker"]), {})
        for metric in worker["metrics"]:
            values = metric["stats"][0]["values"] if metric["stats"] else []
            series[metric["metric"]] = {"dates": metric["dates"], "values": values}
    return {"range": range_s, "workers": out}


def routes(ui: Ui) -> list[BaseRoute]:
    async def home(request: Request, identity: Identity) -> Response:
        return await ui.render(
            request, "home.html", signed_in=True, **await home_view(ui, identity)
        )

    async def queues(request: Request, identity: Identity) -> Response:
        return await ui.render(
            request, "queues.html", queues=await queue_view(ui, identity), signed_in=True
        )

    async def workers(request: Request, identity: Identity) -> Response:
        found = await describe_workers(ui, identity)
        tasks = await _task_docs(ui, identity, {t for w in found for t in w["held"]})
        return await ui.render(
            request, "workers.html", workers=found, tasks=tasks, ranges=RANGES, signed_in=True
        )

    async def create_queue(request: Request, identity: Identity) -> Response:
        form = await read_form(request)
        created = await ui.call(identity, "queues.create", {"name": form_str(form, "name")})
        return ui.redirect(f"/queues#queue-{created['id']}")

    async def delete_queue(request: Request, identity: Identity) -> Response:
        form = await read_form(request)
        body = {"queue": request.path_params["queue_id"], "force": form_str(form, "force") == "1"}
        await ui.call(identity, "queues.delete", body)
        return ui.redirect("/queues")

    async def entry(request: Request, identity: Identity) -> Response:
        queue_id = request.path_params["queue_id"]
        form = await read_form(request)
        op = form_str(form, "op")
        if op not in ENTRY_OPS:
            raise bad_request(f"Unknown queue operation: {op or '(none)'}")
        body: dict[str, Any] = {"queue": queue_id, "task": form_str(form, "task")}
        if op == "remove":
            body["update_task_status"] = True  # back to draft, as ClearML's UI does
        await ui.call(identity, ENTRY_OPS[op], body)
        return ui.redirect(f"/queues#queue-{queue_id}")

    async def worker_stats(request: Request, identity: Identity) -> Response:
        worker_ids = [w for w in request.query_params.getlist("worker") if w][:MAX_CHARTED]
        if not worker_ids:
            raise bad_request("worker is required")
        value = request.query_params.get("range") or "3600"
        range_s = int(value) if value.isdigit() and len(value) <= 6 else 3600
        range_s = range_s if range_s in RANGES else 3600  # only the ranges the page offers
        return ui.json(await stats_series(ui, identity, worker_ids, range_s))

    return [
        Route("/home", ui.page(home), methods=["GET"]),
        Route("/queues", ui.page(queues), methods=["GET"]),
        Route("/workers", ui.page(workers), methods=["GET"]),
        Route("/queues/create", ui.action(create_queue), methods=["POST"]),
        Route("/queues/{queue_id:str}/delete", ui.action(delete_queue), methods=["POST"]),
        Route("/queues/{queue_id:str}/entry", ui.action(entry), methods=["POST"]),
        Route("/data/worker-stats", ui.data(worker_stats), methods=["GET"]),
    ]
