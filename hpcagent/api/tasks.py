"""``tasks.*`` helpers (clearml-api.md §3). Status calls always send ``force: true``."""

from __future__ import annotations

from typing import Any

from hpcagent.api.base import Service, drop_none
from hpcagent.errors import ApiError

#: Statuses a task can have (``"stopping"`` is a status_message, not a status).
TASK_STATUSES = (
    "created",
    "queued",
    "in_progress",
    "stopped",
    "published",
    "publishing",
    "closed",
    "failed",
    "completed",
    "unknown",
)


class TasksService(Service):
    service = "tasks"

    def get_by_id(self, task_id: str) -> dict[str, Any]:
        """The full task dict; ApiError 400/101 when it does not exist."""
        task = self.call("get_by_id", {"task": task_id}).get("task")
        if not isinstance(task, dict):
            raise ApiError("tasks.get_by_id", 400, 101, f"invalid task id: {task_id}")
        return task

    def get_all(self, **filters: Any) -> list[dict[str, Any]]:
        """``tasks.get_all`` with filters (id, name, project, status, only_fields, ...)."""
        tasks = self.call("get_all", drop_none(filters)).get("tasks") or []
        return [t for t in tasks if isinstance(t, dict)]

    def get_status(self, task_id: str) -> dict[str, Any]:
        """``{id, status, status_message}`` of one task (the abort poller's call)."""
        found = self.get_all(id=[task_id], only_fields=["id", "status", "status_message"])
        if not found:
            raise ApiError("tasks.get_all", 400, 101, f"invalid task id: {task_id}")
        return found[0]

    def create(
        self, name: str, project: str | None = None, *, type: str = "training", **fields: Any
    ) -> str:
        """Create a task; return its id."""
        body = drop_none({"name": name, "project": project, "type": type, **fields})
        return str(self.call("create", body)["id"])

    def edit(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """``tasks.edit`` (force). Map fields such as hyperparams/runtime are replaced whole."""
        return self.call("edit", {"task": task_id, "force": True, **fields})

    def update(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """``tasks.update``: status_message, tags, comment, name."""
        return self.call("update", {"task": task_id, **fields})

    def enqueue(
        self,
        task_id: str,
        queue: str | None = None,
        *,
        queue_name: str | None = None,
        status_reason: str = "",
        status_message: str = "",
        force: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Put the task in ``queue`` (an id) or ``queue_name``; the reply has ``queued``."""
        body = drop_none(
            {
                "task": task_id,
                "queue": queue,
                "queue_name": queue_name,
                "status_reason": status_reason,
                "status_message": status_message,
                "force": force,
                "verify_watched_queue": False,
                **extra,
            }
        )
        return self.call("enqueue", body)

    def dequeue(
        self,
        task_id: str,
        *,
        new_status: str | None = None,
        status_reason: str = "",
        status_message: str = "",
    ) -> dict[str, Any]:
        """Take the task out of its queue; the reply's ``updated`` says whether it was queued."""
        body = {
            "task": task_id,
            "new_status": new_status,
            "status_reason": status_reason,
            "status_message": status_message,
        }
        return self.call("dequeue", drop_none(body))

    def dequeue_to_start(self, task_id: str, *, status_reason: str = "") -> bool:
        """Take a queued task out of its queue to run it; False when it is not queued any
        more (:func:`hpcagent.api.compat.dequeue_to_start`: the per-version fallback)."""
        from hpcagent.api.compat import dequeue_to_start

        return dequeue_to_start(self.client, task_id, status_reason)

    def _status(self, action: str, task_id: str, reason: str, message: str, **extra: Any) -> Any:
        body = {"task": task_id, "status_reason": reason, "status_message": message, "force": True}
        return self.call(action, {**body, **extra})

    def started(self, task_id: str, status_reason: str = "", status_message: str = "") -> Any:
        return self._status("started", task_id, status_reason, status_message)

    def stopped(self, task_id: str, status_reason: str = "", status_message: str = "") -> Any:
        return self._status("stopped", task_id, status_reason, status_message)

    def failed(self, task_id: str, status_reason: str = "", status_message: str = "") -> Any:
        return self._status("failed", task_id, status_reason, status_message)

    def completed(self, task_id: str, status_reason: str = "", status_message: str = "") -> Any:
        return self._status("completed", task_id, status_reason, status_message, publish=False)

    def stop(self, task_id: str, *, status_reason: str = "", force: bool = False) -> Any:
        """Ask for an abort: queued/idle tasks stop at once, running ones get "stopping"."""
        return self.call("stop", {"task": task_id, "status_reason": status_reason, "force": force})

    def reset(self, task_id: str, *, force: bool = False) -> dict[str, Any]:
        """Back to ``created``: clears runtime, queue and times."""
        return self.call("reset", {"task": task_id, "force": force})

    def clone(self, task_id: str, **fields: Any) -> str:
        """Clone the task (``new_task_name``, ``new_task_hyperparams``, ...); return the new id."""
        return str(self.call("clone", drop_none({"task": task_id, **fields}))["id"])

    def ping(self, task_id: str) -> dict[str, Any]:
        return self.call("ping", {"task": task_id})

    def set_requirements(self, task_id: str, requirements: dict[str, Any]) -> dict[str, Any]:
        return self.call("set_requirements", {"task": task_id, "requirements": requirements})

    def edit_hyper_params(
        self, task_id: str, hyperparams: list[dict[str, Any]], *, replace: str | None = None
    ) -> dict[str, Any]:
        """Upsert ``[{section, name, value, ...}]`` items; ``replace``: none|section|all."""
        body = {"task": task_id, "hyperparams": hyperparams, "replace_hyperparams": replace}
        return self.call("edit_hyper_params", drop_none(body))

    def get_hyper_params(self, task_id: str) -> list[dict[str, Any]]:
        """The task's hyperparams as a flat ``[{section, name, value, type, description}]``."""
        params = self.call("get_hyper_params", {"tasks": [task_id]}).get("params") or []
        for entry in params:
            if isinstance(entry, dict) and entry.get("task") == task_id:
                return list(entry.get("hyperparams") or [])
        return []
