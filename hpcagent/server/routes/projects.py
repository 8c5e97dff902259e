"""``projects.*``: get_all (name regex, ids, only_fields), create, get_by_id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    VALIDATION,
    ApiFault,
    ListFilter,
    new_id,
    now_iso,
    opt_bool,
    opt_str,
    opt_str_list,
    project_fields,
    req_str,
)
from hpcagent.server.validation import check_name

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler


def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Projects; ``include_stats`` adds ClearML's ``stats.active.status_count`` (tasks per
    status) and ``stats.active.total_tasks`` to each."""
    wanted = ListFilter.from_body(body, with_tags=False)
    counts = ctx.store.task_status_counts() if opt_bool(body, "include_stats") else None
    out = []
    for project in ctx.store.all_projects(wanted.ids):
        if not wanted.admits(project):
            continue
        doc = project_fields(project, wanted.only_fields)
        if counts is not None:
            status_count = counts.get(project["id"], {})
            doc["stats"] = {
                "active": {
                    "status_count": status_count,
                    "total_tasks": sum(status_count.values()),
                }
            }
        out.append(doc)
    return {"projects": out}


def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    name = check_name("name", body.get("name"), "project", min_length=1)
    if ctx.store.project_by_name(name) is not None:
        raise ApiFault(VALIDATION, f"Project with this name already exists: {name}", {"name": name})
    now = now_iso()
    doc = {
        "id": new_id(),
        "name": name,
        "basename": name.rsplit("/", 1)[-1],
        "description": opt_str(body, "description") or "",
        "tags": opt_str_list(body, "tags") or [],
        "system_tags": opt_str_list(body, "system_tags") or [],
        "default_output_destination": opt_str(body, "default_output_destination"),
        "user": ctx.user,
        "company": ctx.company,
        "created": now,
        "last_update": now,
    }
    with ctx.store.write():
        ctx.store.put_project(doc)
    return {"id": doc["id"]}


def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"project": ctx.store.get_project(req_str(body, "project"))}


ROUTES: dict[str, Handler] = {
    "projects.get_all": get_all,
    "projects.get_all_ex": get_all,
    "projects.create": create,
    "projects.get_by_id": get_by_id,
}
