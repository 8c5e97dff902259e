"""How :class:`~hpcagent.api.client.ApiClient` sends one HTTP request, and what a failure was.

Two transports with one interface (``request(method, url, data=, headers=, timeout=)`` → a
reply with ``status_code``, ``content``, ``text``, ``headers``, ``json()``; ``close()``):

* :class:`PlainHttp`: keep-alive ``http.client`` connections, for an ``http://`` server that no
  proxy variable (``HTTP_PROXY``/``ALL_PROXY``, minus ``NO_PROXY``) reroutes — the compute node
  talking to the site's server. ``requests`` costs a short-lived process (``hpcagent execute``
  in every job) about 0.06–0.1 s of CPU to import and five times the CPU per call.
* :class:`RequestsHttp`: a ``requests`` session (imported only then), for ``https://`` (its CA
  bundle, ``REQUESTS_CA_BUNDLE``) and proxied servers, as before.

:func:`classify` turns what either raised into ``(reason, never_sent, read_timeout)``, or None
for an exception that is no transport failure.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson


class Reply(Protocol):
    """What the client reads from an HTTP answer (``requests.Response`` has all of it)."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Any: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class Transport(Protocol):
    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
    ) -> Reply: ...

    def close(self) -> None: ...


class PlainReply:
    """A complete answer read by :class:`PlainHttp`."""

    def __init__(self, status: int, content: bytes, headers: http.client.HTTPMessage) -> None:
        self.status_code = status
        self.content = content
        self.headers = headers  # case-insensitive .get, as requests' headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class TransportError(OSError):
    """A request of :class:`PlainHttp` got no answer; the cause is chained."""


class ConnectTimeoutError(TransportError):
    """No connection within the connect timeout (the request was never sent)."""


class ConnectFailed(TransportError):
    """No connection: refused, unknown host, unreachable (the request was never sent)."""


class ReadTimeoutError(TransportError):
    """The request was sent and no answer came within the read timeout."""


class PlainHttp:
    """Keep-alive connections to one ``http://`` host, at most one request on each at a time
    (idle ones are kept for the next call; several threads each get their own). A kept
    connection the server closed meanwhile is noticed before reuse and replaced, so a failure
    after sending is a real one (the caller decides whether to send again)."""

    def __init__(self, host: str, port: int, headers: Mapping[str, str]) -> None:
        self.host = host
        self.port = port
        self.headers = dict(headers)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
    ) -> PlainReply:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._take()
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout[0])
            try:
                conn.connect()
            except TimeoutError as exc:
                raise ConnectTimeoutError(f"connect to {self.host}:{self.port} timed out") from exc
            except OSError as exc:  # refused, gaierror, unreachable
                raise ConnectFailed(f"no connection to {self.host}:{self.port}: {exc}") from exc
        try:
            assert conn.sock is not None
            conn.sock.settimeout(timeout[1])
            conn.request(method.upper(), path, body=data, headers={**self.headers, **headers})
            resp = conn.getresponse()
            content = resp.read()
        except TimeoutError as exc:
            conn.close()
            raise ReadTimeoutError(f"read from {self.host}:{self.port} timed out") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(f"connection to {self.host}:{self.port} failed: {exc!r}") from exc
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return PlainReply(resp.status, content, resp.headers)

    def _take(self) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            sock = conn.sock
            # Readable while idle means the server closed it (or sent junk): start afresh.
            if sock is not None and not select.select([sock], [], [], 0)[0]:
                return conn
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class RequestsHttp:
    """A ``requests`` session (TLS with its CA bundle, proxies from the environment)."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        import requests

        self._session = requests.Session()
        self._session.headers.update(headers)
        # requests reads the environment's proxy variables and ~/.netrc again on every request
        # (about 1 ms of CPU per call with a usual environment, more than the embedded server
        # spends answering it); the API server's proxy (NO_PROXY honoured) and a CA bundle
        # (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) are read once here instead, as requests would.
        self._session.proxies.update(requests.utils.get_environ_proxies(base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self._session.verify = bundle
        self._session.trust_env = False

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
    ) -> Reply:
        resp: Reply = self._session.request(
            method, url, data=data, headers=dict(headers), timeout=timeout
        )
        return resp

    def close(self) -> None:
        self._session.close()


def _proxied(host: str, env: Mapping[str, str]) -> bool:
    names = ("http_proxy", "all_proxy")
    if not any(env.get(n) or env.get(n.upper()) for n in names):
        return False
    from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

    no_proxy = {"no": env.get("no_proxy") or env.get("NO_PROXY") or ""}
    return not proxy_bypass_environment(host, no_proxy)


def open_transport(
    base_url: str, headers: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Transport:
    """The transport for ``base_url`` (see the module docstring)."""
    parts = urlsplit(base_url)
    environ = os.environ if env is None else env
    if parts.scheme == "http" and parts.hostname and not _proxied(parts.hostname, environ):
        return PlainHttp(parts.hostname, parts.port or 80, headers)
    return RequestsHttp(base_url, headers)


def classify(exc: BaseException, timeout: tuple[float, float]) -> tuple[str, bool, bool] | None:
    """``(reason, never_sent, read_timeout)`` for a request that got no answer, else None.

    ``reason`` is a few words (never urllib3's long repr); ``never_sent`` is True when no
    connection was made (refused, connect timeout, unknown host), so even a non-repeatable call
    may be sent again; ``read_timeout`` when the server took the request and did not answer.
    """
    if not isinstance(exc, TransportError):
        requests = sys.modules.get("requests")  # RequestsHttp imported it
        if requests is None or not isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return None
    read_timeout = type(exc).__name__ in ("ReadTimeout", "ReadTimeoutError")
    return _reason(exc, timeout), _never_sent(exc), read_timeout


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes, contexts and wrapped reasons (requests wraps urllib3 wraps socket)."""
    seen: set[int] = set()
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        out.append(cur)
        nested = [getattr(cur, "reason", None), cur.__cause__, cur.__context__, *cur.args]
        todo.extend(n for n in nested if isinstance(n, BaseException))
    return out


def _any_in_chain(exc: BaseException, test: Any) -> bool:
    return any(test(e) for e in _chain(exc))


def _never_sent(exc: BaseException) -> bool:
    # urllib3's NewConnectionError (refused, unknown host) is a ConnectTimeoutError.
    names = (
        "ConnectTimeout",
        "ConnectTimeoutError",
        "NewConnectionError",
        "NameResolutionError",
        "ConnectFailed",
    )
    return _any_in_chain(
        exc,
        lambda e: (
            type(e).__name__ in names or isinstance(e, (ConnectionRefusedError, socket.gaierror))
        ),
    )


def _reason(exc: BaseException, timeout: tuple[float, float]) -> str:
    for cur in _chain(exc):
        if isinstance(cur, socket.gaierror) or type(cur).__name__ == "NameResolutionError":
            return "cannot resolve the host name"
        if isinstance(cur, ConnectionRefusedError) or "Connection refused" in str(cur):
            return "connection refused"
        if type(cur).__name__ in ("ConnectTimeout", "ConnectTimeoutError"):
            return f"no connection within {timeout[0]:g} s"
        if type(cur).__name__ in ("ReadTimeout", "ReadTimeoutError"):
            return f"no answer within {timeout[1]:g} s"
    return "connection failed"
