"""The Starlette application of the embedded server: routing, envelope, auth, dispatch.

Wire protocol (ClearML, see docs/server.md): ``/{service}.{action}`` with an optional
``/vX.Y/`` prefix; GET, POST and PUT are all accepted and the body is read on GET too; the
query string is merged into the JSON body; every reply is the ``{"meta": ..., "data": ...}``
envelope with HTTP status == ``meta.result_code``. Client mistakes never produce a 5xx (the
ClearML SDK retries those forever); an unexpected bug answers 500.

Handlers are plain synchronous functions ``(ctx, body) -> data``. They run one at a time in the
process's one database thread (:meth:`ServerApp.in_db`), so its SQLite connection is used
serially, and every request that writes is one ``BEGIN IMMEDIATE`` transaction (:func:`atomic`),
so it is atomic also against the other worker processes of ``--workers N``; the event loop
stays free: it keeps accepting connections, reading bodies, answering ``debug.ping`` and
enforcing the connection limits (:mod:`hpcagent.server.connections`) however long a query
takes. The web UI's reads and actions take the same path (``hpcagent.server.ui.core.Ui.call``):
nothing uses the store from the loop. ``auth.login`` (and the UI's sign-in and sign-out) run in
a worker thread: the sign-in throttle's state shares the database file, so they may wait for a
write transaction, but never in the database thread's queue nor on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from hpcagent.server.accepted import strict
from hpcagent.server.auth import API_VERSION, Authenticator
from hpcagent.server.fields import (
    BODY_TOO_LARGE,
    UNKNOWN_ENDPOINT,
    VALIDATION,
    ApiFault,
    opt_int,
)
from hpcagent.server.files import FileStore
from hpcagent.server.files_http import FilesHttp
from hpcagent.server.retention import EventRetention, run_periodically
from hpcagent.server.store import Store
from hpcagent.server.validation import check_depth
from hpcagent.server.watchdog import NonResponsiveWatchdog

log = logging.getLogger("hpcagent.server")
T = TypeVar("T")

_PATH_RE = re.compile(r"^/?(v(?P<ver>\d+\.?\d+)/)?(?P<ep>[A-Za-z_]\w+\.[A-Za-z_]\w+)/?$")
DEFAULT_MAX_BODY = 15 * 1024 * 1024
DB_THREAD_PREFIX = "hpcagent-db"
FILE_SWEEP_INTERVAL_S = 2.0

# Endpoints whose body is not a JSON object (json-lines or a JSON list); they parse ctx.raw.
RAW_BODY_ENDPOINTS = frozenset({"events.add_batch"})
# Endpoints that need no Bearer token.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "debug.ping"})
# Endpoints that only read but whose action does not start with "get" (see reads_only).
READ_ONLY_ENDPOINTS = frozenset(
    {
        *PUBLIC_ENDPOINTS,
        "events.debug_images",
        "events.next_debug_image_sample",
        "events.scalar_metrics_iter_histogram",
        "events.multi_task_scalar_metrics_iter_histogram",
    }
)


@dataclass
class Ctx:
    """What a handler gets besides the body."""

    store: Store
    endpoint: str
    files: FileStore | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    content_type: str = ""
    worker_header: str = ""

    @property
    def user(self) -> str:
        return str(self.identity.get("user", ""))

    @property
    def company(self) -> str:
        return str(self.identity.get("company", ""))


Handler = Callable[[Ctx, dict[str, Any]], dict[str, Any]]


def all_routes() -> dict[str, Handler]:
    """Every implemented endpoint, by ``service.action`` name."""
    from hpcagent.server.routes import (
        event_reads,
        events,
        models,
        projects,
        queues,
        task_outputs,
        task_status,
        tasks,
        worker_stats,
        workers,
    )

    table: dict[str, Handler] = {}
    for module in (
        projects,
        tasks,
        task_outputs,
        task_status,
        queues,
        workers,
        worker_stats,
        events,
        event_reads,
        models,
    ):
        table.update(module.ROUTES)
    table["debug.ping"] = lambda ctx, body: {"msg": "hpcagent embedded server"}
    table["auth.login"] = lambda ctx, body: {}  # answered by ServerApp._dispatch itself
    return {
        endpoint: strict(endpoint, atomic(endpoint, handler)) for endpoint, handler in table.items()
    }


def reads_only(endpoint: str) -> bool:
    """Whether ``endpoint`` never writes: the ``get*`` actions (but the pop,
    ``queues.get_next_task``), the events' chart reads, ``debug.ping`` and ``auth.login``."""
    action = endpoint.partition(".")[2]
    if endpoint == "queues.get_next_task":
        return False
    return action.startswith("get") or endpoint in READ_ONLY_ENDPOINTS


def atomic(endpoint: str, handler: Handler) -> Handler:
    """``handler`` run as one write transaction (``BEGIN IMMEDIATE``) unless the endpoint
    only reads. Everything a writing request reads and checks (a status, a queue entry, a pop
    id) is read inside the transaction that writes, so it holds when several processes share
    the database (``hpcagent server --workers N``): SQLite lets one writer in at a time."""
    if reads_only(endpoint):
        return handler

    @functools.wraps(handler)
    def run(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        with ctx.store.write():
            return handler(ctx, body)

    return run


def _envelope(
    endpoint: str,
    requested: str,
    code: int,
    subcode: int,
    msg: str,
    data: dict[str, Any] | None,
    error_data: dict[str, Any] | None = None,
    error_stack: str | None = None,
) -> Response:
    rid = uuid.uuid4().hex
    body = {
        "meta": {
            "id": rid,
            "trx": rid,
            "endpoint": {
                "name": endpoint,
                "requested_version": requested,
                "actual_version": API_VERSION,
            },
            "result_code": code,
            "result_subcode": subcode,
            "result_msg": msg,
            "error_stack": error_stack,
            "error_data": error_data or {},
        },
        "data": data if data is not None else {},
    }
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status_code=code,
        media_type="application/json",
    )


def _fault_envelope(endpoint: str, requested: str, fault: ApiFault) -> Response:
    """The error envelope of an :class:`ApiFault` (its code, subcode, message and data).

    Logged at debug level: clients such as the SDK often only log a refused call, so the
    server's log is where ``--log-level debug`` shows every call a flow made that failed."""
    log.debug("%s answered %d/%d: %s", endpoint, fault.code, fault.subcode, fault.message)
    response = _envelope(
        endpoint, requested, fault.code, fault.subcode, fault.message, None, fault.error_data
    )
    if "retry_after" in fault.error_data:  # 429: when to try again, also as the HTTP header
        response.headers["Retry-After"] = str(fault.error_data["retry_after"])
    return response


def _one_line(exc: BaseException) -> str:
    """``exc`` and where it was raised, for a one-line log entry."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{exc!r}{where}"


def _internal_error(
    endpoint: str, requested: str, exc: BaseException, stack: str | None
) -> Response:
    """The 500 envelope of a bug of ours (never more than 500: clients retry those)."""
    return _envelope(
        endpoint, requested, 500, 0, f"Internal server error: {exc!r}"[:500], None, None, stack
    )


class _LastResort:
    """The outermost ASGI layer. Whatever escapes the application (Starlette answers it with
    the 500 envelope of :meth:`ServerApp._crash` first, then re-raises it) is logged here as
    one line (the traceback at debug level), never as a traceback per request."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if scope.get("type") != "http":
                raise
            log.error("internal error on %s %s: %s", scope.get("method"), scope.get("path"),
                      _one_line(exc))  # fmt: skip
            log.debug("traceback", exc_info=exc)
            if not started:
                await _internal_error("", API_VERSION, exc, None)(scope, receive, send)


class ServerApp:
    """Holds the store, the authenticator and the route table; ``asgi`` is the Starlette app."""

    def __init__(
        self,
        store: Store,
        auth: Authenticator,
        *,
        files: FileStore | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        debug_errors: bool = False,
        event_retention_days: float = 0.0,
        watchdog: NonResponsiveWatchdog | None = None,
    ) -> None:
        self.store = store
        self.retention = EventRetention(store, event_retention_days)
        #: Stops tasks left running by a runner that is gone (``server.non_responsive_sec``).
        self.watchdog = watchdog if watchdog is not None else NonResponsiveWatchdog(store)
        self.auth = auth
        self.files = files
        self.max_body = max_body
        self.debug_errors = debug_errors
        self.routes = all_routes()
        # The store's one thread: every use of the SQLite connection, REST and web UI alike.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=DB_THREAD_PREFIX)
        files_routes = FilesHttp(files, auth).routes() if files is not None else []
        from hpcagent.server.ui import ui_routes  # the web UI, on the same port

        self.starlette = Starlette(
            routes=[
                *files_routes,
                *ui_routes(self),
                Route("/{path:path}", self._endpoint, methods=["GET", "POST", "PUT"]),
            ],
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )
        self.asgi = _LastResort(self.starlette)

    @staticmethod
    async def _http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own errors (405 for a method other than GET/POST/PUT, ...) as a ClearML
        envelope, like every other answer."""
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else repr(exc)
        match = _PATH_RE.match(request.url.path)
        endpoint = match.group("ep") if match else ""
        return _envelope(endpoint, API_VERSION, code, 0, f"{detail} ({request.method})", None)

    @staticmethod
    async def _crash(request: Request, exc: Exception) -> Response:
        """The 500 envelope of an exception no handler caught (logged by :class:`_LastResort`)."""
        match = _PATH_RE.match(request.url.path)
        return _internal_error(match.group("ep") if match else "", API_VERSION, exc, None)

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the database thread, awaited from the loop. One thread, so calls
        run one at a time in the order they were made (FIFO): a REST request and a web page's
        read queue behind each other, never beside each other."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, fn, *args)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        sweeper = None
        if self.files is not None:
            sweeper = asyncio.create_task(
                run_periodically(
                    FILE_SWEEP_INTERVAL_S,
                    lambda: self.in_db(self._delete_due_files),
                    "deleting the files of deleted tasks/models",
                    first_delay_s=FILE_SWEEP_INTERVAL_S,
                )
            )
        retention = self.retention.start(self.in_db)
        watchdog = self.watchdog.start(self.in_db)
        yield
        for task in (sweeper, retention, watchdog):
            if task is not None:
                task.cancel()
        # Graceful shutdown: every request committed already; checkpoint and close.
        await self.in_db(self.store.close)
        self._db_thread.shutdown(wait=True)
        log.info("database closed")

    def _delete_due_files(self) -> None:
        assert self.files is not None
        self.files.delete_urls(self.store.take_due_file_deletions(time.time()))

    async def _read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise ApiFault(BODY_TOO_LARGE, f"Request body too large (limit {self.max_body} bytes)")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise ApiFault(
                    BODY_TOO_LARGE, f"Request body too large (limit {self.max_body} bytes)"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _endpoint(self, request: Request) -> Response:
        match = _PATH_RE.match(request.url.path)
        if match is None:
            log.debug("unknown path %s", request.url.path)
            return _envelope(
                "",
                API_VERSION,
                *UNKNOWN_ENDPOINT,
                f"Invalid endpoint path {request.url.path}",
                None,
            )
        endpoint = match.group("ep")
        requested = match.group("ver") or API_VERSION
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", request.method, request.url.path)
        handler = self.routes.get(endpoint)
        if handler is None:
            log.debug("unknown endpoint %s", endpoint)
            return _envelope(
                endpoint,
                requested,
                *UNKNOWN_ENDPOINT,
                f"Unable to find endpoint for name {endpoint} and version {requested}",
                None,
            )
        try:
            raw = await self._read_body(request)
            if endpoint == "debug.ping":  # nothing to wait for: answered by the loop itself
                return self._dispatch(request, endpoint, requested, handler, raw)
            if endpoint in PUBLIC_ENDPOINTS:
                # auth.login: the sign-in throttle's state is in the database file (shared by the
                # worker processes), so a sign-in may wait for a write transaction. In a worker
                # thread, not the database thread: a slow query does not delay a sign-in.
                return await run_in_threadpool(
                    self._dispatch, request, endpoint, requested, handler, raw
                )
            return await self.in_db(self._dispatch, request, endpoint, requested, handler, raw)
        except ApiFault as fault:
            return _fault_envelope(endpoint, requested, fault)
        except ClientDisconnect:  # gone (or timed out) mid-body: one line, nothing to answer
            log.info("%s: the client went away before its request body was complete", endpoint)
            return Response(status_code=400)

    def _dispatch(
        self, request: Request, endpoint: str, requested: str, handler: Handler, raw: bytes
    ) -> Response:
        headers = request.headers
        ctx = Ctx(
            store=self.store,
            endpoint=endpoint,
            files=self.files,
            raw=raw,
            content_type=headers.get("content-type", ""),
            worker_header=headers.get("x-clearml-worker") or headers.get("x-trains-worker") or "",
        )
        try:
            # Authenticate before looking at the body: no validation details for strangers.
            if endpoint not in PUBLIC_ENDPOINTS:
                ctx.identity = self.auth.verify(headers.get("authorization"))
            body = self._parse_body(endpoint, raw, request)
            if endpoint == "auth.login":
                handler(ctx, body)  # the field check of hpcagent.server.accepted
                token = self.auth.login(
                    headers.get("authorization"),
                    opt_int(body, "expiration_sec"),
                    request.client.host if request.client else "",
                )
                return _envelope(endpoint, requested, 200, 0, "OK", {"token": token})
            data = handler(ctx, body)
        except ApiFault as fault:
            return _fault_envelope(endpoint, requested, fault)
        except Exception as exc:  # a bug of ours: one log line, answer 500 (never > 500)
            log.error("internal error in %s: %s", endpoint, _one_line(exc))
            log.debug("traceback", exc_info=exc)
            stack = traceback.format_exc() if self.debug_errors else None
            return _internal_error(endpoint, requested, exc, stack)
        return _envelope(endpoint, requested, 200, 0, "OK", data)

    @staticmethod
    def _parse_body(endpoint: str, raw: bytes, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if endpoint not in RAW_BODY_ENDPOINTS and raw.strip():
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiFault(VALIDATION, f"Malformed JSON body: {exc}") from exc
            if not isinstance(parsed, dict):
                raise ApiFault(VALIDATION, "Malformed request: the JSON body must be an object")
            check_depth(parsed)
            body = parsed
        if request.query_params:
            for key, value in request.query_params.multi_items():
                body[key] = value
        return body


def create_app(
    store: Store,
    auth: Authenticator,
    *,
    files: FileStore | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    event_retention_days: float = 0.0,
    watchdog: NonResponsiveWatchdog | None = None,
) -> ServerApp:
    """Build the server application around an open store, an authenticator and (optionally)
    the files store served under ``/files``; ``watchdog`` None: clearml-server's defaults."""
    return ServerApp(store, auth, files=files, max_body=max_body,
                     event_retention_days=event_retention_days, watchdog=watchdog)  # fmt: skip
