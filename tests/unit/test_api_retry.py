"""Retry policy of ApiClient against the real embedded server (fixture ``embedded_server``).

The server process is stopped and started again while a call is retrying; attempts are counted
with ``ApiClient.requests_sent`` (every HTTP request the client made, logins included).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import pytest

from hpcagent.api import ApiClient
from hpcagent.errors import ApiError, AuthError, ServerUnreachable


def make_client(server: Any, **kw: Any) -> ApiClient:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff_s", 0.05)
    kw.setdefault("backoff_max_s", 0.3)
    kw.setdefault("timeout_s", 10.0)
    return ApiClient(server.url, server.access_key, server.secret_key, worker="test-w", **kw)


def test_connection_errors_retried_until_server_is_back(embedded_server: Any) -> None:
    client = make_client(embedded_server, retries=200)
    queue_id = client.queues.create("retry-q")
    embedded_server.stop()
    restarted = threading.Event()
    first_failures = threading.Event()

    def restart_later() -> None:
        # wait until the client has failed at least twice against the stopped server
        while client.requests_sent < before + 2:
            time.sleep(0.01)
        first_failures.set()
        embedded_server.start()
        restarted.set()

    before = client.requests_sent
    thread = threading.Thread(target=restart_later, daemon=True)
    thread.start()
    queues = client.queues.get_all(id=[queue_id])
    thread.join(timeout=60)
    assert first_failures.is_set()
    assert restarted.is_set()
    assert [q["name"] for q in queues] == ["retry-q"]
    assert client.requests_sent - before >= 3  # >= 2 failures + the successful attempt


def test_4xx_is_not_retried(embedded_server: Any) -> None:
    client = make_client(embedded_server, retries=5)
    client.queues.get_all()  # logs in
    before = client.requests_sent
    with pytest.raises(ApiError) as info:
        client.tasks.get_by_id("0" * 32)
    assert info.value.result_code == 400
    assert client.requests_sent - before == 1


def test_401_triggers_exactly_one_relogin(embedded_server: Any) -> None:
    now = int(time.time())
    forged = jwt.encode({"iat": now, "exp": now + 86400}, "not-the-server-secret" * 2)
    client = make_client(embedded_server, token=forged)
    before = client.requests_sent
    assert client.queues.get_all() is not None
    # the call with the forged token (401), one auth.login, the repeated call
    assert client.requests_sent - before == 3
    client.queues.get_all()
    assert client.requests_sent - before == 4  # the fresh token is kept


def test_wrong_secret_fails_without_retries(embedded_server: Any) -> None:
    client = ApiClient(embedded_server.url, embedded_server.access_key, "wrong", retries=5)
    with pytest.raises(AuthError) as info:
        client.queues.get_all()
    assert info.value.exit_code == 4
    assert client.requests_sent == 1


def test_retry_budget_spent_names_host(embedded_server: Any) -> None:
    client = make_client(embedded_server, retries=2)
    client.queues.get_all()
    embedded_server.stop()
    before = client.requests_sent
    with pytest.raises(ServerUnreachable) as info:
        client.queues.get_all()
    assert embedded_server.url in str(info.value)
    assert info.value.exit_code == 5
    assert client.requests_sent - before == 3
