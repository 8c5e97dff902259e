"""Comparing 2-10 tasks side by side (``/compare?ids=A&ids=B...``): their scalars overlaid per
metric, their hyperparameters and configuration objects with the differing rows marked, and
their execution (repository, commit, diff, requirements, container) with the differing rows and
lines marked.

Reads go through :meth:`Ui.call` like every page: ``tasks.get_all`` for the tasks and
``events.multi_task_scalar_metrics_iter_histogram`` (ClearML's own comparison read, sampled as
the real server samples) for the charts. The row builders below are pure functions.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hpcagent.server.ui import present
from hpcagent.server.ui.core import Identity, Ui, bad_request
from hpcagent.server.ui.data import SCALAR_SAMPLES

MIN_TASKS, MAX_TASKS = 2, 10
#: The task fields the comparison shows (tasks.get_all only_fields).
FIELDS = (
    "name",
    "status",
    "status_message",
    "type",
    "project",
    "started",
    "completed",
    "created",
    "last_iteration",
    "hyperparams",
    "configuration",
    "script",
    "container",
    "tags",
)
#: Execution rows: (label, how to read the value from a task, shown as a block of lines).
EXECUTION: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("Repository", ("script", "repository"), False),
    ("Branch", ("script", "branch"), False),
    ("Commit", ("script", "version_num"), False),
    ("Entry point", ("script", "entry_point"), False),
    ("Working dir", ("script", "working_dir"), False),
    ("Binary", ("script", "binary"), False),
    ("Container image", ("container", "image"), False),
    ("Container arguments", ("container", "arguments"), False),
    ("Container setup script", ("container", "setup_shell_script"), True),
    ("Requirements", ("script", "requirements", "pip"), True),
    ("Uncommitted changes", ("script", "diff"), True),
)


def task_ids(request: Request) -> list[str]:
    """The ``ids`` of the URL, each once, in order: 2-10 of them (400 otherwise)."""
    ids: list[str] = []
    for value in request.query_params.getlist("ids"):
        for part in value.split(","):
            part = part.strip()
            if part and part not in ids:
                ids.append(part)
    if not MIN_TASKS <= len(ids) <= MAX_TASKS:
        raise bad_request(f"Compare {MIN_TASKS} to {MAX_TASKS} tasks (got {len(ids)}).")
    return ids


def labels(tasks: list[dict[str, Any]]) -> list[str]:
    """A column label per task: its name, with the id's start when names repeat."""
    names = [str(t.get("name") or t["id"]) for t in tasks]
    return [
        f"{name} ({str(t['id'])[:6]})" if names.count(name) > 1 else name
        for name, t in zip(names, tasks, strict=True)
    ]


def _dig(task: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = task
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if path[-1] == "pip" and value is None:  # requirements kept as a plain string
        value = present.requirements_text(task)
    return "" if value is None else str(value)


def param_rows(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every hyperparameter (``Args`` first, user properties last) and configuration object of
    the tasks: ``{section, name, cells (a value per task, None when it lacks it), differs}``."""
    table: dict[tuple[str, str], list[str | None]] = {}
    order: list[tuple[str, str]] = []
    for i, task in enumerate(tasks):
        items = [
            (section, item["name"], item["value"])
            for section, entries in present.hyper_sections(task)
            for item in entries
        ]
        for name, obj in sorted((task.get("configuration") or {}).items()):
            value = obj.get("value") if isinstance(obj, dict) and "value" in obj else obj
            items.append(("Configuration objects", str(name), present.pretty(value)))
        for section, name, value in items:
            key = (section, name)
            if key not in table:
                table[key] = [None] * len(tasks)
                order.append(key)
            table[key][i] = value
    rank = {"Args": 0, "properties": 2, "Configuration objects": 3}
    order.sort(key=lambda k: (rank.get(k[0], 1), k[0], k[1]))
    return [
        {
            "section": section,
            "name": name,
            "cells": table[(section, name)],
            "differs": len(set(table[(section, name)])) > 1,
        }
        for section, name in order
    ]


def marked_lines(texts: list[str]) -> list[list[tuple[str, bool]]]:
    """Each text's lines, each with whether it is missing from some other text (a line that
    differs between the tasks: a changed requirement, a line of one diff only)."""
    sets = [set(text.splitlines()) for text in texts]
    return [
        [(line, any(line not in s for s in sets)) for line in text.splitlines()] for text in texts
    ]


def execution_rows(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{label, cells, differs, block, lines}`` per execution field (a value per task;
    ``lines``: for blocks, :func:`marked_lines` of the values)."""
    rows = []
    for label, path, block in EXECUTION:
        values = [_dig(t, path) for t in tasks]
        rows.append(
            {
                "label": label,
                "cells": values,
                "differs": len(set(values)) > 1,
                "block": block,
                "lines": marked_lines(values) if block else [],
            }
        )
    return rows


def routes(ui: Ui) -> list[BaseRoute]:
    async def compare(request: Request, identity: Identity) -> Response:
        ids = task_ids(request)
        body = {"id": ids, "only_fields": list(FIELDS), "search_hidden": True}
        found = {str(t["id"]): t for t in (await ui.call(identity, "tasks.get_all", body))["tasks"]}
        missing = [i for i in ids if i not in found]
        if missing:
            raise bad_request(f"Unknown task ids: {', '.join(missing)}")
        tasks = [found[i] for i in ids]
        rows = param_rows(tasks)
        return await ui.render(
            request,
            "compare.html",
            tasks=tasks,
            labels=labels(tasks),
            params=rows,
            differing=sum(1 for r in rows if r["differs"]),
            execution=execution_rows(tasks),
            ids=ids,
            signed_in=True,
        )

    async def scalars(request: Request, identity: Identity) -> Response:
        """``{metric: {variant: {task_id: {name, x, y}}}}`` of the tasks (the real server's
        comparison read and sampling)."""
        ids = task_ids(request)
        key = "timestamp" if request.query_params.get("x") == "time" else "iter"
        body = {"tasks": ids, "key": key, "samples": SCALAR_SAMPLES}
        data = await ui.call(identity, "events.multi_task_scalar_metrics_iter_histogram", body)
        return ui.json(data["metrics"])

    return [
        Route("/compare", ui.page(compare), methods=["GET"]),
        Route("/data/compare/scalars", ui.data(scalars), methods=["GET"]),
    ]
