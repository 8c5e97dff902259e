"""What a task hands on: ``tasks.add_or_update_artifacts``, ``delete_artifacts``,
``add_or_update_model``, ``delete_models`` and ``tasks.delete`` with its cleanup options.

Artifacts are stored as the real server stores them, one entry per ``(key, mode)``, and read
back as the list ``execution.artifacts`` sorted by key. Status rules follow clearml-server's
``get_task_for_update``: a created task, or with ``force`` also a queued or in_progress one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from hpcagent.server.fields import (
    INVALID_TASK_STATUS,
    VALIDATION,
    ApiFault,
    now_iso,
    opt_bool,
    opt_int,
    opt_list,
    req_list,
    req_str,
)
from hpcagent.server.routes.models import defer_file_deletions, delete_model
from hpcagent.server.statemachine import IN_PROGRESS, task_for_update
from hpcagent.server.validation import check_value

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler

ARTIFACT_MODES = ("input", "output")
MODEL_TYPES = ("input", "output")
_ARTIFACT_FIELDS = {
    "key": "str",
    "type": "str",
    "mode": "str",
    "uri": "str",
    "hash": "str",
    "content_size": "number",
    "timestamp": "number",
    "type_data": "dict",
    "display_data": "list",
}


def _artifact(index: int, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ApiFault(
            VALIDATION,
            f"Validation error: artifacts[{index}] must be an object",
            {"field": "artifacts"},
        )
    out: dict[str, Any] = {}
    for name, kind in _ARTIFACT_FIELDS.items():
        if name not in item:
            continue
        out[name] = check_value(f"artifacts[{index}].{name}", kind, item[name])
    for required in ("key", "type"):
        if not out.get(required):
            raise ApiFault(
                VALIDATION,
                f"Validation error: missing required field 'artifacts[{index}].{required}'",
                {"field": f"artifacts[{index}].{required}"},
            )
    out["mode"] = out.get("mode") or "output"
    if out["mode"] not in ARTIFACT_MODES:
        raise ApiFault(
            VALIDATION,
            f"Validation error: artifacts[{index}].mode must be input or output",
            {"field": f"artifacts[{index}].mode"},
        )
    return out


def _artifact_ids(body: dict[str, Any]) -> list[tuple[str, str]]:
    ids = []
    for index, item in enumerate(req_list(body, "artifacts")):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise ApiFault(
                VALIDATION,
                f"Validation error: artifacts[{index}] needs a string 'key'",
                {"field": "artifacts"},
            )
        ids.append((item["key"], str(item.get("mode") or "output")))
    return ids


def _save_artifacts(ctx: Ctx, task: dict[str, Any], by_id: dict[tuple[str, str], Any]) -> None:
    execution = dict(task.get("execution") or {})
    execution["artifacts"] = sorted(by_id.values(), key=lambda a: str(a.get("key")))
    task["execution"] = execution
    now = now_iso()
    task["last_update"] = now
    task["last_change"] = now
    ctx.store.put_task(task)


def _current(task: dict[str, Any]) -> dict[tuple[str, str], Any]:
    items = (task.get("execution") or {}).get("artifacts") or []
    return {(str(a.get("key")), str(a.get("mode") or "output")): a for a in items}


def add_or_update_artifacts(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task = task_for_update(ctx.store, req_str(body, "task"), opt_bool(body, "force"))
    new = [_artifact(i, a) for i, a in enumerate(req_list(body, "artifacts"))]
    with ctx.store.write():
        current = _current(task)
        for artifact in new:
            current[(artifact["key"], artifact["mode"])] = artifact
        _save_artifacts(ctx, task, current)
    return {"updated": 1}


def delete_artifacts(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task = task_for_update(ctx.store, req_str(body, "task"), opt_bool(body, "force"))
    ids = _artifact_ids(body)
    with ctx.store.write():
        current = _current(task)
        deleted = sum(1 for key in set(ids) if current.pop(key, None) is not None)
        _save_artifacts(ctx, task, current)
    return {"deleted": deleted}


def add_or_update_model(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Set ``models.{input|output}`` entry ``name`` of the task to ``model``."""
    task = task_for_update(ctx.store, req_str(body, "task"), force=True)
    name = req_str(body, "name")
    model_id = req_str(body, "model")
    kind = req_str(body, "type")
    if kind not in MODEL_TYPES:
        raise ApiFault(
            VALIDATION, "Validation error: field 'type' must be input or output", {"field": "type"}
        )
    ctx.store.get_model(model_id)
    iteration = opt_int(body, "iteration")
    now = now_iso()
    with ctx.store.write():
        models = dict(task.get("models") or {})
        items = [m for m in models.get(kind) or [] if m.get("name") != name]
        items.append({"name": name, "model": model_id, "updated": now})
        models[kind] = items
        task["models"] = models
        task["last_update"] = now
        if iteration is not None:  # clearml-server: last_iteration_max
            task["last_iteration"] = max(int(task.get("last_iteration") or 0), iteration)
        ctx.store.put_task(task)
    return {"updated": 1}


def delete_models(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task = task_for_update(ctx.store, req_str(body, "task"), force=True)
    wanted = {
        (str(m.get("name")), str(m.get("type")))
        for m in opt_list(body, "models") or []
        if isinstance(m, dict)
    }
    with ctx.store.write():
        models = dict(task.get("models") or {})
        for kind in MODEL_TYPES:
            models[kind] = [
                m for m in models.get(kind) or [] if (m.get("name"), kind) not in wanted
            ]
        task["models"] = models
        ctx.store.put_task(task)
    return {"updated": 1}


def _event_urls(ctx: Ctx, task_id: str) -> list[str]:
    """URLs of the task's debug images and of images inside its plots."""
    urls: list[str] = []
    rows = ctx.store.conn.execute(
        "SELECT type, doc FROM events WHERE task=? AND type IN ('training_debug_image', 'plot')",
        (task_id,),
    )
    for ev_type, doc in rows:
        ev = orjson.loads(doc)
        if ev_type == "training_debug_image" and isinstance(ev.get("url"), str):
            urls.append(ev["url"])
        elif isinstance(ev.get("plot_str"), str) and '"source"' in ev["plot_str"]:
            try:
                images = orjson.loads(ev["plot_str"]).get("layout", {}).get("images", [])
            except (orjson.JSONDecodeError, AttributeError):
                continue
            urls.extend(i["source"] for i in images if isinstance(i, dict) and i.get("source"))
    return urls


def delete(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Delete a task, its events and queue entries; ``delete_output_models`` (default true)
    deletes the models it created that no other task uses (the others lose their ``task``);
    ``delete_external_artifacts`` (default true) deletes the files of its output artifacts,
    models and debug images that lie in this server's files store; ``return_file_urls`` lists
    them."""
    task = ctx.store.get_task(req_str(body, "task"))
    force = opt_bool(body, "force")
    if task.get("status") == IN_PROGRESS and not force:
        raise ApiFault(
            INVALID_TASK_STATUS,
            "Invalid task status: task is in progress (use force)",
            {"id": task["id"]},
        )
    artifact_urls = [
        str(a.get("uri"))
        for a in (task.get("execution") or {}).get("artifacts") or []
        if a.get("mode", "output") == "output" and a.get("uri")
    ]
    event_urls = _event_urls(ctx, task["id"])
    model_urls: list[str] = []
    updated_models = 0
    updated_children = 0
    with ctx.store.write():
        for model in ctx.store.query_models(None, None, [task["id"]]):
            in_use = any(
                m.get("model") == model["id"]
                for other in ctx.store.query_tasks(None, None, None)
                if other["id"] != task["id"]
                for m in (other.get("models") or {}).get("input") or []
            )
            if opt_bool(body, "delete_output_models", True) and not in_use:
                delete_model(ctx, model, force=True)
                if model.get("uri"):
                    model_urls.append(str(model["uri"]))
            else:
                model["task"] = None
                ctx.store.put_model(model)
                updated_models += 1
        for child in ctx.store.query_tasks(None, None, None):
            if child.get("parent") == task["id"]:
                child["parent"] = None
                ctx.store.put_task(child)
                updated_children += 1
        deleted_events = ctx.store.delete_task(task["id"])
        if opt_bool(body, "delete_external_artifacts", True):
            defer_file_deletions(ctx, artifact_urls + model_urls + event_urls)
    reply: dict[str, Any] = {
        "deleted": True,  # a boolean in ClearML's schema; the SDK refuses an integer
        "updated_children": updated_children,
        "updated_models": updated_models,
        "events": {"deleted": deleted_events},
    }
    if opt_bool(body, "return_file_urls"):
        reply["urls"] = {
            "model_urls": model_urls,
            "event_urls": event_urls,
            "artifact_urls": artifact_urls,
        }
    return reply


ROUTES: dict[str, Handler] = {
    "tasks.add_or_update_artifacts": add_or_update_artifacts,
    "tasks.delete_artifacts": delete_artifacts,
    "tasks.add_or_update_model": add_or_update_model,
    "tasks.delete_models": delete_models,
    "tasks.delete": delete,
}
