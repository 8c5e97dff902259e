"""``queues.*``: get_all, get_by_id, get_default, create, delete, get_next_task (atomic pop),
add_task, remove_task, get_num_entries, move_task_to_front / to_back / forward / backward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    NO_DEFAULT_QUEUE,
    PAGING_KEYS,
    QUEUE_NOT_EMPTY,
    TASK_NOT_QUEUED,
    VALIDATION,
    ApiFault,
    ListFilter,
    new_id,
    now_iso,
    opt_bool,
    opt_int,
    opt_str,
    opt_str_list,
    order_and_page,
    project_fields,
    req_str,
)
from hpcagent.server.routes import task_status
from hpcagent.server.validation import check_name

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler


def _with_entries(ctx: Ctx, queue: dict[str, Any]) -> dict[str, Any]:
    doc = dict(queue)
    doc["entries"] = ctx.store.entries(queue["id"])
    return doc


def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    wanted = ListFilter.from_body(body, also=PAGING_KEYS)
    only_fields = wanted.only_fields
    admitted = [q for q in ctx.store.all_queues(wanted.ids) if wanted.admits(q)]
    out = []
    for queue in order_and_page(admitted, body):
        want_entries = not only_fields or any(f.split(".")[0] == "entries" for f in only_fields)
        doc = _with_entries(ctx, queue) if want_entries else queue
        out.append(project_fields(doc, only_fields))
    return {"queues": out}


def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"queue": _with_entries(ctx, ctx.store.get_queue(req_str(body, "queue")))}


def get_default(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    for queue in ctx.store.all_queues():
        if "default" in (queue.get("system_tags") or []):
            return {"id": queue["id"], "name": queue["name"]}
    raise ApiFault(NO_DEFAULT_QUEUE, "No default queue defined")


def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    name = check_name("name", body.get("name"), "queue")
    if ctx.store.queue_by_name(name) is not None:
        raise ApiFault(VALIDATION, f"Queue with this name already exists: {name}", {"name": name})
    now = now_iso()
    doc: dict[str, Any] = {
        "id": new_id(),
        "name": name,
        "display_name": opt_str(body, "display_name"),
        "created": now,
        "last_update": now,
        "tags": opt_str_list(body, "tags") or [],
        "system_tags": opt_str_list(body, "system_tags") or [],
        "user": ctx.user,
        "company": ctx.company,
        "metadata": {},
    }
    with ctx.store.write():
        ctx.store.put_queue(doc)
    return {"id": doc["id"]}


def delete(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue_id = req_str(body, "queue")
    with ctx.store.write():
        ctx.store.get_queue(queue_id)
        if ctx.store.num_entries(queue_id) and not opt_bool(body, "force"):
            raise ApiFault(QUEUE_NOT_EMPTY, "Queue is not empty (use force)", {"id": queue_id})
        ctx.store.delete_queue(queue_id)
    return {"deleted": 1}


#: Longest ``pop_id`` accepted.
MAX_POP_ID = 128


def get_next_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Atomically pop the oldest entry: ``{entry: {task, added}}`` or ``{}`` when empty.

    The pop does not change the task's status (like clearml-server). Entries whose task has
    been deleted are dropped and skipped. ``pop_id`` (an hpcagent extension, declared in the
    token's ``hpcagent_features``): a pop repeated with the same id answers the entry the first
    one took and pops nothing (the client lost the first reply); the same id on another queue
    is 400/12.
    """
    queue_id = req_str(body, "queue")
    pop_id = opt_str(body, "pop_id")
    if pop_id is not None and not 0 < len(pop_id) <= MAX_POP_ID:
        raise ApiFault(
            VALIDATION,
            f"Validation error: pop_id must have 1 to {MAX_POP_ID} characters",
            {"field": "pop_id"},
        )
    with ctx.store.write():
        ctx.store.get_queue(queue_id)
        seen = ctx.store.recorded_pop(pop_id) if pop_id else None
        if seen is not None:
            if seen[0] != queue_id:
                raise ApiFault(
                    VALIDATION,
                    "Validation error: pop_id was used for another queue",
                    {"field": "pop_id"},
                )
            task_id, added = seen[1], seen[2]
        else:
            while True:
                popped = ctx.store.pop_entry(queue_id)
                if popped is None:
                    return {}
                task_id, added = popped
                if ctx.store.task_exists(task_id):
                    break
            if pop_id:
                ctx.store.record_pop(pop_id, queue_id, task_id, added, time.time())
    reply: dict[str, Any] = {"entry": {"task": task_id, "added": added}}
    if opt_bool(body, "get_task_info") and ctx.store.task_exists(task_id):
        task = ctx.store.get_task(task_id)
        reply["task_info"] = {"company": task.get("company"), "user": task.get("user")}
    return reply


def add_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue_id = req_str(body, "queue")
    task_id = req_str(body, "task")
    with ctx.store.write():
        ctx.store.get_queue(queue_id)
        ctx.store.get_task(task_id)
        ctx.store.add_entry(queue_id, task_id, now_iso())
    return {"added": 1}


def remove_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Remove the task's entry; with ``update_task_status`` (as clearml-server, API 2.x) a
    queued task goes back to ``created`` (``tasks.dequeue``'s rules), else its status stays."""
    queue_id = req_str(body, "queue")
    task_id = req_str(body, "task")
    with ctx.store.write():
        ctx.store.get_queue(queue_id)
        removed = ctx.store.remove_entries(task_id, queue_id)
        if removed and opt_bool(body, "update_task_status") and ctx.store.task_exists(task_id):
            dequeue = {"task": task_id, "status_reason": "removed from queue"}
            task_status.dequeue(ctx, dequeue)  # joins this write transaction
    return {"removed": removed}


def get_num_entries(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue_id = req_str(body, "queue")
    ctx.store.get_queue(queue_id)
    return {"num": ctx.store.num_entries(queue_id)}


def _move(ctx: Ctx, body: dict[str, Any], new_pos: Callable[[int], int]) -> dict[str, Any]:
    """Reposition the task in the queue; reply ``{position}`` (0 = next to be popped).

    Like clearml-server: a task that is not in the queue is ``400/703``.
    """
    queue_id = req_str(body, "queue")
    task_id = req_str(body, "task")
    with ctx.store.write():
        ctx.store.get_queue(queue_id)
        position = ctx.store.move_entry(queue_id, task_id, new_pos)
    if position is None:
        raise ApiFault(
            TASK_NOT_QUEUED,
            "Invalid queue id or task not in queue",
            {"queue": queue_id, "task": task_id},
        )
    return {"position": position}


def _count(body: dict[str, Any]) -> int:
    count = opt_int(body, "count", 1)
    if count is None or count < 1:
        raise ApiFault(VALIDATION, "Validation error: count must be >= 1", {"field": "count"})
    return count


def move_task_to_front(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return _move(ctx, body, lambda _pos: 0)


def move_task_to_back(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    # past the end; the store clamps it to the last position
    return _move(ctx, body, lambda _pos: 2**62)


def move_task_forward(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    count = _count(body)
    return _move(ctx, body, lambda pos: pos - count)


def move_task_backward(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    count = _count(body)
    return _move(ctx, body, lambda pos: pos + count)


def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    queue_id = req_str(body, "queue")
    with ctx.store.write():
        queue = ctx.store.get_queue(queue_id)
        fields: dict[str, Any] = {}
        for field in ("name", "tags", "system_tags"):
            if field in body:
                value = (
                    check_name(field, body[field], "queue")
                    if field == "name"
                    else opt_str_list(body, field)
                )
                queue[field] = value
                fields[field] = value
        queue["last_update"] = now_iso()
        ctx.store.put_queue(queue)
    return {"updated": 1, "fields": fields}


ROUTES: dict[str, Handler] = {
    "queues.get_all": get_all,
    "queues.get_all_ex": get_all,
    "queues.get_by_id": get_by_id,
    "queues.get_default": get_default,
    "queues.create": create,
    "queues.delete": delete,
    "queues.update": update,
    "queues.get_next_task": get_next_task,
    "queues.add_task": add_task,
    "queues.remove_task": remove_task,
    "queues.get_num_entries": get_num_entries,
    "queues.move_task_to_front": move_task_to_front,
    "queues.move_task_to_back": move_task_to_back,
    "queues.move_task_forward": move_task_forward,
    "queues.move_task_backward": move_task_backward,
}
