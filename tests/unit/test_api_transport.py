"""The client's two HTTP transports (hpcagent/api/transport.py): which one a server gets, the
same answers and the same failure classification from both, kept connections the server
closed meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hpcagent.api.transport import PlainHttp, RequestsHttp, classify, open_transport

TIMEOUT = (2.0, 2.0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the handler closes

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = b'{"got": "' + body + b'", "worker": "' + self.headers["X-W"].encode() + b'"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Retry-After", "3")
        self.end_headers()
        self.wfile.write(reply)
        # Close without saying so: the client keeps the connection and must notice.
        self.close_connection = self.path == "/drop"

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_transport_a_server_gets() -> None:
    plain = open_transport("http://10.1.2.3:8008", {}, env={})
    assert isinstance(plain, PlainHttp)
    assert (plain.host, plain.port) == ("10.1.2.3", 8008)
    assert isinstance(open_transport("https://api.example", {}, env={}), RequestsHttp)
    proxied = {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.site.internal"}
    assert isinstance(open_transport("http://api.example:8008", {}, env=proxied), RequestsHttp)
    assert isinstance(open_transport("http://x.site.internal:8008", {}, env=proxied), PlainHttp)
    assert isinstance(open_transport("http://api:8008", {}, env={"all_proxy": "p"}), RequestsHttp)


@pytest.mark.parametrize("kind", ["plain", "requests"])
def test_both_transports_answer_alike(server: tuple[str, int], kind: str) -> None:
    host, port = server
    base = f"http://{host}:{port}"
    transport = PlainHttp(host, port, {"X-W": "w ü".encode().decode("latin-1")})
    if kind == "requests":
        transport = RequestsHttp(base, {"X-W": "w ü".encode().decode("latin-1")})  # type: ignore[assignment]
    for path in ("/a", "/drop", "/b", "/drop", "/drop", "/c"):
        reply = transport.request("post", base + path, data=b"x", headers={}, timeout=TIMEOUT)
        assert reply.status_code == 200
        assert reply.json()["got"] == "x"
        assert reply.text.startswith('{"got"')
        assert reply.headers.get("retry-after") == "3"  # case-insensitive, as requests'
        if path == "/drop":
            time.sleep(0.2)  # the server closed it meanwhile (both notice before reuse)
    transport.close()


def test_plain_keeps_one_connection_while_the_server_keeps_it(server: tuple[str, int]) -> None:
    host, port = server
    transport = PlainHttp(host, port, {"X-W": "w"})
    for _ in range(5):
        transport.request("post", f"http://{host}:{port}/a", data=b"", headers={}, timeout=TIMEOUT)
    assert len(transport._idle) == 1
    first = transport._idle[0]
    transport.request("post", f"http://{host}:{port}/a", data=b"", headers={}, timeout=TIMEOUT)
    assert transport._idle == [first]


@pytest.mark.parametrize("kind", ["plain", "requests"])
def test_refused_is_classified_alike(kind: str) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    transport = PlainHttp("127.0.0.1", port, {}) if kind == "plain" else RequestsHttp(url, {})
    with pytest.raises(OSError, match=r"refused|Connection") as info:
        transport.request(
            "post", f"http://127.0.0.1:{port}/x", data=b"", headers={}, timeout=TIMEOUT
        )
    assert classify(info.value, TIMEOUT) == ("connection refused", True, False)
    assert classify(ValueError("not a transport failure"), TIMEOUT) is None


def test_plain_read_timeout_is_sent_and_classified() -> None:
    with socket.socket() as listener:  # accepts, reads, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        transport = PlainHttp("127.0.0.1", port, {})
        with pytest.raises(OSError, match="timed out") as info:
            transport.request(
                "post", f"http://127.0.0.1:{port}/x", data=b"", headers={}, timeout=(2.0, 0.3)
            )
    assert classify(info.value, (2.0, 0.3)) == ("no answer within 0.3 s", False, True)


def _canned(answers: list[bytes]) -> tuple[int, list[bytes], threading.Semaphore]:
    """A server that reads one request per connection, sends the next canned answer and
    closes; returns its port, the requests it got, and a semaphore released after each close
    (a test that reuses a connection waits for it: the close must be there before the reuse,
    else the request meets a server about to close without reading it)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    got: list[bytes] = []
    closed = threading.Semaphore(0)

    def serve() -> None:
        with listener:
            for answer in answers:
                conn, _ = listener.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += conn.recv(65536)
                    got.append(data)
                    conn.sendall(answer)
                closed.release()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1]), got, closed


def test_plain_reads_the_body_forms_a_server_may_send() -> None:
    answers = [
        # chunked, with a chunk extension and a trailer field
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n',
        # no length: the body ends at the close (HTTP/1.0)
        b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"b": 2}',
        # an interim 100 Continue, then the answer; Connection: close
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nConnection: close\r\n"
        b"Retry-After: 2\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
        b'Content-Length: 8\r\n\r\n{"c": 3}',
    ]
    port, got, closed = _canned(answers)
    transport = PlainHttp("127.0.0.1", port, {"Authorization": "Bearer t"})
    url = f"http://127.0.0.1:{port}/v2.31/tasks.get_all?x=1"
    first = transport.request("post", url, data=b'{"q": 1}', headers={"X-W": "w"}, timeout=TIMEOUT)
    assert (first.status_code, first.json(), first.headers["x-a"]) == (200, {"a": 1}, "1")
    assert len(transport._idle) == 1  # kept; the server closed it silently: noticed on reuse
    assert closed.acquire(timeout=10)
    second = transport.request("post", url, data=b"", headers={}, timeout=TIMEOUT)
    assert (second.status_code, second.json()) == (200, {"b": 2})
    third = transport.request("post", url, data=b"", headers={}, timeout=TIMEOUT)
    assert (third.status_code, third.json(), third.headers.get("RETRY-AFTER")) == (
        503,
        {"c": 3},
        "2",
    )
    assert third.headers.get("set-cookie") == "a=1, b=2"
    assert "Set-Cookie" in third.headers
    assert "X-None" not in third.headers
    assert transport._idle == []
    request = got[0].decode("latin-1")
    assert request.startswith("POST /v2.31/tasks.get_all?x=1 HTTP/1.1\r\n")
    for field in (f"Host: 127.0.0.1:{port}", "Content-Length: 8", "Authorization: Bearer t",
                  "X-W: w", "Accept-Encoding: identity"):  # fmt: skip
        assert f"\r\n{field}\r\n" in request
    assert request.endswith('\r\n\r\n{"q": 1}')


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed without an answer
        b"SSH-2.0-OpenSSH\r\n\r\n",  # no HTTP at all
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # ended early
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_plain_refuses_what_is_no_complete_answer(answer: bytes) -> None:
    port, _, _ = _canned([answer])
    transport = PlainHttp("127.0.0.1", port, {})
    with pytest.raises(OSError, match="failed") as info:
        transport.request(
            "post", f"http://127.0.0.1:{port}/x", data=b"", headers={}, timeout=TIMEOUT
        )
    assert classify(info.value, TIMEOUT) == ("connection failed", False, False)
    assert transport._idle == []


def test_plain_refuses_header_fields_that_would_split_the_request() -> None:
    transport = PlainHttp("127.0.0.1", _closed_port(), {})
    for bad in ({"X-W": "a\r\nX-Evil: 1"}, {"X Evil": "1"}, {"X-Evil:": "1"}):
        with pytest.raises(ValueError, match="invalid header field"):
            transport.request("post", "http://127.0.0.1/x", data=b"", headers=bad, timeout=TIMEOUT)
    with pytest.raises(ValueError, match="invalid request path"):
        transport.request("post", "http://127.0.0.1/x y", data=b"", headers={}, timeout=TIMEOUT)
