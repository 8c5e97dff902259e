"""What every page and action of the web UI shares: templates, sessions, and :meth:`Ui.call`,
the one way the UI reads or changes anything.

:meth:`Ui.call` runs the REST API's own handler (``ServerApp.routes[endpoint]``) in-process with
the signed-in identity, so an action from a web page goes through exactly the code, state
machine and errors of the same call over the wire; the UI never opens a second path into the
database.

Nothing that blocks runs on the event loop: each :meth:`Ui.call` is one hop into the server's
database thread (:meth:`ServerApp.in_db`, the same queue as the REST requests) and
:meth:`Ui.render` runs Jinja in a worker thread. So a page of 500 tasks, a comparison of ten
tasks or a long console never delays a ping, a pop or a heartbeat of another client: the loop
keeps answering while the page is built, and the database thread serves the other clients'
requests between the page's reads (a page never holds it for its whole build).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hpcagent.server.fields import VALIDATION, ApiFault
from hpcagent.server.ui import live, present
from hpcagent.server.ui.session import CsrfError, UiSessions, secure_headers

if TYPE_CHECKING:
    from hpcagent.server.app import ServerApp

log = logging.getLogger("hpcagent.server.ui")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

Identity = dict[str, Any]
PageHandler = Callable[[Request, Identity], Awaitable[Response]]


class Ui:
    """The UI's shared state around one :class:`ServerApp`."""

    def __init__(self, app: ServerApp) -> None:
        self.app = app
        self.sessions = UiSessions(app.auth)
        self.env = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(present.FILTERS)

    # ---- the one way in ----------------------------------------------------------------------

    async def call(self, identity: Identity, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run the REST endpoint ``endpoint`` with ``body`` as ``identity`` in the database
        thread, awaited from the loop; raises ApiFault."""
        from hpcagent.server.app import Ctx

        handler = self.app.routes[endpoint]
        ctx = Ctx(store=self.app.store, endpoint=endpoint, files=self.app.files, identity=identity)
        return await self.app.in_db(handler, ctx, body)

    def has(self, endpoint: str) -> bool:
        """Whether the server implements ``endpoint`` (models, files: other modules add them)."""
        return endpoint in self.app.routes

    # ---- responses ---------------------------------------------------------------------------

    async def render(
        self, request: Request, template: str, status_code: int = 200, **values: Any
    ) -> Response:
        """``template`` rendered with ``values`` (in a worker thread: a large table is
        milliseconds of CPU the loop does not wait for)."""
        values.setdefault("csrf", self.sessions.csrf_token(request))
        values.setdefault("request_path", request.url.path)
        html = await run_in_threadpool(self._html, template, values)
        return secure_headers(HTMLResponse(html, status_code=status_code))

    def _html(self, template: str, values: dict[str, Any]) -> str:
        return self.env.get_template(template).render(**values)

    async def error(
        self, request: Request, status_code: int, message: str, *, signed_in: bool = True
    ) -> Response:
        return await self.render(
            request, "error.html", status_code, message=message, signed_in=signed_in
        )

    @staticmethod
    def json(data: Any, status_code: int = 200) -> Response:
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
        return secure_headers(
            Response(body, status_code=status_code, media_type="application/json")
        )

    @staticmethod
    def redirect(url: str) -> Response:
        return secure_headers(RedirectResponse(url, status_code=303))

    # ---- guards ------------------------------------------------------------------------------

    def page(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in GET page: no session sends the browser to the sign-in form. Every page
        answers live.js's polls too (``live.answer``: 204 while it is unchanged)."""

        async def endpoint(request: Request) -> Response:
            identity = self.sessions.identity(request)
            if identity is not None and live.asked(request):
                return await live.answer(self, request, identity, self._guarded_handler(handler))
            if identity is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return self.redirect("/login?" + present.urlencode({"next": target}))
            return await self._guarded(request, identity, handler)

        return endpoint

    def data(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in JSON read for the page scripts: 401 JSON without a session."""

        async def endpoint(request: Request) -> Response:
            identity = self.sessions.identity(request)
            if identity is None:
                return self.json({"error": "not signed in"}, 401)
            try:
                return await handler(request, identity)
            except ApiFault as fault:
                return self.json({"error": fault.message}, fault.code)

        return endpoint

    def action(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in POST with a valid CSRF token (403 otherwise)."""

        async def endpoint(request: Request) -> Response:
            identity = self.sessions.identity(request)
            if identity is None:
                return await self.error(request, 401, "Sign in first.", signed_in=False)
            refused = await self.refuse_form(request, self.sessions.check_csrf)
            if refused is not None:
                return refused
            return await self._guarded(request, identity, handler)

        return endpoint

    async def refuse_form(
        self,
        request: Request,
        check: Callable[[Request, str | None], None],
        *,
        signed_in: bool = True,
    ) -> Response | None:
        """The 4xx page when the request's form is malformed or ``check`` (a CSRF check of the
        form's ``csrf`` or ``nonce`` field) refuses it; None when it may go on."""
        try:
            form = await read_form(request)
            check(request, form_str(form, "csrf") or form_str(form, "nonce") or None)
        except ApiFault as fault:
            return await self.error(request, fault.code, fault.message, signed_in=signed_in)
        except CsrfError as exc:
            log.warning("refused %s %s: %s", request.method, request.url.path, exc)
            return await self.error(request, 403, f"Refused: {exc}.", signed_in=signed_in)
        return None

    def _guarded_handler(self, handler: PageHandler) -> PageHandler:
        async def guarded(request: Request, identity: Identity) -> Response:
            return await self._guarded(request, identity, handler)

        return guarded

    async def _guarded(
        self, request: Request, identity: Identity, handler: PageHandler
    ) -> Response:
        try:
            return await handler(request, identity)
        except ApiFault as fault:
            # The API's own error (unknown task, forbidden status change, bad value): a 4xx
            # page with its message, exactly what the REST call would have answered.
            return await self.error(request, fault.code, fault.message)


MAX_FORM_BYTES = 4 * 1024 * 1024
_SAME_SITE_PATH = re.compile(r"/(?![/\\])[^\s\x00-\x1f\x7f\\]*")


async def read_form(request: Request) -> FormData:
    """The submitted ``application/x-www-form-urlencoded`` form (the only kind the UI's forms
    send; no multipart parser needed), read once per request (at most 4 MB) and kept on
    ``request.state``. Other bodies, or larger ones, are a 400."""
    cached = getattr(request.state, "form", None)
    if isinstance(cached, FormData):
        return cached
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length") or ""
    if length.isdigit() and int(length[:12]) > MAX_FORM_BYTES:
        raise bad_request("Form too large.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise bad_request("Form too large.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if raw and content_type != "application/x-www-form-urlencoded":
        raise bad_request("Forms must be sent as application/x-www-form-urlencoded.")
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20000
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"Malformed form: {exc}") from exc
    items: list[tuple[str, str | UploadFile]] = list(pairs)
    form = FormData(items)
    request.state.form = form
    return form


def form_str(form: Any, name: str, default: str = "") -> str:
    """A text field of a submitted form ("" for files or missing fields)."""
    value = form.get(name)
    return value if isinstance(value, str) else default


def bad_request(message: str) -> ApiFault:
    """A 400/12 validation fault raised by the UI's own form checks."""
    return ApiFault(VALIDATION, message)


def safe_next(target: str, default: str = "/tasks") -> str:
    """A same-site path to go back to (never another host: no open redirect)."""
    # A path on this site: one leading slash, then no slash or backslash, and no whitespace or
    # control character anywhere (browsers drop tabs and newlines: "/\t/evil" is "//evil").
    if _SAME_SITE_PATH.fullmatch(target):
        return target
    return default
