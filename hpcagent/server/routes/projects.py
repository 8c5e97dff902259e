"""``projects.*``: get_all (name regex, ids, tags, only_fields, paging), create, get_by_id,
update."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    CANNOT_UPDATE_PROJECT_LOCATION,
    PAGING_KEYS,
    VALIDATION,
    ApiFault,
    ListFilter,
    new_id,
    now_iso,
    opt_bool,
    opt_str,
    opt_str_list,
    order_and_page,
    project_fields,
    reject_unknown,
    req_str,
)
from hpcagent.server.validation import check_fields, check_project_name

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler


def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Projects; ``shallow_search`` keeps top-level projects only (no ``/`` in the name, as
    ClearML's server searches only the top level then); ``include_stats`` adds ClearML's
    ``stats.active.status_count`` (tasks per status) and ``stats.active.total_tasks`` to each."""
    wanted = ListFilter.from_body(body, also=("include_stats", "shallow_search", *PAGING_KEYS))
    shallow = opt_bool(body, "shallow_search")
    counts = ctx.store.task_status_counts() if opt_bool(body, "include_stats") else None
    admitted = [
        p
        for p in ctx.store.all_projects(wanted.ids)
        if wanted.admits(p) and not (shallow and "/" in p["name"])
    ]
    out = []
    for project in order_and_page(admitted, body):
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
    name = check_project_name(body.get("name"))
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


#: The fields ``projects.update`` sets (ClearML's schema), with their kinds.
UPDATABLE = {
    "name": "str",
    "description": "str",
    "tags": "str_list",
    "system_tags": "str_list",
    "default_output_destination": "str",
}


def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Set the fields of :data:`UPDATABLE` (the SDK tags pipeline projects ``pipeline`` and
    ``hidden`` so). A new name renames the sub-projects too (``old/x`` becomes ``new/x``), as
    ClearML's server does; a name in use is a 400, a name in another parent 400/408, and the new
    basename follows the rules of :func:`check_project_name`."""
    reject_unknown(body, ("project", *UPDATABLE))
    project = ctx.store.get_project(req_str(body, "project"))
    fields = check_fields(body, UPDATABLE)
    if "name" in fields and fields["name"] is None:
        check_project_name(None)  # a project keeps a name: 400 naming the field
    with ctx.store.write():
        renamed: list[dict[str, Any]] = []
        if fields.get("name") is not None and fields["name"].strip() != project["name"]:
            name = fields["name"] = check_project_name(fields["name"], parents=False)
            if name.rpartition("/")[0] != project["name"].rpartition("/")[0]:
                raise ApiFault(
                    CANNOT_UPDATE_PROJECT_LOCATION,
                    f"Cannot update project location. Use projects.move instead (name={name})",
                    {"field": "name"},
                )
            if ctx.store.project_by_name(name) is not None:
                raise ApiFault(
                    VALIDATION, f"Project with this name already exists: {name}", {"name": name}
                )
            old = project["name"]
            for child in ctx.store.all_projects():
                if child["name"].startswith(old + "/"):
                    child["name"] = name + child["name"][len(old) :]
                    renamed.append(child)
            project["basename"] = name.rsplit("/", 1)[-1]
        for field, value in fields.items():
            project[field] = [] if value is None and field.endswith("tags") else value
        project["last_update"] = now_iso()
        for doc in (project, *renamed):
            ctx.store.put_project(doc)
    return {"updated": 1, "fields": fields}


def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"project": ctx.store.get_project(req_str(body, "project"))}


ROUTES: dict[str, Handler] = {
    "projects.get_all": get_all,
    "projects.get_all_ex": get_all,
    "projects.create": create,
    "projects.get_by_id": get_by_id,
    "projects.update": update,
}
