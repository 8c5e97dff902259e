"""The ClearML task status machine (apiserver ``bll/task/utils.py``) and status updates.

``force: true`` skips the transition check; a call to the current status is always allowed.
"stopping" is not a status: it is ``status_message == "stopping"`` on an ``in_progress`` task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import INVALID_TASK_STATUS, VALIDATION, ApiFault, iso_to_epoch

if TYPE_CHECKING:
    from hpcagent.server.store import Store

CREATED = "created"
QUEUED = "queued"
IN_PROGRESS = "in_progress"
STOPPED = "stopped"
PUBLISHED = "published"
PUBLISHING = "publishing"
CLOSED = "closed"
FAILED = "failed"
COMPLETED = "completed"
UNKNOWN = "unknown"

STATUSES = frozenset(
    {
        CREATED,
        QUEUED,
        IN_PROGRESS,
        STOPPED,
        PUBLISHED,
        PUBLISHING,
        CLOSED,
        FAILED,
        COMPLETED,
        UNKNOWN,
    }
)

TRANSITIONS: dict[str, frozenset[str]] = {
    CREATED: frozenset({QUEUED, IN_PROGRESS}),
    QUEUED: frozenset({CREATED, IN_PROGRESS, STOPPED}),
    IN_PROGRESS: frozenset({STOPPED, FAILED, CREATED, COMPLETED}),
    STOPPED: frozenset(
        {CLOSED, CREATED, FAILED, QUEUED, IN_PROGRESS, PUBLISHED, PUBLISHING, COMPLETED}
    ),
    CLOSED: frozenset({CREATED, FAILED, PUBLISHED, PUBLISHING, STOPPED}),
    FAILED: frozenset({CREATED, STOPPED, PUBLISHED, QUEUED}),
    COMPLETED: frozenset({PUBLISHED, IN_PROGRESS, CREATED}),
    PUBLISHING: frozenset({PUBLISHED}),
    PUBLISHED: frozenset(),
    UNKNOWN: frozenset(STATUSES),
}

# A worker that has not reported for this long is not "active" (tasks.stop semantics).
ACTIVE_WORKER_WINDOW_S = 600.0


def can_transition(current: str, new: str) -> bool:
    """Whether ``current -> new`` is allowed without force (same status always is)."""
    return current == new or new in TRANSITIONS.get(current, frozenset())


def check_transition(task: dict[str, Any], new: str, force: bool) -> None:
    """Raise 400/110 unless the change is allowed or forced."""
    if new not in STATUSES:
        raise ApiFault(VALIDATION, f"Validation error: invalid status '{new}'", {"field": "status"})
    current = str(task.get("status", CREATED))
    if force or can_transition(current, new):
        return
    raise ApiFault(
        INVALID_TASK_STATUS,
        f"Invalid task status: cannot change from {current} to {new}",
        {"id": task.get("id"), "current_status": current, "new_status": new},
    )


def status_fields(task: dict[str, Any]) -> dict[str, Any]:
    """The ``fields`` member of a status-call reply."""
    return {
        "status": task.get("status"),
        "status_reason": task.get("status_reason"),
        "status_message": task.get("status_message"),
        "status_changed": task.get("status_changed"),
        "last_update": task.get("last_update"),
    }


def set_status(
    task: dict[str, Any],
    new: str,
    now: str,
    *,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Move ``task`` (in place) to ``new``; overwrite reason/message; set times.

    ``started`` is set when the task enters ``in_progress`` from another status;
    ``completed`` is set by ``stopped``, ``completed``, ``failed`` and ``published``.
    Returns the reply ``fields``.
    """
    previous = task.get("status")
    task["status"] = new
    task["status_reason"] = reason or ""
    task["status_message"] = message or ""
    task["status_changed"] = now
    task["last_update"] = now
    task["last_change"] = now
    if new == IN_PROGRESS and (previous != IN_PROGRESS or not task.get("started")):
        task["started"] = now
    if new in (STOPPED, COMPLETED, FAILED, PUBLISHED) and previous != new:
        task["completed"] = now
    fields = status_fields(task)
    if new == IN_PROGRESS:
        fields["started"] = task.get("started")
    if new in (STOPPED, COMPLETED, FAILED, PUBLISHED):
        fields["completed"] = task.get("completed")
    return fields


def has_active_worker(task: dict[str, Any], now_epoch: float) -> bool:
    """A worker reported on the task recently (``last_worker`` and a fresh ``last_update``)."""
    if not task.get("last_worker"):
        return False
    seen = max(iso_to_epoch(task.get("last_update")), iso_to_epoch(task.get("last_worker_report")))
    return now_epoch - seen <= ACTIVE_WORKER_WINDOW_S


def task_for_update(store: Store, task_id: str, force: bool) -> dict[str, Any]:
    """The task if it may be changed (clearml-server's ``get_task_for_update``): created, or
    (with ``force``) queued or in_progress; 400/110 otherwise."""
    task = store.get_task(task_id)
    allowed = (CREATED, QUEUED, IN_PROGRESS) if force else (CREATED,)
    if task.get("status") not in allowed:
        raise ApiFault(
            INVALID_TASK_STATUS,
            f"Invalid task status: expected created (or queued/in_progress with force), "
            f"is {task.get('status')}",
            {"id": task_id, "status": task.get("status")},
        )
    return task
