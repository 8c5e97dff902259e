"""How :class:`~hpcagent.api.client.ApiClient` sends one HTTP request, and what a failure was.

Two transports with one interface (``request(method, url, data=, headers=, timeout=)`` → a
reply with ``status_code``, ``content``, ``text``, ``headers``, ``json()``; ``close()``):

* :class:`PlainHttp`: keep-alive HTTP/1.1 connections over a socket, for an ``http://`` server
  that no proxy variable (``HTTP_PROXY``/``ALL_PROXY``, minus ``NO_PROXY``) reroutes — the
  compute node talking to the site's server. ``requests`` costs a short-lived process
  (``hpcagent execute`` in every job) about 0.06–0.1 s of CPU to import and five times the CPU
  per call; ``http.client`` about 0.015 s (``email``, ``ssl``).
* :class:`RequestsHttp`: a ``requests`` session (imported only then), for ``https://`` (its CA
  bundle, ``REQUESTS_CA_BUNDLE``) and proxied servers, as before.

:func:`classify` turns what either raised into ``(reason, never_sent, read_timeout)``, or None
for an exception that is no transport failure.
"""

from __future__ import annotations

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


class Headers:
    """The header fields of an answer, looked up case-insensitively (as requests' headers);
    a field sent several times reads as its values joined by ", "."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._by_name: dict[str, str] = {}
        for name, value in fields:
            key = name.lower()
            self._by_name[key] = f"{self._by_name[key]}, {value}" if key in self._by_name else value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._by_name.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._by_name[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)


class PlainReply:
    """A complete answer read by :class:`PlainHttp`."""

    def __init__(self, status: int, content: bytes, headers: Headers) -> None:
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


class ProtocolError(TransportError):
    """The server's answer was no HTTP/1.x answer, or it ended early."""


#: Longest status or header line, and most header fields, accepted (http.client's limits).
MAX_LINE = 65536
MAX_FIELDS = 100


class _Connection:
    """One keep-alive HTTP/1.1 connection: the socket and a buffered reader of it."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        # An ASCII name goes to getaddrinfo as bytes: a str would load the IDNA codec
        # (encodings.idna, stringprep, unicodedata) in every short-lived process.
        name: str | bytes = host.encode("ascii") if host.isascii() else host
        self.sock = socket.create_connection((name, port), timeout)  # type: ignore[arg-type]
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _request_head(
    method: str, path: str, host: str, headers: Mapping[str, str], size: int
) -> bytes:
    """The request line and header fields of one request (what ``http.client`` sends: Host,
    ``Accept-Encoding: identity``, Content-Length, then the caller's fields, Latin-1)."""
    if not path.startswith("/") or any(c <= " " or c == "\x7f" for c in path):
        raise ValueError(f"invalid request path {path!r}")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    lines.append(f"Content-Length: {size}")
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid header field {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _line(reader: Any) -> bytes:
    line: bytes = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("header line too long")
    return line


def _read_reply(reader: Any, method: str) -> tuple[int, Headers, bytes, bool]:
    """``(status, headers, body, will_close)`` of the next answer on ``reader`` (interim 1xx
    answers skipped; the body by Content-Length, chunked, or up to the close)."""
    while True:
        line = _line(reader)
        if not line:
            raise ProtocolError("the server closed the connection without an answer")
        parts = line.decode("latin-1").split(None, 2)
        try:
            version, status = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"no HTTP status line: {line[:80]!r}") from None
        if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
            raise ProtocolError(f"no HTTP/1.x status line: {line[:80]!r}")
        fields: list[tuple[str, str]] = []
        while True:
            field = _line(reader)
            if field in (b"\r\n", b"\n", b""):
                break
            if len(fields) >= MAX_FIELDS:
                raise ProtocolError(f"more than {MAX_FIELDS} header fields")
            text = field.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and fields:  # an obsolete folded continuation
                fields[-1] = (fields[-1][0], f"{fields[-1][1]} {text.strip()}")
                continue
            name, sep, value = text.partition(":")
            if sep:
                fields.append((name.strip(), value.strip()))
        if status >= 200 or status == 101:
            break
    headers = Headers(fields)
    connection = (headers.get("connection") or "").lower()
    will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status < 200 or status in (204, 304):
        return status, headers, b"", will_close
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        return status, headers, _read_chunked(reader), will_close
    length = headers.get("content-length")
    if length is None:  # delimited by the close
        return status, headers, reader.read(), True
    try:
        size = int(length.split(",")[0])
    except ValueError:
        raise ProtocolError(f"invalid Content-Length {length!r}") from None
    if size < 0:
        raise ProtocolError(f"invalid Content-Length {length!r}")
    body: bytes = reader.read(size)
    if len(body) < size:
        raise ProtocolError(f"the answer ended after {len(body)} of {size} bytes")
    return status, headers, body, will_close


def _read_chunked(reader: Any) -> bytes:
    chunks: list[bytes] = []
    while True:
        line = _line(reader)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"invalid chunk size line {line[:80]!r}") from None
        if size == 0:
            while _line(reader) not in (b"\r\n", b"\n", b""):  # trailer fields
                pass
            return b"".join(chunks)
        chunk = reader.read(size)
        if len(chunk) < size:
            raise ProtocolError("the answer ended inside a chunk")
        chunks.append(chunk)
        _line(reader)  # the line end after the chunk's data


class PlainHttp:
    """Keep-alive HTTP/1.1 connections to one ``http://`` host, at most one request on each at
    a time (idle ones are kept for the next call; several threads each get their own). A kept
    connection the server closed meanwhile is noticed before reuse and replaced, so a failure
    after sending is a real one (the caller decides whether to send again).

    Requests and answers are written and read here over a socket (the subset of HTTP/1.1 a
    ClearML server speaks: Content-Length or chunked bodies, keep-alive, ``Connection:
    close``), not through ``http.client``, whose imports (``email``, ``ssl``) cost a
    short-lived ``hpcagent execute`` more CPU than its dozen calls."""

    def __init__(self, host: str, port: int, headers: Mapping[str, str]) -> None:
        self.host = host
        self.port = port
        self.headers = dict(headers)
        name = f"[{host}]" if ":" in host else host
        self._host_field = name if port == 80 else f"{name}:{port}"
        self._idle: list[_Connection] = []
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
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        method = method.upper()
        head = _request_head(method, path, self._host_field, {**self.headers, **headers}, len(data))
        conn = self._take()
        if conn is None:
            try:
                conn = _Connection(self.host, self.port, timeout[0])
            except TimeoutError as exc:
                raise ConnectTimeoutError(f"connect to {self.host}:{self.port} timed out") from exc
            except OSError as exc:  # refused, gaierror, unreachable
                raise ConnectFailed(f"no connection to {self.host}:{self.port}: {exc}") from exc
        try:
            conn.sock.settimeout(timeout[1])
            conn.sock.sendall(head + data)
            status, fields, content, will_close = _read_reply(conn.reader, method)
        except TimeoutError as exc:
            conn.close()
            raise ReadTimeoutError(f"read from {self.host}:{self.port} timed out") from exc
        except ProtocolError as exc:
            conn.close()
            raise TransportError(f"connection to {self.host}:{self.port} failed: {exc}") from exc
        except OSError as exc:
            conn.close()
            raise TransportError(f"connection to {self.host}:{self.port} failed: {exc!r}") from exc
        if will_close:
            conn.close()
        else:
            self._give_back(conn)
        return PlainReply(status, content, fields)

    def _take(self) -> _Connection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            # Readable while idle means the server closed it (or sent junk): start afresh.
            if not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()

    def _give_back(self, conn: _Connection) -> None:
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
