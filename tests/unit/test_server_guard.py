"""No request can stall the server (issue 14, item 3): catastrophic regular expressions, half-sent
requests, a full connection table and aborted uploads, against a real ``hpcagent server``.

Nothing here measures time: each test asserts that another client's request *is answered*
while the hostile one is in progress (a stalled server fails it by the pytest timeout)."""

from __future__ import annotations

import concurrent.futures
import socket
import uuid
from typing import Any

import pytest
import requests
from helpers import wait_for

from hpcagent.server.regex import RegexRefused, compile_filter

Server = Any  # tests/conftest.py::EmbeddedServer

#: A name on which Python's backtracking engine needs ~2**40 steps for ``^(a+)+$``.
EVIL_NAME = "a" * 40 + "!"
EVIL_PATTERN = "^(a+)+$"


def _meta(reply: requests.Response) -> dict[str, Any]:
    meta: dict[str, Any] = reply.json()["meta"]
    return meta


@pytest.mark.parametrize(
    ("create", "get_all", "key"),
    [
        ("tasks.create", "tasks.get_all", "tasks"),
        ("queues.create", "queues.get_all", "queues"),
        ("projects.create", "projects.get_all", "projects"),
    ],
)
def test_catastrophic_name_regex_never_stalls_other_clients(
    embedded_server_session: Server, create: str, get_all: str, key: str
) -> None:
    srv = embedded_server_session
    body: dict[str, Any] = {"name": EVIL_NAME}
    if create == "tasks.create":
        body["type"] = "training"
    elif create == "projects.create":
        body["name"] = f"{EVIL_NAME}{uuid.uuid4().hex[:4]}"
    srv.send(create, body)
    matching = "a" * 12
    suffix = uuid.uuid4().hex[:4] if key == "projects" else ""  # project names are unique
    srv.send(create, {**body, "name": matching + suffix})
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        evil = pool.submit(srv.request, get_all, {"name": EVIL_PATTERN, "only_fields": ["name"]})
        ping = pool.submit(requests.get, f"{srv.url}/debug.ping", timeout=60)
        assert ping.result().status_code == 200
        reply = evil.result()
    # answered with a correct result: the evil name does not match, an all-'a' name does
    assert reply.status_code == 200, reply.text
    names = {doc["name"] for doc in reply.json()["data"][key]}
    assert EVIL_NAME not in names
    if key != "projects":
        assert matching in names
    pattern = {"fields": ["name"], "pattern": EVIL_PATTERN}
    any_reply = srv.request(get_all, {"_any_": pattern, "only_fields": ["name"]})
    assert any_reply.status_code == 200
    assert EVIL_NAME not in {doc["name"] for doc in any_reply.json()["data"][key]}


@pytest.mark.parametrize(
    ("pattern", "why"),
    [(r"(a)\1", "escape"), ("(?=a)b", "perl operator"), ("(a{1000}){1000}", "repetition")],
)
def test_patterns_the_bounded_engine_refuses_are_400_12(
    embedded_server_session: Server, pattern: str, why: str
) -> None:
    srv = embedded_server_session
    with pytest.raises(RegexRefused, match=why):
        compile_filter(pattern)
    for body in ({"name": pattern}, {"_all_": {"fields": ["name"], "pattern": pattern}}):
        reply = srv.request("tasks.get_all", body)
        meta = _meta(reply)
        assert (reply.status_code, meta["result_subcode"]) == (400, 12), meta
        assert "not a valid regex" in meta["result_msg"]
        assert "RE2" in meta["result_msg"]


def test_overlong_pattern_is_refused() -> None:
    with pytest.raises(RegexRefused, match="longer than"):
        compile_filter("a" * 5000)
    assert compile_filter("A" * 100).search("a" * 100)  # case-insensitive, as ClearML's


def _half_sent(srv: Server, count: int, data: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(data)
        sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes ``sock`` (the test's timeout guards it)."""
    sock.settimeout(None)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def test_half_sent_requests_time_out_and_the_cap_answers_503(make_embedded_server: Any) -> None:
    srv = make_embedded_server(
        "capped", extra_args=["--max-connections", "20", "--header-timeout", "2"]
    )
    half = _half_sent(srv, 40, b"POST /debug.ping HTTP/1.1\r\nHost: x\r\nContent-")
    # over the cap: a real client is answered at once (503 with an envelope), not refused
    busy = requests.get(f"{srv.url}/debug.ping", timeout=60)
    assert busy.status_code == 503
    assert _meta(busy)["result_code"] == 503
    assert busy.headers["retry-after"] == "1"
    # every half-sent request is closed by the server; those under the cap get a 408 first
    replies = [_closed_by_server(sock) for sock in half]
    assert sum(r.startswith(b"HTTP/1.1 408") for r in replies) >= 1
    assert all(r == b"" or r.startswith(b"HTTP/1.1 408") for r in replies)
    assert requests.get(f"{srv.url}/debug.ping", timeout=60).status_code == 200
    log = srv.log_path.read_text()
    assert log.count("at the cap") == 1
    assert "Traceback" not in log


def test_half_sent_sockets_do_not_block_a_real_client(make_embedded_server: Any) -> None:
    """Many idle and half-sent connections below the cap: a real client is served while they
    are still open."""
    srv = make_embedded_server("idle")
    idle = _half_sent(srv, 200, b"GET /debug.ping HTTP/1.1\r\n")
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        pings = [pool.submit(srv.send, "projects.get_all", {}) for _ in range(8)]
        assert all("projects" in p.result() for p in pings)
    for sock in idle:
        sock.close()


def test_a_stalled_body_is_closed_with_one_log_line(make_embedded_server: Any) -> None:
    srv = make_embedded_server("stalled", extra_args=["--body-timeout", "1", "--log-level", "info"])
    head = (
        f"POST /projects.create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.token()}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    (sock,) = _half_sent(srv, 1, head + b'{"name": ')
    assert _closed_by_server(sock) == b""
    assert srv.send("projects.get_all", {})["projects"] is not None
    log = srv.log_path.read_text()
    assert log.count("went away before its request body was complete") == 1, log
    assert "Traceback" not in log


def test_an_aborted_upload_is_one_log_line(make_embedded_server: Any) -> None:
    srv = make_embedded_server("aborted", extra_args=["--log-level", "info"])
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="p/aborted.bin"; '
        'filename="aborted.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    head = (
        f"POST /files/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.token()}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
    ).encode()
    for _ in range(3):
        (sock,) = _half_sent(srv, 1, head + part + b"x" * 300_000)
        sock.close()  # the client dies mid-upload
    assert srv.send("projects.get_all", {})["projects"] is not None  # still serving

    def aborted() -> list[str]:
        return [line for line in srv.log_path.read_text().splitlines() if "aborted.bin" in line]

    wait_for(lambda: len(aborted()) >= 3, timeout=60)
    assert len(aborted()) == 3, srv.log_path.read_text()
    assert "went away" in aborted()[0]
    assert "Traceback" not in srv.log_path.read_text()
    assert not list((srv.data_dir / "files").rglob("aborted.bin"))
