"""The task table's view (filters, sort, page, metric columns), read from and written to the
URL so that a view can be bookmarked and shared, and turned into a ``tasks.get_all`` body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from starlette.datastructures import QueryParams

from hpcagent.server.statemachine import STATUSES
from hpcagent.server.ui.present import urlencode

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_SORT = "-created"
#: Columns the table sorts by: (label, tasks.get_all order key). Each is a column of the
#: database (store.TASK_SORT_COLUMNS), so every sort pages in SQL (a sort by a document field
#: would read and sort every task: seconds at 100,000 tasks).
SORTS = (
    ("created", "created"),
    ("name", "name"),
    ("status", "status"),
    ("project", "project"),
    ("id", "id"),
    ("started", "started"),
    ("updated", "last_update"),
)
SORT_KEYS = frozenset(key for _, key in SORTS)
#: The document fields one table row needs (tasks.get_all only_fields).
ROW_FIELDS = (
    "name",
    "status",
    "status_message",
    "type",
    "project",
    "execution.queue",
    "hyperparams.properties",
    "runtime.job_id",
    "runtime.job_nodes",
    "runtime.slurm_job_id",
    "runtime.slurm_nodes",
    "created",
    "started",
    "completed",
    "last_update",
    "last_metrics",
    "tags",
    "system_tags",
)


@dataclass(frozen=True)
class TableView:
    """One view of the task table. ``archived`` shows the archive instead of the live tasks."""

    project: str = ""
    status: tuple[str, ...] = ()
    queue: str = ""
    tag: str = ""
    name: str = ""
    sort: str = DEFAULT_SORT
    page: int = 0
    size: int = PAGE_SIZES[1]
    cols: tuple[str, ...] = ()
    archived: bool = False

    @classmethod
    def from_query(cls, query: QueryParams) -> TableView:
        """The view of a URL; unknown or malformed values fall back to the defaults."""
        sort = query.get("sort") or DEFAULT_SORT
        if sort.lstrip("-") not in SORT_KEYS:
            sort = DEFAULT_SORT
        page = query.get("page") or "0"
        size = query.get("size") or str(PAGE_SIZES[1])
        return cls(
            project=query.get("project") or "",
            status=tuple(s for s in query.getlist("status") if s in STATUSES),
            queue=query.get("queue") or "",
            tag=query.get("tag") or "",
            name=query.get("name") or "",
            sort=sort,
            page=int(page) if page.isdigit() and len(page) < 7 else 0,
            size=int(size) if size in {str(n) for n in PAGE_SIZES} else PAGE_SIZES[1],
            cols=tuple(c for c in query.getlist("col") if c)[:12],
            archived=query.get("archived") == "1",
        )

    def params(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "status": list(self.status),
            "queue": self.queue,
            "tag": self.tag,
            "name": self.name,
            "sort": "" if self.sort == DEFAULT_SORT else self.sort,
            "page": self.page or "",
            "size": "" if self.size == PAGE_SIZES[1] else self.size,
            "col": list(self.cols),
            "archived": "1" if self.archived else "",
        }

    def url(self, **changes: Any) -> str:
        """The table's URL for this view with ``changes`` (any field; page resets unless set)."""
        if "page" not in changes:
            changes["page"] = 0
        view = replace(self, **changes)
        query = urlencode(view.params())
        return "/tasks" + (f"?{query}" if query else "")

    def sort_url(self, key: str) -> str:
        """Sort by ``key``; a second click on the current key flips the direction."""
        if self.sort == key:
            return self.url(sort=f"-{key}")
        return self.url(sort=key)

    def sort_mark(self, key: str) -> str:
        return "▲" if self.sort == key else "▼" if self.sort == f"-{key}" else ""

    def body(self) -> dict[str, Any]:
        """The ``tasks.get_all`` request of this view's page."""
        body: dict[str, Any] = {
            "order_by": [self.sort],
            "page": self.page,
            "page_size": self.size,
            "only_fields": list(ROW_FIELDS),
            "system_tags": ["archived"] if self.archived else ["-archived"],
        }
        if self.project:
            body["project"] = [self.project]
        if self.status:
            body["status"] = list(self.status)
        if self.queue:
            body["execution.queue"] = [self.queue]
        if self.tag:
            body["tags"] = [self.tag]
        if self.name:
            # A search box, not a regex: the text is matched literally, case-insensitively.
            body["name"] = re.escape(self.name)
        return body
