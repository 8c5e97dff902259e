"""``queues.*`` helpers: name resolution, popping, counting (clearml-api.md §2a, §6.3)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from hpcagent.api.base import Service, drop_none
from hpcagent.errors import ApiError, NotFoundError

_ID_RE = re.compile(r"^[-a-f0-9]{30,}$")


def looks_like_id(value: str) -> bool:
    """True for strings the agent takes as an id as they stand (30+ hex characters)."""
    return bool(_ID_RE.match(value))


class QueuesService(Service):
    service = "queues"

    def get_all(self, **filters: Any) -> list[dict[str, Any]]:
        queues = self.call("get_all", drop_none(filters)).get("queues") or []
        return [q for q in queues if isinstance(q, dict)]

    def get_by_id(self, queue_id: str) -> dict[str, Any]:
        queue = self.call("get_by_id", {"queue": queue_id}).get("queue")
        if not isinstance(queue, dict):
            raise ApiError("queues.get_by_id", 400, 701, f"invalid queue id: {queue_id}")
        return queue

    def create(
        self, name: str, *, tags: list[str] | None = None, system_tags: list[str] | None = None
    ) -> str:
        """Create a queue; return its id."""
        body = drop_none({"name": name, "tags": tags, "system_tags": system_tags})
        return str(self.call("create", body)["id"])

    def by_name(self, name: str, *, create: bool = False) -> dict[str, Any]:
        """The queue named ``name`` (exact match, ignoring case), as ``{id, name, ...}``.

        Like the agent, the server is asked with an escaped (regex-safe) name and the exact
        match is picked here. With ``create`` a missing queue is created; otherwise a missing
        queue raises NotFoundError (an ApiError, 400/701 as clearml-server's invalid queue id).
        """
        found = self.get_all(name=re.escape(name), only_fields=["id", "name"])
        for queue in found:
            if str(queue.get("name", "")).lower() == name.lower():
                return queue
        if create:
            return {"id": self.create(name), "name": name}
        raise NotFoundError("queues.get_all", 400, 701, f"no queue named {name!r}")

    def resolve(self, name_or_id: str, *, create: bool = False) -> dict[str, Any]:
        """A queue given by id (30+ hex chars, checked with the server) or by name."""
        if looks_like_id(name_or_id):
            try:
                return self.get_by_id(name_or_id)
            except ApiError as exc:
                if exc.result_code != 400:
                    raise
        return self.by_name(name_or_id, create=create)

    def get_next_task(
        self, queue_id: str, *, get_task_info: bool = False, pop_id: str | None = None
    ) -> dict[str, Any] | None:
        """Pop the next entry ``{task, added, ...}`` of the queue; None when it is empty.

        A server that keeps pop ids (``compat.pop_ids``) gets ``pop_id`` (a fresh one unless
        given), so the client may repeat the pop after a lost reply and gets the same entry;
        any other server gets the plain call, which the client never sends twice
        (:class:`~hpcagent.errors.UnconfirmedCall` after a lost reply).
        """
        body: dict[str, Any] = {"queue": queue_id}
        if get_task_info:
            body["get_task_info"] = True
        compat = getattr(self.client, "compat", None)
        if compat is not None and compat.pop_ids():
            body["pop_id"] = pop_id or uuid.uuid4().hex
        data = self.call("get_next_task", body)
        entry = data.get("entry")
        if not data or not isinstance(entry, dict) or not entry.get("task"):
            return None
        if "task_info" in data:
            entry = {**entry, "task_info": data["task_info"]}
        return entry

    def get_num_entries(self, queue_id: str) -> int:
        return int(self.call("get_num_entries", {"queue": queue_id}).get("num", 0))

    def add_task(self, queue_id: str, task_id: str) -> dict[str, Any]:
        return self.call("add_task", {"queue": queue_id, "task": task_id})

    def remove_task(self, queue_id: str, task_id: str) -> dict[str, Any]:
        return self.call("remove_task", {"queue": queue_id, "task": task_id})

    def move_task_to_front(self, queue_id: str, task_id: str) -> int:
        """Make the task the next one popped from the queue; returns its new position (0).

        clearml-server and the embedded server answer ``400/703`` when the task is not in
        the queue; an older server without the call answers 404 (both raise ApiError).
        """
        return int(
            self.call("move_task_to_front", {"queue": queue_id, "task": task_id})["position"]
        )

    def move_task_to_back(self, queue_id: str, task_id: str) -> int:
        """Move the task to the tail of the queue; returns its new position."""
        return int(self.call("move_task_to_back", {"queue": queue_id, "task": task_id})["position"])

    def move_task_forward(self, queue_id: str, task_id: str, count: int = 1) -> int:
        """Move the task ``count`` places towards the head; returns its new position."""
        body = {"queue": queue_id, "task": task_id, "count": count}
        return int(self.call("move_task_forward", body)["position"])

    def move_task_backward(self, queue_id: str, task_id: str, count: int = 1) -> int:
        """Move the task ``count`` places towards the tail; returns its new position."""
        body = {"queue": queue_id, "task": task_id, "count": count}
        return int(self.call("move_task_backward", body)["position"])
