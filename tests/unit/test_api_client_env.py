"""ApiClient reads the environment's proxy and CA-bundle settings once, at creation (requests
would read them on every request): a proxy named by ``HTTP_PROXY`` carries the calls, one
excluded by ``NO_PROXY`` does not, and ``REQUESTS_CA_BUNDLE`` is the bundle that verifies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import jwt
import pytest

from hpcagent.api.client import ApiClient
from hpcagent.api.transport import RequestsHttp
from hpcagent.errors import ServerUnreachable


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers every call itself with a ClearML envelope."""

    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        _Proxy.seen.append(self.requestline)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        data = {}
        if "auth.login" in self.path:
            data = {"token": jwt.encode({"exp": int(time.time()) + 3600}, "k" * 32)}
        body = json.dumps({"meta": {"result_code": 200, "result_subcode": 0}, "data": data})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Proxy.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_proxy_from_the_environment_carries_the_calls(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = ApiClient("http://api.hpcagent.invalid:8008", "AK", "SK", retries=0)
    monkeypatch.delenv("HTTP_PROXY")  # read once, at creation
    assert client.send("tasks.get_all", {}) == {}
    assert "POST http://api.hpcagent.invalid:8008/tasks.get_all HTTP/1.1" in _Proxy.seen
    assert any("auth.login" in line for line in _Proxy.seen)


def test_no_proxy_excludes_the_api_server(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "api.hpcagent.invalid")
    client = ApiClient("http://api.hpcagent.invalid:8008", "AK", "SK", retries=0)
    with pytest.raises(ServerUnreachable):
        client.send("tasks.get_all", {})
    assert _Proxy.seen == []


def test_the_ca_bundle_of_the_environment_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "site-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    client = ApiClient("https://api.hpcagent.invalid", "AK", "SK", retries=0)
    assert isinstance(client._session, RequestsHttp)  # https: requests, with the bundle
    assert client._session._session.verify == str(bundle)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    default = ApiClient("https://api.hpcagent.invalid", "AK", "SK")._session
    assert isinstance(default, RequestsHttp)
    assert default._session.verify is True
