"""Connection limits of the embedded server: request deadlines and a connection cap.

uvicorn alone times out only idle keep-alive connections: a client that connects and sends
half a request (or nothing) holds a descriptor for as long as it likes. 1,100 such sockets used
up the process's 1,024 descriptors and every other client was refused. :func:`guarded_protocol`
makes uvicorn's HTTP protocol (httptools) enforce:

* a **header deadline**: a request's line and headers must be complete within
  ``header_timeout_s`` of the connection (or, on a kept-alive connection, of the request's first
  byte); else ``408`` and the connection is closed;
* a **body idle timeout**: while a request's body is being received, each chunk must follow the
  previous one within ``body_timeout_s``; else the connection is closed (the handler sees the
  client gone and logs one line, :mod:`hpcagent.server.app`);
* a **connection cap** below the descriptor limit (:func:`connection_cap`): a connection over
  it is answered ``503`` with a ClearML envelope and ``Retry-After`` as soon as its headers are
  in, then closed, so a flood costs the clients, not the server's descriptors. Reaching the cap
  and going back under it are logged once each, not per connection;
* **one request per connection for the ClearML SDK** (:func:`forked_pool_client`): its reply
  says ``connection: close`` and the connection is closed after it. The SDK forks its reporting
  subprocess (``sdk.development.report_use_subprocess``, on by default on Linux; and a user's
  forked workers through its ``os.fork`` patch) without exec: the child inherits the parent's
  ``requests`` pool, and a kept-alive socket idle in it is then written by both processes, the
  headers of one request followed by the headers of the other's (httptools fails: ``400
  Invalid HTTP request received``), or a reply read by the process that did not ask (seen as
  lost ``models.edit``/``events.add_batch`` calls, tests/unit/test_server_sdk_fork.py). With
  no live socket left in the pool, each process connects on its own, as with the ClearML
  apiserver under gunicorn's sync workers, which close every connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hpcagent.server.files import FILES_PREFIX

log = logging.getLogger("hpcagent.server")

#: Descriptors kept free of connections: SQLite (database, WAL, checkpointer), the files
#: store's uploads and downloads, logs, the listening socket.
RESERVED_DESCRIPTORS = 128
#: The most descriptors the server asks for (it raises its soft limit up to the hard one).
WANTED_DESCRIPTORS = 65536
DEFAULT_MAX_CONNECTIONS = 4096
#: The headers the ClearML SDK's API session puts on every request (``X-ClearML-Client:
#: clearml-2.1.12``; ``X-Trains-Client`` from the trains era); clearml-agent and hpcagent send
#: ``X-ClearML-Agent`` instead.
SDK_CLIENT_HEADERS = (b"x-clearml-client", b"x-trains-client")


@dataclass(frozen=True)
class ConnectionLimits:
    """What :func:`guarded_protocol` enforces; ``max_connections`` None: as many as
    :func:`connection_cap` allows."""

    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    max_connections: int | None = None


def raise_descriptor_limit(wanted: int = WANTED_DESCRIPTORS) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never above the hard limit);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a container may forbid it: keep the soft limit
            pass
    return WANTED_DESCRIPTORS if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(requested: int | None, descriptors: int) -> int:
    """The connection cap: ``requested`` (else :data:`DEFAULT_MAX_CONNECTIONS`), but always
    :data:`RESERVED_DESCRIPTORS` below ``descriptors`` (and at least 8)."""
    ceiling = max(8, descriptors - RESERVED_DESCRIPTORS)
    return max(1, min(requested or DEFAULT_MAX_CONNECTIONS, ceiling))


def _raw_reply(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    rid = uuid.uuid4().hex
    body = orjson.dumps(
        {
            "meta": {
                "id": rid,
                "trx": rid,
                "endpoint": {"name": "", "requested_version": "", "actual_version": ""},
                "result_code": status,
                "result_subcode": 0,
                "result_msg": message,
                "error_stack": None,
                "error_data": {},
            },
            "data": {},
        }
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def forked_pool_client(headers: list[tuple[bytes, bytes]], path: str) -> bool:
    """Whether a request (``headers`` lower-cased as uvicorn gives them) may come from a
    ClearML SDK process, whose connection pool a fork shares: an API request with one of
    :data:`SDK_CLIENT_HEADERS`, or any request to the files server (the SDK's storage sessions
    send no client header, only the token)."""
    if path == FILES_PREFIX or path.startswith(FILES_PREFIX + "/"):
        return True
    return any(name in SDK_CLIENT_HEADERS for name, _ in headers)


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and a cap (see the module docstring)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    cap: ClassVar[int] = DEFAULT_MAX_CONNECTIONS
    at_cap: ClassVar[bool] = False  # shared: the cap's state, to log its changes once

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._refused = len(self.connections) > self.cap
        if self._refused and not _GuardedProtocol.at_cap:
            _GuardedProtocol.at_cap = True
            log.warning("%d connections: at the cap, new ones are answered 503", self.cap)
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        if _GuardedProtocol.at_cap and len(self.connections) < self.cap * 0.9:
            _GuardedProtocol.at_cap = False
            log.warning("%d connections: below the cap again", len(self.connections))

    # ---- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # a kept-alive connection's next request: its own deadline
            self._arm(self.limits.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._refused:
            self._close_with(
                _raw_reply(503, "Service Unavailable", "Server busy: too many connections",
                           b"retry-after: 1\r\n")
            )  # fmt: skip
            return
        super().on_headers_complete()
        if self.cycle is not None and forked_pool_client(self.headers, self.scope.get("path", "")):
            self.cycle.keep_alive = False  # uvicorn adds "connection: close" and closes after
        if self.cycle is not None and self.cycle.more_body:
            self._arm(self.limits.body_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        if self._refused or self.cycle is None:
            return
        super().on_body(body)
        if self._timer is not None:
            self._arm(self.limits.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        if self._refused or self.cycle is None:
            return
        super().on_message_complete()

    # ---- deadlines ---------------------------------------------------------------------------

    def _arm(self, delay: float, phase: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if phase == "body" and self.flow.read_paused:  # we are the slow side: wait on
            self._arm(self.limits.body_timeout_s, phase)
            return
        log.debug("%s: request %s not received in time; closing", self.client, phase)
        if phase == "headers" and (self.cycle is None or self.cycle.response_complete):
            self._close_with(_raw_reply(408, "Request Timeout", "Request headers not received"))
        else:
            self.transport.close()

    def _close_with(self, raw: bytes) -> None:
        self.transport.write(raw)
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits, cap: int) -> type[Any]:
    """An HTTP protocol class for ``uvicorn.Config(http=...)`` enforcing ``limits`` and
    ``cap`` connections."""
    return type("GuardedProtocol", (_GuardedProtocol,), {"limits": limits, "cap": cap})
