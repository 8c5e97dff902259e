"""No request can stall the server (issue 14, item 3): catastrophic regular expressions, half-sent
requests, a full connection table and aborted uploads, against a real ``hpcagent server``.

Nothing here measures time: each test asserts that another client's request *is answered*
while the hostile one is in progress (a stalled server fails it by the pytest timeout)."""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any

import pytest
import requests

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
