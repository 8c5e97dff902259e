"""The UI's pages (GET): sign-in, projects, the task table, the task page and the draft editor.

Every read goes through :meth:`Ui.call` (the REST handlers), like every action.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hpcagent.server.fields import ApiFault
from hpcagent.server.statemachine import STATUSES
from hpcagent.server.ui import present
from hpcagent.server.ui.core import Identity, Ui, form_str, read_form, safe_next
from hpcagent.server.ui.table import PAGE_SIZES, SORTS, TableView

TABS = (
    ("info", "Info"),
    ("execution", "Execution"),
    ("configuration", "Configuration"),
    ("console", "Console"),
    ("scalars", "Scalars"),
    ("plots", "Plots"),
    ("debug", "Debug samples"),
    ("artifacts", "Artifacts & models"),
)
STATUS_ORDER = sorted(STATUSES - {"unknown"})
#: Tabs whose panel is server-rendered, so live.js may swap it (the others are drawn by ui.js).
LIVE_TABS = ("info", "execution", "configuration", "artifacts")


async def queue_names(ui: Ui, identity: Identity) -> dict[str, str]:
    queues = (await ui.call(identity, "queues.get_all", {"only_fields": ["id", "name"]}))["queues"]
    return {str(q["id"]): str(q.get("name") or q["id"]) for q in queues}


async def project_names(ui: Ui, identity: Identity) -> dict[str, str]:
    body = {"only_fields": ["id", "name"], "search_hidden": True}
    projects = (await ui.call(identity, "projects.get_all", body))["projects"]
    return {str(p["id"]): str(p.get("name") or p["id"]) for p in projects}


def routes(ui: Ui) -> list[BaseRoute]:
    async def home(request: Request) -> Response:
        return ui.redirect("/home")

    async def login_form(request: Request) -> Response:
        nonce = ui.sessions.login_nonce(request)
        response = await ui.render(
            request,
            "login.html",
            nonce=nonce,
            next=safe_next(request.query_params.get("next") or ""),
            signed_in=False,
        )
        ui.sessions.set_login_nonce(request, response, nonce)
        return response

    async def login(request: Request) -> Response:
        refused = await ui.refuse_form(request, ui.sessions.check_login_nonce, signed_in=False)
        if refused is not None:
            return refused
        form = await read_form(request)
        target = safe_next(form_str(form, "next"))
        source = request.client.host if request.client else ""
        try:
            # In a worker thread: the sign-in throttle's state may wait for the database.
            token = await run_in_threadpool(
                ui.sessions.sign_in,
                form_str(form, "access_key"),
                form_str(form, "secret_key"),
                source,
            )
        except ApiFault as fault:
            nonce = ui.sessions.login_nonce(request)
            return await ui.render(
                request,
                "login.html",
                fault.code,
                nonce=nonce,
                next=target,
                signed_in=False,
                failed=fault.message
                if fault.code == 429
                else "Unknown access key or wrong secret key.",
            )
        response = ui.redirect(target)
        ui.sessions.set_session(request, response, token)
        return response

    async def logout(request: Request) -> Response:
        refused = await ui.refuse_form(request, ui.sessions.check_csrf)
        if refused is not None:
            return refused
        response = ui.redirect("/login")
        await run_in_threadpool(ui.sessions.sign_out, request, response)
        return response

    async def projects(request: Request, identity: Identity) -> Response:
        body = {"include_stats": True, "search_hidden": False}
        found = (await ui.call(identity, "projects.get_all", body))["projects"]
        found.sort(key=lambda p: str(p.get("name") or "").lower())
        return await ui.render(
            request, "projects.html", projects=found, statuses=STATUS_ORDER, signed_in=True
        )

    async def tasks(request: Request, identity: Identity) -> Response:
        view = TableView.from_query(request.query_params)
        rows = (await ui.call(identity, "tasks.get_all", view.body()))["tasks"]
        queues = await queue_names(ui, identity)
        return await ui.render(
            request,
            "tasks.html",
            view=view,
            rows=rows,
            queues=queues,
            projects=await project_names(ui, identity),
            metric_names=sorted(set(present.metric_names(rows)) | set(view.cols)),
            statuses=STATUS_ORDER,
            sorts=SORTS,
            page_sizes=PAGE_SIZES,
            has_next=len(rows) >= view.size,
            signed_in=True,
            back=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        )

    async def task_page(request: Request, identity: Identity) -> Response:
        task_id = request.path_params["task_id"]
        tab = request.query_params.get("tab") or "info"
        if tab not in dict(TABS):
            tab = "info"
        task = (await ui.call(identity, "tasks.get_by_id", {"task": task_id}))["task"]
        queues = await queue_names(ui, identity)
        project = ""
        if task.get("project"):
            project = (await project_names(ui, identity)).get(str(task["project"]), "")
        return await ui.render(
            request,
            "task.html",
            task=task,
            tab=tab,
            tabs=TABS,
            live_tabs=LIVE_TABS,
            queues=queues,
            project_name=project,
            slurm=present.slurm_info(task),
            sections=present.hyper_sections(task),
            requirements=present.requirements_text(task),
            models=await _models(ui, identity, task) if tab == "artifacts" else [],
            console_page=_console_page(request),
            signed_in=True,
        )

    async def edit_page(request: Request, identity: Identity) -> Response:
        task_id = request.path_params["task_id"]
        task = (await ui.call(identity, "tasks.get_by_id", {"task": task_id}))["task"]
        return await ui.render(
            request,
            "edit.html",
            task=task,
            sections=present.hyper_sections(task),
            requirements=present.requirements_text(task),
            signed_in=True,
        )

    async def sdk_link(request: Request) -> Response:
        # The clearml SDK's "results page" link (when web_server is this server).
        return ui.redirect(f"/tasks/{request.path_params['task_id']}")

    return [
        Route("/", home, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/projects", ui.page(projects), methods=["GET"]),
        Route("/tasks", ui.page(tasks), methods=["GET"]),
        Route("/tasks/{task_id:str}", ui.page(task_page), methods=["GET"]),
        Route("/tasks/{task_id:str}/edit", ui.page(edit_page), methods=["GET"]),
        Route("/projects/{project_id:str}/experiments/{task_id:str}{rest:path}", sdk_link),
    ]


def _console_page(request: Request) -> int:
    """Console events per page: ``console_page`` in the URL (1..1000), else 1000."""
    value = request.query_params.get("console_page") or ""
    if value.isdigit() and len(value) <= 6 and int(value) > 0:
        return min(int(value), 1000)
    return 1000


async def _models(ui: Ui, identity: Identity, task: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's input and output models, with their documents when the server has them."""
    refs = [
        {"role": role, "name": str(ref.get("name") or ""), "id": str(ref.get("model") or "")}
        for role in ("input", "output")
        for ref in ((task.get("models") or {}).get(role) or [])
        if isinstance(ref, dict)
    ]
    if refs and ui.has("models.get_all"):
        ids = [ref["id"] for ref in refs if ref["id"]]
        found = (await ui.call(identity, "models.get_all", {"id": ids})).get("models") or []
        docs = {str(m.get("id")): m for m in found if isinstance(m, dict)}
        for ref in refs:
            doc = docs.get(ref["id"]) or {}
            ref["uri"] = str(doc.get("uri") or "")
            ref["name"] = ref["name"] or str(doc.get("name") or "")
            ref["framework"] = str(doc.get("framework") or "")
    return refs
