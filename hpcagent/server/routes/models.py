"""``models.*``: the model registry (ClearML API 2.23 semantics, clearml-server ``models``).

A model is a document ``{id, name, uri, task, project, framework, design, labels, ready,
metadata, tags, system_tags, comment, parent, user, company, created, last_update, ...}``.
``metadata`` is stored as ClearML stores it, a map ``key -> {key, type, value}``.
The functions take the store explicitly where other services (``tasks.delete``, the web UI)
need them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    INVALID_TASK_STATUS,
    MODEL_CREATING_TASK_EXISTS,
    MODEL_IN_USE,
    PAGING_KEYS,
    VALIDATION,
    ApiFault,
    ListFilter,
    new_id,
    now_iso,
    opt_bool,
    opt_int,
    opt_list,
    opt_str,
    opt_str_list,
    order_and_page,
    project_fields,
    req_str,
)
from hpcagent.server.statemachine import CREATED, IN_PROGRESS, PUBLISHED
from hpcagent.server.validation import check_fields, check_name

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler

# Field -> expected JSON type of the editable model fields (create/edit/update).
MODEL_FIELDS: dict[str, str] = {
    "name": "str",
    "uri": "str",
    "comment": "str",
    "framework": "str",
    "project": "str",
    "parent": "str",
    "task": "str",
    "ready": "bool",
    "public": "bool",
    "design": "dict",
    "labels": "int_dict",
    "tags": "str_list",
    "system_tags": "str_list",
    "metadata": "metadata",
}
DELETED_PREFIX = "__DELETED__"


def new_model_doc(ctx: Ctx, now: str) -> dict[str, Any]:
    """A fresh model document with every field the clients read."""
    return {
        "id": new_id(),
        "name": "",
        "uri": None,
        "comment": "",
        "framework": None,
        "design": {},
        "labels": {},
        "ready": False,
        "project": None,
        "parent": None,
        "task": None,
        "tags": [],
        "system_tags": [],
        "metadata": {},
        "user": ctx.user,
        "company": ctx.company,
        "created": now,
        "last_update": now,
        "last_change": now,
        "last_iteration": 0,
        "last_metrics": {},
    }


def _metadata_map(items: list[Any] | dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = items.values() if isinstance(items, dict) else items
    out: dict[str, dict[str, Any]] = {}
    for item in values:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise ApiFault(
                VALIDATION,
                "Validation error: field 'metadata' must be an array of {key, type, value}",
                {"field": "metadata"},
            )
        out[item["key"]] = {
            "key": item["key"],
            "type": str(item.get("type") or ""),
            "value": "" if item.get("value") is None else str(item["value"]),
        }
    return out


def _apply(ctx: Ctx, model: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Apply the editable fields of ``body``; returns what changed."""
    values = check_fields(body, MODEL_FIELDS)
    if "name" in values:
        values["name"] = check_name("name", values["name"], "model")
    if values.get("project"):
        ctx.store.get_project(values["project"])
    if values.get("task"):
        ctx.store.get_task(values["task"])
    if "metadata" in values:
        values["metadata"] = _metadata_map(values["metadata"] or [])
    model.update(values)
    return values


def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    check_name("name", body.get("name"), "model")
    now = now_iso()
    model = new_model_doc(ctx, now)
    with ctx.store.write():
        _apply(ctx, model, body)
        ctx.store.put_model(model)
    return {"id": model["id"], "created": True}


def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    return {"model": ctx.store.get_model(req_str(body, "model"))}


def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    wanted = ListFilter.from_body(
        body,
        also=("project", "task", "uri", "framework", "ready", *PAGING_KEYS),
    )
    projects = opt_str_list(body, "project")
    task_ids = opt_str_list(body, "task")
    uris = opt_str_list(body, "uri")
    frameworks = opt_str_list(body, "framework")
    ready = body.get("ready")
    if ready is not None:
        ready = opt_bool(body, "ready")
    out = []
    for model in ctx.store.query_models(wanted.ids, projects, task_ids):
        if not wanted.admits(model):
            continue
        if uris is not None and model.get("uri") not in uris:
            continue
        if frameworks is not None and model.get("framework") not in frameworks:
            continue
        if ready is not None and bool(model.get("ready")) != ready:
            continue
        out.append(model)
    out = order_and_page(out, body)
    return {"models": [project_fields(m, wanted.only_fields) for m in out]}


def _edit(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    model = ctx.store.get_model(req_str(body, "model"))
    now = now_iso()
    with ctx.store.write():
        fields = _apply(ctx, model, body)
        iteration = opt_int(body, "iteration")
        if iteration is not None:
            model["last_iteration"] = max(int(model.get("last_iteration") or 0), iteration)
        model["last_update"] = now
        model["last_change"] = now
        ctx.store.put_model(model)
    fields["last_update"] = now
    return {"updated": 1, "fields": fields}


def set_ready(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Mark the model ready (published); ``publish_task`` also publishes its task."""
    model = ctx.store.get_model(req_str(body, "model"))
    published_task: dict[str, Any] = {}
    now = now_iso()
    with ctx.store.write():
        if model.get("task") and opt_bool(body, "publish_task", True):
            task = ctx.store.get_task(str(model["task"])) if _task_exists(ctx, model) else None
            if task is not None and task.get("status") != PUBLISHED:
                task["status"] = PUBLISHED
                task["status_changed"] = now
                task["last_update"] = now
                ctx.store.put_task(task)
                published_task = {"id": task["id"], "data": {"updated": 1}}
        model["ready"] = True
        model["last_update"] = now
        ctx.store.put_model(model)
    return {"updated": 1, "published_task": published_task}


def _task_exists(ctx: Ctx, model: dict[str, Any]) -> bool:
    return bool(model.get("task")) and ctx.store.task_exists(str(model["task"]))


def delete_model(ctx: Ctx, model: dict[str, Any], force: bool) -> None:
    """Delete ``model``: tasks using it as input keep a ``__DELETED__`` reference (with force),
    its creating task drops it from its output models. Call inside ``store.write()``."""
    model_id = model["id"]
    users = [
        t
        for t in ctx.store.query_tasks(None, None, None)
        if any(m.get("model") == model_id for m in (t.get("models") or {}).get("input") or [])
    ]
    if users and not force:
        raise ApiFault(
            MODEL_IN_USE,
            "Model is used by tasks: as execution model, use force=True to delete",
            {"model": model_id, "num_tasks": len(users)},
        )
    for task in users:
        for item in task["models"]["input"]:
            if item.get("model") == model_id:
                item["model"] = DELETED_PREFIX + model_id
        ctx.store.put_task(task)
    if _task_exists(ctx, model) and model.get("task") not in {t["id"] for t in users}:
        task = ctx.store.get_task(str(model["task"]))
        models = task.get("models") or {}
        if task.get("status") == PUBLISHED and not force:
            raise ApiFault(
                MODEL_CREATING_TASK_EXISTS,
                "Task that created this model exists and is published, use force=True to delete",
                {"task": task["id"]},
            )
        models["output"] = [m for m in models.get("output") or [] if m.get("model") != model_id]
        task["models"] = models
        ctx.store.put_task(task)
    ctx.store.delete_model(model_id)


def defer_file_deletions(ctx: Ctx, urls: list[str]) -> None:
    """Schedule the deletion of those ``urls`` that lie in this server's files store, after
    the grace period (the SDK deletes them itself right after the call; the server catches the
    rest). Call inside ``store.write()``."""
    if ctx.files is None:
        return
    ours = [u for u in urls if ctx.files.relpath_of_url(u) is not None]
    if ours:
        ctx.store.defer_file_deletions(ours, time.time() + ctx.files.limits.delete_delay_s)


def delete(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Delete a model; with ``delete_external_artifacts`` (default true) its file too when it
    lies in this server's files store."""
    model = ctx.store.get_model(req_str(body, "model"))
    with ctx.store.write():
        delete_model(ctx, model, opt_bool(body, "force"))
        if opt_bool(body, "delete_external_artifacts", True) and model.get("uri"):
            defer_file_deletions(ctx, [str(model["uri"])])
    return {"deleted": True, "url": model.get("uri")}


def add_or_update_metadata(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    model = ctx.store.get_model(req_str(body, "model"))
    items = _metadata_map(opt_list(body, "metadata") or [])
    with ctx.store.write():
        current = {} if opt_bool(body, "replace_metadata") else dict(model.get("metadata") or {})
        current.update(items)
        model["metadata"] = current
        model["last_update"] = now_iso()
        ctx.store.put_model(model)
    return {"updated": 1}


def delete_metadata(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    model = ctx.store.get_model(req_str(body, "model"))
    keys = opt_str_list(body, "keys") or []
    with ctx.store.write():
        metadata = {k: v for k, v in (model.get("metadata") or {}).items() if k not in keys}
        model["metadata"] = metadata
        ctx.store.put_model(model)
    return {"updated": 1}


def _set_archived(archived: bool) -> Handler:
    def handler(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        ids = opt_str_list(body, "ids") or []
        succeeded = []
        with ctx.store.write():
            for model_id in ids:
                model = ctx.store.get_model(model_id)
                tags = [t for t in model.get("system_tags") or [] if t != "archived"]
                model["system_tags"] = [*tags, "archived"] if archived else tags
                ctx.store.put_model(model)
                succeeded.append({"id": model_id, ("archived" if archived else "unarchived"): 1})
        return {"succeeded": succeeded, "failed": []}

    return handler


def update_for_task(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """The task's output model: update its last one, or create one (named after the task)."""
    task = ctx.store.get_task(req_str(body, "task"))
    uri = opt_str(body, "uri")
    override = opt_str(body, "override_model_id")
    if bool(uri) == bool(override):
        raise ApiFault(
            VALIDATION,
            "Validation error: exactly one of 'uri', 'override_model_id' is required",
            {"fields": ["uri", "override_model_id"]},
        )
    if task.get("status") not in (CREATED, IN_PROGRESS):
        raise ApiFault(
            INVALID_TASK_STATUS,
            "Invalid task status: model can only be updated for created or in_progress tasks",
            {"id": task["id"], "status": task.get("status")},
        )
    now = now_iso()
    outputs = list((task.get("models") or {}).get("output") or [])
    with ctx.store.write():
        if override:
            model = ctx.store.get_model(override)
            created = False
        elif outputs:
            reply = _edit(ctx, {**body, "model": outputs[-1]["model"]})
            return {**reply, "id": outputs[-1]["model"], "created": False}
        else:
            model = new_model_doc(ctx, now)
            model.update(name=task.get("name") or "", project=task.get("project"))
            model["comment"] = f"Created by task `{task.get('name')}` ({task['id']})"
            model["task"] = task["id"]
            _apply(ctx, model, {k: v for k, v in body.items() if k != "task"})
            ctx.store.put_model(model)
            created = True
        models = dict(task.get("models") or {})
        models["output"] = [
            *[m for m in outputs if m.get("model") != model["id"]],
            {"model": model["id"], "name": "Output Model", "updated": now},
        ]
        task["models"] = models
        iteration = opt_int(body, "iteration")
        if iteration is not None:
            task["last_iteration"] = max(int(task.get("last_iteration") or 0), iteration)
        task["last_update"] = now
        ctx.store.put_task(task)
    return {"id": model["id"], "created": created}


ROUTES: dict[str, Handler] = {
    "models.create": create,
    "models.get_by_id": get_by_id,
    "models.get_all": get_all,
    "models.get_all_ex": get_all,
    "models.edit": _edit,
    "models.update": _edit,
    "models.set_ready": set_ready,
    "models.delete": delete,
    "models.add_or_update_metadata": add_or_update_metadata,
    "models.delete_metadata": delete_metadata,
    "models.archive_many": _set_archived(True),
    "models.unarchive_many": _set_archived(False),
    "models.update_for_task": update_for_task,
}
