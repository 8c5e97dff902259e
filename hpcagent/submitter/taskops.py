"""The submitter's calls to the server about tasks and queues (all with ``force`` where
the agent sends it, clearml-api.md §2a/§8).

Every function here takes the :class:`~hpcagent.api.ApiClient` and does one visible
thing to a task; the loop decides when.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from hpcagent.api import ApiClient
from hpcagent.errors import ApiError
from hpcagent.scheduler.base import (
    PROP_END,
    PROP_JOB_ID,
    PROP_NODES,
    PROP_OUTPUT,
    PROP_OUTPUT_TAIL,
    PROP_QUEUE,
    PROP_SCHEDULER,
    PROP_WORKER,
)

log = logging.getLogger("hpcagent.submitter")

#: Task statuses that mean "the task's outcome is settled" (nothing left to write).
FINAL_STATUSES = frozenset({"completed", "failed", "stopped", "published", "closed"})
#: Statuses that mean "the user took the task back" while its job was alive.
WITHDRAWN_STATUSES = frozenset({"stopped", "created", "closed", "published"})
#: Longest status message we write (the tail of an output file can be long).
MAX_MESSAGE = 4000


def get_task(client: ApiClient, task_id: str) -> dict[str, Any] | None:
    """The full task dict as the templates see it (``tasks.get_all``), or None if gone."""
    data = client.send("tasks.get_all", {"id": [task_id], "search_hidden": True})
    tasks = data.get("tasks") or []
    return tasks[0] if tasks and isinstance(tasks[0], dict) else None


def get_statuses(client: ApiClient, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{task_id: {status, status_message, ...}}`` in one call per 500 ids."""
    out: dict[str, dict[str, Any]] = {}
    ids = list(task_ids)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        data = client.send(
            "tasks.get_all",
            {
                "id": chunk,
                "only_fields": ["id", "status", "status_message", "status_reason"],
                "search_hidden": True,
            },
        )
        for task in data.get("tasks") or []:
            if isinstance(task, dict) and task.get("id"):
                out[str(task["id"])] = task
    return out


def set_message(client: ApiClient, task_id: str, message: str) -> None:
    """Show ``message`` as the task's status message without touching its status."""
    client.send("tasks.update", {"task": task_id, "status_message": message[:MAX_MESSAGE]})


def set_queued_message(client: ApiClient, task_id: str, message: str) -> bool:
    """Show ``message`` (the job's state) on a task that is still ``queued``; False, and nothing
    written, when the task has moved on.

    The status read before is the caller's, from the start of a tracking cycle: in between, the
    executor may have ended the task with a message of its own (an invalid record fails within
    a second of the job starting), which the job state must not overwrite. The embedded server
    makes the write conditional on the status in the same transaction (``if_status``); the
    ClearML API has no such condition, so against other servers the status is read again right
    before the write, leaving a window of one round trip (api/compat.py).
    """
    if client.compat.conditional_update():
        body = {"task": task_id, "status_message": message[:MAX_MESSAGE], "if_status": ["queued"]}
        return bool(client.send("tasks.update", body).get("updated"))
    now = get_statuses(client, [task_id]).get(task_id)
    if now is None or now.get("status") != "queued":
        return False
    set_message(client, task_id, message)
    return True


def fail(client: ApiClient, task_id: str, reason: str, message: str) -> None:
    """Mark the task failed (force) with a reason and a (possibly long) message."""
    client.send(
        "tasks.failed",
        {
            "task": task_id,
            "force": True,
            "status_reason": reason[:200],
            "status_message": message[:MAX_MESSAGE],
        },
    )


def requeue_front(client: ApiClient, task_id: str, queue_id: str, reason: str) -> bool:
    """Put a popped (still ``queued``) task back at the head of its queue.

    Returns False when the task is no longer queued (the user took it back meanwhile);
    then nothing is re-added. The head position needs ``queues.move_task_to_front``
    (clearml-server has it); a server without it leaves the task at the tail (warned).
    """
    statuses = get_statuses(client, [task_id])
    if statuses.get(task_id, {}).get("status") != "queued":
        return False
    client.queues.add_task(queue_id, task_id)
    try:
        client.queues.move_task_to_front(queue_id, task_id)
    except ApiError as exc:
        log.warning(
            "task %s: server cannot move it to the front of queue %s (%s); it waits at the tail",
            task_id,
            queue_id,
            exc.message or exc,
        )
    try:  # only while queued: another submitter may pop and start it at once
        set_queued_message(client, task_id, f"back in queue: {reason}")
    except ApiError:
        log.debug("could not set the status message of %s", task_id, exc_info=True)
    return True


def _prop(name: str, value: str) -> dict[str, str]:
    return {"section": "properties", "name": name, "value": value, "type": "str"}


def record_job(
    client: ApiClient,
    task_id: str,
    *,
    job_id: str,
    scheduler: str,
    queue_name: str,
    worker_id: str,
    nodes: str = "",
) -> None:
    """Record the job (id, scheduler, queue, worker, later its nodes) in the ``properties``
    section, under the names of ``scheduler.base`` (``job-id``, ``job-scheduler``, ...).

    Only ``tasks.edit_hyper_params`` is used: it upserts item by item, so it can race with
    nothing. The submitter never writes ``runtime``: ``tasks.edit`` replaces that map whole,
    and the executor (on the compute node) and the SDK inside the task write it while the job
    runs (docs/structure.md, "Who writes what on a task").
    """
    items = {
        PROP_JOB_ID: job_id,
        PROP_SCHEDULER: scheduler,
        PROP_QUEUE: queue_name,
        PROP_WORKER: worker_id,
        PROP_NODES: nodes,
    }
    props = [_prop(name, value) for name, value in items.items() if value]
    client.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": props})


def record_end(client: ApiClient, task_id: str, *, end: str, output: str, tail: str) -> None:
    """Record how the job ended, its output file and that file's last lines in the
    ``properties`` section (``job-end``, ``job-output``, ``job-output-tail``): item-wise, so
    it races with nothing, and allowed in any task status (as clearml-server allows for
    properties). Empty values are written too: an earlier run's tail must not stay. A re-run
    (reset or clone) carries the earlier job's values until its own job ends: readers take
    them only from a task in a final status (the web UI's ``present.job_output``)."""
    items = {PROP_END: end, PROP_OUTPUT: output, PROP_OUTPUT_TAIL: tail[-MAX_MESSAGE:]}
    props = [_prop(name, value) for name, value in items.items()]
    client.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": props})


def add_log(client: ApiClient, task_id: str, message: str) -> None:
    """One log line on the task (best effort)."""
    event = {
        "type": "log",
        "task": task_id,
        "timestamp": int(time.time() * 1000),
        "level": "info",
        "worker": "hpcagent-slurm",
        "msg": message,
    }
    try:
        client.send_lines("events.add_batch", [event])
    except ApiError:
        log.debug("could not log to task %s", task_id, exc_info=True)
