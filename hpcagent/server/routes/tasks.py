"""``tasks.*`` document endpoints: create, read, query, edit, clone, hyperparams, delete.

Status-changing endpoints (started/stopped/enqueue/stop/reset/...) live in ``task_status``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import (
    INVALID_TASK_STATUS,
    VALIDATION,
    ApiFault,
    ListFilter,
    ListMatch,
    new_id,
    now_iso,
    opt_bool,
    opt_dict,
    opt_int,
    opt_str,
    opt_str_list,
    project_fields,
    reject_unknown,
    req_list,
    req_str,
)
from hpcagent.server.statemachine import CREATED, PUBLISHED, PUBLISHING, task_for_update
from hpcagent.server.store import TASK_SORT_COLUMNS
from hpcagent.server.validation import (
    check_name,
    check_subfields,
    check_task_type,
    check_value,
)

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx, Handler

# tasks.edit merge rules: embedded documents are shallow-merged, maps are replaced whole.
MERGED_FIELDS = ("script", "execution", "output", "models")
REPLACED_FIELDS = ("hyperparams", "configuration", "runtime", "container")
PLAIN_FIELDS = ("name", "type", "comment", "parent", "project", "tags", "system_tags")
_FIELD_KINDS: dict[str, str] = {
    "script": "dict",
    "execution": "dict",
    "output": "dict",
    "models": "dict",
    "hyperparams": "dict",
    "configuration": "dict",
    "runtime": "dict",
    "container": "dict",
    "comment": "str",
    "parent": "str",
    "project": "str",
    "tags": "str_list",
    "system_tags": "str_list",
}
# Sections of these maps are objects of objects (``hyperparams.SECTION.NAME = {...}``).
_NESTED_MAPS = {"hyperparams": 2, "configuration": 1}
# The string fields of a hyperparameter or configuration item (clearml-server's ParamsItem,
# ConfigurationItem).
_ITEM_STRINGS = dict.fromkeys(("section", "name", "value", "type", "description"), "str")
# The typed fields of the embedded documents (clearml-server's Script, Execution, Output,
# Models; ``container`` is a map of strings); other keys are stored as sent.
_EMBEDDED: dict[str, dict[str, str]] = {
    "script": {
        **dict.fromkeys(("binary", "repository", "tag", "branch", "version_num"), "str"),
        **dict.fromkeys(("entry_point", "working_dir", "diff"), "str"),
        "requirements": "dict",
    },
    "execution": {
        **dict.fromkeys(("queue", "framework", "docker_cmd"), "str"),
        **{"parameters": "dict", "model_desc": "dict", "model_labels": "int_dict"},
        **{"artifacts": "dict_list", "test_split": "number"},
    },
    "output": dict.fromkeys(("destination", "error", "result", "model"), "str"),
    "models": {"input": "dict_list", "output": "dict_list"},
}
_MODEL_ITEM = {"name": "str", "model": "str"}


def _checked(body: dict[str, Any], field: str) -> Any:
    """The field's value, checked as clearml-server's schema would (400/12 otherwise)."""
    value = body.get(field)
    if field == "name":
        return check_name(field, value, "task")
    if field == "type":
        return check_task_type(value)
    check_value(field, "str_map" if field == "container" else _FIELD_KINDS[field], value)
    depth = _NESTED_MAPS.get(field)
    if depth and value is not None:
        _check_nested(field, value, depth)
    check_subfields(field, value, _EMBEDDED.get(field, {}))
    if field == "models" and isinstance(value, dict):
        for kind in ("input", "output"):
            for index, item in enumerate(value.get(kind) or []):
                check_subfields(f"models.{kind}[{index}]", item, _MODEL_ITEM)
    return value


def _check_nested(field: str, value: dict[str, Any], depth: int) -> None:
    for key, item in value.items():
        check_value(f"{field}.{key}", "dict", item)
        if depth > 1 and isinstance(item, dict):
            _check_nested(f"{field}.{key}", item, depth - 1)
        elif isinstance(item, dict):  # an item: its fields are strings
            check_subfields(f"{field}.{key}", item, _ITEM_STRINGS)


def new_task_doc(ctx: Ctx, name: str, now: str) -> dict[str, Any]:
    """A fresh task document with every field the clients read."""
    return {
        "id": new_id(),
        "name": name,
        "type": "training",
        "status": CREATED,
        "status_reason": "",
        "status_message": "",
        "status_changed": now,
        "comment": "",
        "project": None,
        "user": ctx.user,
        "company": ctx.company,
        "parent": None,
        "created": now,
        "started": None,
        "completed": None,
        "last_update": now,
        "last_change": now,
        "last_worker": None,
        "last_worker_report": None,
        "last_iteration": 0,
        "tags": [],
        "system_tags": [],
        "script": {},
        "execution": {"queue": None, "parameters": {}, "artifacts": []},
        "hyperparams": {},
        "configuration": {},
        "container": {},
        "runtime": {},
        "output": {},
        "models": {"input": [], "output": []},
        "last_metrics": {},
    }


#: What ``tasks.create`` and ``tasks.edit`` read; any other field is a 400 naming it.
CREATE_FIELDS = (*PLAIN_FIELDS, *MERGED_FIELDS, *REPLACED_FIELDS, "output_dest")
EDIT_FIELDS = ("task", "force", *CREATE_FIELDS)


def _apply_fields(ctx: Ctx, task: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """Apply editable fields of ``body`` to ``task`` with the edit merge rules; ClearML's
    ``output_dest`` lands in ``output.destination`` (PipelineController(output_uri=...))."""
    changed: list[str] = []
    if "output_dest" in body:
        output = dict(task.get("output") or {})
        output["destination"] = opt_str(body, "output_dest")
        task["output"] = output
        changed.append("output")
    for field in PLAIN_FIELDS + MERGED_FIELDS + REPLACED_FIELDS:
        if field not in body:
            continue
        value = _checked(body, field)
        if field == "project" and value:
            ctx.store.get_project(value)
        if field in MERGED_FIELDS and isinstance(value, dict):
            merged = dict(task.get(field) or {})
            merged.update(value)
            task[field] = merged
        else:
            task[field] = copy.deepcopy(value)
        changed.append(field)
    return changed


def create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Create a task; ``name`` (3+ characters) and ``type`` (clearml-server's enum) are
    required, as by the real server."""
    reject_unknown(body, CREATE_FIELDS)
    name = check_name("name", body.get("name"), "task")
    if body.get("type") is None:
        raise ApiFault(
            VALIDATION, "Validation error: missing required field 'type'", {"field": "type"}
        )
    now = now_iso()
    task = new_task_doc(ctx, name, now)
    _apply_fields(ctx, task, body)
    ctx.store.put_task(task)
    return {"id": task["id"]}


def get_by_id(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task = ctx.store.get_task(req_str(body, "task"))
    return {"task": project_fields(task, opt_str_list(body, "only_fields"))}


def _sort_key(order: str) -> tuple[str, bool]:
    return (order[1:], True) if order.startswith("-") else (order.lstrip("+"), False)


def field_key(key: str) -> Callable[[dict[str, Any]], str]:
    def get(task: dict[str, Any]) -> str:
        return str(task.get(key) or "")

    return get


#: tasks.get_all's own filters and paging keys, beside :attr:`ListFilter.KEYS`.
GET_ALL_FILTERS = (
    *("project", "status", "type", "parent", "user", "execution.queue"),
    *("order_by", "page", "page_size", "size"),
)


def get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Filter, sort and page tasks. When every ``order_by`` key is a column
    (:data:`TASK_SORT_COLUMNS`) the tasks stream from SQL in that order, from in-order indexes
    (``server/task_query.py``), and reading stops once the page is full, so the first page of
    a large database costs a page, not the database."""
    wanted = ListFilter.from_body(body, also=GET_ALL_FILTERS)
    projects = opt_str_list(body, "project")
    # status/type/parent/user take ClearML's list operators (``["__$not", "x"]``): a plain
    # status list filters in SQL, any other shape per document
    others = {
        key: match
        for key in ("status", "type", "parent", "user")
        if (match := ListMatch.parse(opt_str_list(body, key))) is not None
    }
    statuses = others["status"].plain if "status" in others else None
    if statuses is not None:
        del others["status"]
    queues = opt_str_list(body, "execution.queue")
    order = [_sort_key(o) for o in opt_str_list(body, "order_by") or []]
    page = opt_int(body, "page")
    page_size = opt_int(body, "page_size") or opt_int(body, "size")

    def admits(task: dict[str, Any]) -> bool:
        if not wanted.admits(task):
            return False
        if not all(match.admits(task.get(k)) for k, match in others.items()):
            return False
        return queues is None or (task.get("execution") or {}).get("queue") in queues

    paged = page_size is not None and page_size > 0
    start = (page or 0) * (page_size or 0)
    out: list[dict[str, Any]] = []
    if all(key in TASK_SORT_COLUMNS for key, _ in order):
        stop = start + (page_size or 0) if paged else None
        for task in ctx.store.iter_tasks(wanted.ids, projects, statuses, order):
            if admits(task):
                out.append(task)
                if stop is not None and len(out) >= stop:
                    break
    else:
        out = [t for t in ctx.store.query_tasks(wanted.ids, projects, statuses) if admits(t)]
        for key, reverse in reversed(order):
            out.sort(key=field_key(key), reverse=reverse)
    if paged:
        out = out[start : start + (page_size or 0)]
    return {"tasks": [project_fields(t, wanted.only_fields) for t in out]}


def edit(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    reject_unknown(body, EDIT_FIELDS)
    task = ctx.store.get_task(req_str(body, "task"))
    force = opt_bool(body, "force")
    if task.get("status") != CREATED and not force:
        raise ApiFault(
            INVALID_TASK_STATUS,
            f"Invalid task status: edit needs a created task (is {task.get('status')})",
            {"id": task["id"], "status": task.get("status")},
        )
    now = now_iso()
    with ctx.store.write():
        changed = _apply_fields(ctx, task, body)
        task["last_update"] = now
        task["last_change"] = now
        ctx.store.put_task(task)
    fields = {f: task.get(f) for f in changed}
    fields["last_update"] = now
    return {"updated": 1, "fields": fields}


def update(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Fields that may change in any status: name, comment, tags, status_message, ...

    ``if_status`` (hpcagent's extension ``update_if_status``): a list of statuses; when the
    task's status is not one of them nothing is written and the reply is ``updated: 0``. The
    check and the write are one transaction, so a submitter's "job pending" message cannot
    land on a task its executor ended meanwhile.
    """
    task = ctx.store.get_task(req_str(body, "task"))
    only_in = opt_str_list(body, "if_status")
    if only_in is not None and task.get("status") not in only_in:
        return {"updated": 0, "fields": {}}
    now = now_iso()
    fields: dict[str, Any] = {}
    with ctx.store.write():
        for field in ("name", "comment", "tags", "system_tags", "project"):
            if field in body:
                value = _checked(body, field)
                if field == "project" and value:
                    ctx.store.get_project(value)
                task[field] = value
                fields[field] = value
        for field in ("status_message", "status_reason"):
            value = opt_str(body, field)
            if value is not None:
                task[field] = value
                fields[field] = value
        task["last_update"] = now
        fields["last_update"] = now
        ctx.store.put_task(task)
    return {"updated": 1, "fields": fields}


def set_requirements(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    task = ctx.store.get_task(req_str(body, "task"))
    requirements = opt_dict(body, "requirements")
    if requirements is None:
        raise ApiFault(
            VALIDATION,
            "Validation error: missing required field 'requirements'",
            {"field": "requirements"},
        )
    if task.get("status") in (PUBLISHED, PUBLISHING) and not opt_bool(body, "force"):
        raise ApiFault(
            INVALID_TASK_STATUS, "Invalid task status: task is published", {"id": task["id"]}
        )
    now = now_iso()
    with ctx.store.write():
        script = dict(task.get("script") or {})
        script["requirements"] = requirements
        task["script"] = script
        task["last_update"] = now
        ctx.store.put_task(task)
    return {"updated": 1, "fields": {"script.requirements": requirements, "last_update": now}}


def clone(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    source = ctx.store.get_task(req_str(body, "task"))
    now = now_iso()
    task = copy.deepcopy(source)
    new_name = body.get("new_task_name")
    name = (
        check_name("new_task_name", new_name, "task")
        if new_name is not None
        else f"{source.get('name')} (Clone)"
    )
    fresh = new_task_doc(ctx, name, now)
    for field in (
        "id",
        "name",
        "status",
        "status_reason",
        "status_message",
        "status_changed",
        "user",
        "company",
        "created",
        "started",
        "completed",
        "last_update",
        "last_change",
        "last_worker",
        "last_worker_report",
        "last_iteration",
        "runtime",
        "last_metrics",
    ):
        task[field] = fresh[field]
    task["parent"] = opt_str(body, "new_task_parent") or source["id"]
    task["execution"] = dict(task.get("execution") or {})
    task["execution"]["queue"] = None
    execution_overrides = opt_dict(body, "execution_overrides")
    if execution_overrides:
        _checked({"execution": execution_overrides}, "execution")
        task["execution"].update(execution_overrides)
    for src_field, dst_field in (
        ("new_task_comment", "comment"),
        ("new_task_tags", "tags"),
        ("new_task_system_tags", "system_tags"),
        ("new_task_project", "project"),
        ("new_task_hyperparams", "hyperparams"),
        ("new_task_configuration", "configuration"),
        ("new_task_container", "container"),
    ):
        if body.get(src_field) is not None:
            task[dst_field] = _checked({dst_field: body[src_field]}, dst_field)
    if body.get("new_task_input_models") is not None:
        task["models"] = {
            **(task.get("models") or {}),
            "input": _input_models(ctx, body["new_task_input_models"], now),
        }
    if task.get("project"):
        ctx.store.get_project(str(task["project"]))
    task["system_tags"] = [t for t in task.get("system_tags") or [] if t != "archived"]
    with ctx.store.write():
        ctx.store.put_task(task)
    return {"id": task["id"], "new_project": {}}


def _input_models(ctx: Ctx, items: Any, now: str) -> list[dict[str, Any]]:
    """``new_task_input_models`` as clearml-server's clone takes them: ``[{name, model}]``
    replacing the clone's input models; each model must exist."""
    field = "new_task_input_models"
    check_value(field, "list", items)
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(key), str) and item[key] for key in ("name", "model")
        ):
            raise ApiFault(
                VALIDATION,
                f"Validation error: {field}[{index}] must be an object with string name, model",
                {"field": f"{field}[{index}]"},
            )
        ctx.store.get_model(item["model"])
        out.append({"name": item["name"], "model": item["model"], "updated": now})
    return out


PROPERTIES = "properties"  # the section every status may edit (clearml-server's rule)
REPLACE_MODES = ("none", "section", "all")


def _param_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``hyperparams`` items as clearml-server's HyperParamItem: ``section`` and ``name``
    non-empty strings, ``value`` a string, ``type``/``description`` strings; the properties
    section is lower-cased."""
    items = req_list(body, "hyperparams")
    out = []
    for index, item in enumerate(items):
        field = f"hyperparams[{index}]"
        if not isinstance(item, dict):
            raise ApiFault(
                VALIDATION, f"Validation error: {field} must be an object", {"field": field}
            )
        for key in ("section", "name", "value"):
            if not isinstance(item.get(key), str) or (key != "value" and not item[key]):
                raise ApiFault(
                    VALIDATION,
                    f"Validation error: {field}.{key} must be a "
                    + ("string" if key == "value" else "non-empty string"),
                    {"field": f"{field}.{key}"},
                )
        for key in ("type", "description"):
            check_value(f"{field}.{key}", "str", item.get(key))
        section = item["section"]
        if section.lower() == PROPERTIES:
            section = PROPERTIES
        out.append({**item, "section": section})
    return out


def _stored_sections(task: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    """A copy of the task's hyperparams to edit. A record written before validation, or by a
    database edit, may hold anything: when the stored hyperparams, or one of the ``sections``
    an edit addresses, is no object the edit is refused with 400/12 naming it (never a 500),
    and the record stays as it is for the executor to refuse with its reason."""
    stored = task.get("hyperparams")
    if stored is None:
        return {}
    bad = (
        "hyperparams"
        if not isinstance(stored, dict)
        else next(
            (f"hyperparams.{s}" for s in sections if not isinstance(stored.get(s, {}), dict)), ""
        )
    )
    if bad:
        raise ApiFault(
            VALIDATION,
            f"Validation error: the task's stored {bad} is no object and cannot take items; "
            "replace it with tasks.edit (force) first",
            {"field": bad},
        )
    return copy.deepcopy(stored)


def edit_hyper_params(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Upsert hyperparam items; ``replace_hyperparams`` none|section|all. As clearml-server:
    items only of the ``properties`` section may change a task in any status; others need a
    created task, or ``force`` and a queued or in_progress one (400/110 otherwise)."""
    task_id = req_str(body, "task")
    items = _param_items(body)
    replace = opt_str(body, "replace_hyperparams", "none") or "none"
    if replace not in REPLACE_MODES:
        raise ApiFault(
            VALIDATION,
            "Validation error: field 'replace_hyperparams' must be none, section or all",
            {"field": "replace_hyperparams"},
        )
    if all(item["section"] == PROPERTIES for item in items):
        task = ctx.store.get_task(task_id)
    else:
        task = task_for_update(ctx.store, task_id, opt_bool(body, "force"))
    hyperparams = _stored_sections(task, [] if replace == "all" else [i["section"] for i in items])
    if replace == "all":
        hyperparams = {}
    elif replace == "section":
        for item in items:
            hyperparams.pop(item["section"], None)
    for item in items:
        entry = {
            "section": item["section"],
            "name": item["name"],
            "value": item["value"],
            "type": item.get("type") or "",
            "description": item.get("description") or "",
        }
        hyperparams.setdefault(item["section"], {})[item["name"]] = entry
    now = now_iso()
    with ctx.store.write():
        task["hyperparams"] = hyperparams
        task["last_update"] = now
        task["last_change"] = now
        ctx.store.put_task(task)
    return {"updated": 1}


def delete_hyper_params(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """Delete ``[{section, name?}]`` items (no name: the whole section); the status rules of
    ``edit_hyper_params``. Reply ``{deleted: n}``."""
    task_id = req_str(body, "task")
    keys = []
    for index, item in enumerate(req_list(body, "hyperparams")):
        section = item.get("section") if isinstance(item, dict) else None
        if not isinstance(section, str) or not section:
            raise ApiFault(
                VALIDATION,
                f"Validation error: hyperparams[{index}].section must be a non-empty string",
                {"field": f"hyperparams[{index}].section"},
            )
        check_value(f"hyperparams[{index}].name", "str", item.get("name"))
        keys.append((PROPERTIES if section.lower() == PROPERTIES else section, item.get("name")))
    if all(section == PROPERTIES for section, _ in keys):
        task = ctx.store.get_task(task_id)
    else:
        task = task_for_update(ctx.store, task_id, opt_bool(body, "force"))
    hyperparams = _stored_sections(task, [section for section, name in keys if name is not None])
    deleted = 0
    for section, name in keys:
        if name is None:
            deleted += 1 if hyperparams.pop(section, None) is not None else 0
        elif name in hyperparams.get(section, {}):
            del hyperparams[section][name]
            deleted += 1
    with ctx.store.write():
        task["hyperparams"] = hyperparams
        task["last_change"] = now_iso()
        ctx.store.put_task(task)
    return {"deleted": deleted}


def get_hyper_params(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    ids = opt_str_list(body, "tasks") or []
    params = []
    for task_id in ids:
        task = ctx.store.get_task(task_id)
        stored = task.get("hyperparams")  # a record from before validation may hold anything
        flat = [
            dict(item)
            for section in (stored.values() if isinstance(stored, dict) else ())
            if isinstance(section, dict)
            for item in section.values()
            if isinstance(item, dict)
        ]
        params.append({"task": task_id, "hyperparams": flat})
    return {"params": params}


ROUTES: dict[str, Handler] = {
    "tasks.create": create,
    "tasks.get_by_id": get_by_id,
    "tasks.get_all": get_all,
    "tasks.get_all_ex": get_all,
    "tasks.edit": edit,
    "tasks.update": update,
    "tasks.set_requirements": set_requirements,
    "tasks.clone": clone,
    "tasks.edit_hyper_params": edit_hyper_params,
    "tasks.get_hyper_params": get_hyper_params,
    "tasks.delete_hyper_params": delete_hyper_params,
}
