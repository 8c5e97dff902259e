"""Names of the entities a task refers to (project, parent task, queue), cached per round.

The submitter renders many tasks per pull round, mostly from a few projects. A template
that uses ``${CLEARML_TASK.project.name}`` (or ``CLEARML_PROJECT_NAME``, ``.parent.name``,
``.execution.queue.name``) asks :class:`NameCache` once per entity and round, never
once per placeholder or per task. The fetch function is given by the caller (the
submitter passes one built on the API client), so this package needs no API code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("hpcagent.templating")

#: ``fetch(kind, id)`` → the entity's name, ``None`` if it has none or does not exist.
#: ``kind`` is ``project``, ``task`` or ``queue``. May raise; a failure counts as unknown.
Fetch = Callable[[str, str], "str | None"]


class NameCache:
    """``cache(kind, id)`` → name, fetched at most once per :meth:`new_round`."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._names: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many times fetch was called (for tests and debugging)

    def new_round(self) -> None:
        """Forget the names (a renamed project shows its new name from the next round on)."""
        with self._lock:
            self._names.clear()

    def __call__(self, kind: str, entity_id: str) -> str | None:
        key = (kind, entity_id)
        with self._lock:
            if key in self._names:
                return self._names[key]
        self.fetches += 1
        try:
            name = self._fetch(kind, entity_id)
        except Exception as exc:  # a name is optional: the template has a default or a comment
            log.warning("could not look up the name of %s %s: %s", kind, entity_id, exc)
            name = None
        with self._lock:
            self._names[key] = name
        return name


def api_fetch(send: Callable[[str, dict[str, object]], dict[str, object]]) -> Fetch:
    """A :data:`Fetch` on a ClearML API ``send(method, body)`` (``ApiClient.send``):
    ``projects.get_all``, ``tasks.get_all`` or ``queues.get_all`` by id, name only."""

    service = {"project": ("projects", "projects"), "task": ("tasks", "tasks")}
    service["queue"] = ("queues", "queues")

    def fetch(kind: str, entity_id: str) -> str | None:
        endpoint, key = service[kind]
        body: dict[str, object] = {"id": [entity_id], "only_fields": ["id", "name"]}
        if kind != "queue":
            body["search_hidden"] = True
        data = send(f"{endpoint}.get_all", body)
        rows = data.get(key) or []
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and str(row.get("id")) == entity_id:
                name = row.get("name")
                return str(name) if name not in (None, "") else None
        return None

    return fetch
