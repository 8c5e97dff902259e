"""``tasks.*`` status endpoints: started/stopped/failed/completed/close/publish, stop, ping,
enqueue, dequeue, reset.

Semantics follow clearml-server (see docs/server.md): every status call checks the status
machine unless ``force`` and overwrites ``status_reason``/``status_message``; ``tasks.stop`` on
an in-progress task with an active worker only sets ``status_message="stopping"``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    NO_DEFAULT_QUEUE,
    ApiFault,
    new_id,
    now_iso,
    opt_bool,
    opt_str,
    req_str,
)
from hpcagent.server.statemachine import (
    CLOSED,
    COMPLETED,
    CREATED,
    FAILED,
    IN_PROGRESS,
    PUBLISHED,
    QUEUED,
    STOPPED,
    check_transition,
    has_active_worker,
    set_status,
    status_fields,
)

#: A worker that reported within this many seconds serves its queues (workers.get_all's default).
WORKER_ACTIVE_S = 600

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler


def _status_call(new_status: str) -> Handler:
    def handler(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        task_id = req_str(body, "task")
        force = opt_bool(body, "force")
        reason = opt_str(body, "status_reason")
        message = opt_str(body, "status_message")
        target = new_status
        if new_status == COMPLETED and opt_bool(body, "publish"):
            target = PUBLISHED
        now = now_iso()
        with ctx.store.write():
            task = ctx.store.get_task(task_id)
            # completed+publish: the task passes through completed, then completed -> published
            check_transition(task, new_status, force)
            fields = set_status(task, target, now, reason=reason, message=message)
            ctx.store.put_task(task)
        reply: dict[str, Any] = {"updated": 1, "fields": fields}
        if new_status == IN_PROGRESS:
            reply["started"] = 1
        if target == PUBLISHED:
            reply["published"] = 1
        return reply

    handler.__name__ = f"tasks_{new_status}"
    return handler


def _clear_queue(task: dict[str, Any]) -> None:
    execution = dict(task.get("execution") or {})
    execution["queue"] = None
    task["execution"] = execution


def stop(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """queued -> stopped (dequeued); in_progress with an active worker -> "stopping"."""
    task_id = req_str(body, "task")
    force = opt_bool(body, "force")
    reason = opt_str(body, "status_reason") or "stopped"
    message = opt_str(body, "status_message")
    now = now_iso()
    with ctx.store.write():
        task = ctx.store.get_task(task_id)
        status = task.get("status")
        development = "development" in (task.get("system_tags") or [])
        if status == QUEUED:
            ctx.store.remove_entries(task_id)
            fields = set_status(task, STOPPED, now, reason=reason, message=message)
        elif status == IN_PROGRESS and not development and has_active_worker(task, time.time()):
            task["status_reason"] = reason
            task["status_message"] = "stopping"
            task["last_update"] = now
            fields = status_fields(task)
        else:
            check_transition(task, STOPPED, force)
            fields = set_status(task, STOPPED, now, reason=reason, message=message)
        ctx.store.put_task(task)
    return {"updated": 1, "fields": fields}


def ping(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task_id = req_str(body, "task")
    with ctx.store.write():
        task = ctx.store.get_task(task_id)
        task["last_update"] = now_iso()
        ctx.store.put_task(task)
    return {}


def _resolve_queue(ctx: Ctx, body: dict[str, Any], now: str) -> dict[str, Any]:
    queue_id = opt_str(body, "queue")
    if queue_id:
        return ctx.store.get_queue(queue_id)
    queue_name = opt_str(body, "queue_name")
    if queue_name:
        queue = ctx.store.queue_by_name(queue_name)
        if queue is None:  # like clearml-server >= 2.19: queue_name creates a missing queue
            queue = {
                "id": new_id(),
                "name": queue_name,
                "created": now,
                "tags": [],
                "system_tags": [],
                "user": ctx.user,
                "company": ctx.company,
                "last_update": now,
                "metadata": {},
            }
            ctx.store.put_queue(queue)
        return queue
    for queue in ctx.store.all_queues():
        if "default" in (queue.get("system_tags") or []):
            return queue
    raise ApiFault(NO_DEFAULT_QUEUE, "No queue given and no default queue defined")


def enqueue(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Set queued, push to the queue (removing it from any other), set ``execution.queue``."""
    task_id = req_str(body, "task")
    force = opt_bool(body, "force")
    update_execution_queue = opt_bool(body, "update_execution_queue", True)
    reason = opt_str(body, "status_reason")
    message = opt_str(body, "status_message")
    now = now_iso()
    with ctx.store.write():
        task = ctx.store.get_task(task_id)
        queue = _resolve_queue(ctx, body, now)
        check_transition(task, QUEUED, force)
        ctx.store.remove_entries(task_id)
        ctx.store.add_entry(queue["id"], task_id, now)
        fields = set_status(task, QUEUED, now, reason=reason, message=message)
        if update_execution_queue:
            execution = dict(task.get("execution") or {})
            execution["queue"] = queue["id"]
            task["execution"] = execution
            fields["execution.queue"] = queue["id"]
        task["system_tags"] = [t for t in task.get("system_tags") or [] if t != "development"]
        ctx.store.put_task(task)
    reply: dict[str, Any] = {"queued": 1, "updated": 1, "fields": fields}
    if opt_bool(body, "verify_watched_queue"):
        reply["queue_watched"] = _watched(ctx, str(queue["id"]))
    return reply


def _watched(ctx: Ctx, queue_id: str) -> bool:
    """Whether an active worker serves the queue (clearml-server's ``queue_watched``)."""
    return any(
        ref.get("id") == queue_id
        for worker in ctx.store.active_workers(time.time() - WORKER_ACTIVE_S)
        for ref in worker.get("queues") or []
        if isinstance(ref, dict)
    )


def dequeue(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Remove from queues; a queued task goes to ``new_status`` (default created).

    ``updated`` is 0 when the task was not queued (the agent's ``--require-queue`` check).
    """
    task_id = req_str(body, "task")
    new_status = opt_str(body, "new_status") or CREATED
    reason = opt_str(body, "status_reason")
    message = opt_str(body, "status_message")
    now = now_iso()
    with ctx.store.write():
        task = ctx.store.get_task(task_id)
        removed = ctx.store.remove_entries(task_id)
        fields: dict[str, Any] = {}
        updated = 0
        if task.get("status") == QUEUED:
            check_transition(task, new_status, opt_bool(body, "force"))
            fields = set_status(task, new_status, now, reason=reason, message=message)
            if new_status == CREATED:
                _clear_queue(task)
            updated = 1
            ctx.store.put_task(task)
    return {"dequeued": 1 if removed else 0, "updated": updated, "fields": fields}


def reset(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Back to created: clear runtime, queue, times and the task's events."""
    task_id = req_str(body, "task")
    force = opt_bool(body, "force")
    now = now_iso()
    with ctx.store.write():
        task = ctx.store.get_task(task_id)
        if task.get("status") == PUBLISHED and not force:
            check_transition(task, CREATED, False)
        removed = ctx.store.remove_entries(task_id)
        deleted = ctx.store.conn.execute("DELETE FROM events WHERE task=?", (task_id,)).rowcount
        fields = set_status(
            task,
            CREATED,
            now,
            reason=opt_str(body, "status_reason"),
            message=opt_str(body, "status_message"),
        )
        _clear_queue(task)
        task["runtime"] = {}
        task["started"] = None
        task["completed"] = None
        task["last_iteration"] = 0
        task["last_metrics"] = {}
        task["last_worker"] = None
        if opt_bool(body, "clear_all"):
            task["execution"] = {"queue": None, "parameters": {}, "artifacts": []}
            task["models"] = {"input": [], "output": []}
        ctx.store.put_task(task)
    return {
        "updated": 1,
        "fields": fields,
        "dequeued": {"removed": removed},
        "events": {"deleted": int(deleted)},
        "deleted_models": 0,
        "urls": {},
    }


ROUTES: dict[str, Handler] = {
    "tasks.started": _status_call(IN_PROGRESS),
    "tasks.stopped": _status_call(STOPPED),
    "tasks.failed": _status_call(FAILED),
    "tasks.completed": _status_call(COMPLETED),
    "tasks.close": _status_call(CLOSED),
    "tasks.publish": _status_call(PUBLISHED),
    "tasks.stop": stop,
    "tasks.ping": ping,
    "tasks.enqueue": enqueue,
    "tasks.dequeue": dequeue,
    "tasks.reset": reset,
}
