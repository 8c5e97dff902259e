"""The UI's actions (POST, CSRF-checked): abort, enqueue, dequeue, reset, archive, delete,
clone, edit a draft, and the task table's bulk actions.

Each action is one or more REST endpoint calls through :meth:`Ui.call`: the same handler, status
machine and errors as the API (an abort of a finished task is the API's 400/110, shown as such).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hpcagent.server.ui.core import Identity, Ui, bad_request, form_str, read_form, safe_next

ACTIONS = ("abort", "enqueue", "dequeue", "reset", "archive", "unarchive", "delete")
_HP_FIELD = re.compile(r"^hp\.(\d{1,4})\.(section|name|value)$")
MAX_NEW_PARAMS = 50


async def run_action(
    ui: Ui, identity: Identity, task_id: str, action: str, form: FormData
) -> dict[str, Any]:
    """Run one named action on one task through the REST endpoints."""
    if action == "abort":
        return await ui.call(
            identity, "tasks.stop", {"task": task_id, "status_reason": "aborted (web UI)"}
        )
    if action == "enqueue":
        queue = form_str(form, "queue")
        if not queue:
            raise bad_request("Choose a queue to enqueue to.")
        return await ui.call(identity, "tasks.enqueue", {"task": task_id, "queue": queue})
    if action == "dequeue":
        return await ui.call(identity, "tasks.dequeue", {"task": task_id})
    if action == "reset":
        return await ui.call(identity, "tasks.reset", {"task": task_id})
    if action in ("archive", "unarchive"):
        task = await ui.call(
            identity, "tasks.get_by_id", {"task": task_id, "only_fields": ["system_tags"]}
        )
        tags = [t for t in task["task"].get("system_tags") or [] if t != "archived"]
        if action == "archive":
            tags.append("archived")
        return await ui.call(identity, "tasks.update", {"task": task_id, "system_tags": tags})
    if action == "delete":
        return await ui.call(identity, "tasks.delete", {"task": task_id})
    raise bad_request(f"Unknown action: {action}")


def _hyperparams(task: dict[str, Any], form: FormData) -> dict[str, Any]:
    """The task's hyperparameters as edited in the form: existing rows (``hp.N.*``) keep their
    type and description; a row with an empty name is dropped; new rows add parameters."""
    rows: dict[int, dict[str, str]] = {}
    for key in form:
        match = _HP_FIELD.match(key)
        if match:
            rows.setdefault(int(match.group(1)), {})[match.group(2)] = form_str(form, key)
    if len(rows) > 10000:
        raise bad_request("Too many parameters in one form.")
    old = task.get("hyperparams") or {}
    out: dict[str, Any] = {}
    for index in sorted(rows):
        row = rows[index]
        section = row.get("section", "").strip()
        name = row.get("name", "").strip()
        if not name:
            continue
        if not section:
            raise bad_request(f"Parameter {name!r} needs a section (Args, properties, ...).")
        before = (old.get(section) or {}).get(name) or {}
        out.setdefault(section, {})[name] = {
            "section": section,
            "name": name,
            "value": row.get("value", ""),
            "type": str(before.get("type") or ""),
            "description": str(before.get("description") or ""),
        }
    return out


def edit_body(task: dict[str, Any], form: FormData) -> dict[str, Any]:
    """The ``tasks.edit`` body of the draft editor's form."""
    name = form_str(form, "name").strip()
    if not name:
        raise bad_request("The task needs a name.")
    script = copy.deepcopy(task.get("script") or {})
    for field in ("repository", "branch", "version_num", "entry_point", "working_dir"):
        script[field] = form_str(form, field).strip()
    requirements = script.get("requirements")
    requirements = dict(requirements) if isinstance(requirements, dict) else {}
    requirements["pip"] = form_str(form, "requirements").replace("\r\n", "\n")
    script["requirements"] = requirements
    container = dict(task.get("container") or {})
    container["image"] = form_str(form, "container_image").strip()
    container["arguments"] = form_str(form, "container_arguments").strip()
    container["setup_shell_script"] = form_str(form, "setup_shell_script").replace("\r\n", "\n")
    return {
        "task": task["id"],
        "name": name,
        "script": script,
        "container": container,
        "hyperparams": _hyperparams(task, form),
    }


def routes(ui: Ui) -> list[BaseRoute]:
    async def task_action(request: Request, identity: Identity) -> Response:
        task_id = request.path_params["task_id"]
        form = await read_form(request)
        action = form_str(form, "action")
        await run_action(ui, identity, task_id, action, form)
        if action == "delete":
            return ui.redirect("/tasks")
        return ui.redirect(f"/tasks/{task_id}?tab={_tab(form)}")

    async def bulk(request: Request, identity: Identity) -> Response:
        form = await read_form(request)
        action = form_str(form, "action")
        ids = [v for v in form.getlist("ids") if isinstance(v, str) and v][:1000]
        if action not in ACTIONS or not ids:
            raise bad_request("Select tasks and an action.")
        for task_id in ids:
            await run_action(ui, identity, task_id, action, form)
        return ui.redirect(safe_next(form_str(form, "next")))

    async def clone(request: Request, identity: Identity) -> Response:
        task_id = request.path_params["task_id"]
        form = await read_form(request)
        body: dict[str, Any] = {"task": task_id}
        name = form_str(form, "name").strip()
        if name:
            body["new_task_name"] = name
        new_id = (await ui.call(identity, "tasks.clone", body))["id"]
        return ui.redirect(f"/tasks/{new_id}/edit")

    async def edit(request: Request, identity: Identity) -> Response:
        task_id = request.path_params["task_id"]
        form = await read_form(request)
        task = (await ui.call(identity, "tasks.get_by_id", {"task": task_id}))["task"]
        await ui.call(identity, "tasks.edit", edit_body(task, form))
        return ui.redirect(f"/tasks/{task_id}?tab=configuration")

    return [
        Route("/tasks/bulk", ui.action(bulk), methods=["POST"]),
        Route("/tasks/{task_id:str}/action", ui.action(task_action), methods=["POST"]),
        Route("/tasks/{task_id:str}/clone", ui.action(clone), methods=["POST"]),
        Route("/tasks/{task_id:str}/edit", ui.action(edit), methods=["POST"]),
    ]


def _tab(form: FormData) -> str:
    tab = form_str(form, "tab")
    return tab if tab.isalpha() else "info"
