"""Shared pytest fixtures.

``embedded_server`` (function scope) and ``embedded_server_session`` (session scope) start a
REAL ``hpcagent server`` subprocess on a free port with a temporary data dir and preset keys.
They offer ``.url``, ``.access_key``, ``.secret_key``, ``.data_dir``, ``.stop()``, ``.start()``
(restart on the same port and data), plus ``.token()`` and ``.send(endpoint, body)`` helpers
that use plain ``requests``. ``ui_browser`` (session scope) is a real headless Chromium on
``embedded_server_session`` (tests/ui_browser.py), ``ui`` the same signed in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

SERVER_ACCESS_KEY = "TESTACCESSKEY0123456"
SERVER_SECRET_KEY = "test-secret-key-0123456789abcdefghijklmnop"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A real ``hpcagent server`` process for tests."""

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str = SERVER_ACCESS_KEY,
        secret_key: str = SERVER_SECRET_KEY,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = _free_port()
        self.host = host  # "0.0.0.0" to be reachable from containers; .url stays loopback
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})  # added to this process's environment
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._token: str | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart) the server on the same port and data dir; wait until ready."""
        if self.proc is not None and self.proc.poll() is None:
            return
        env = {**os.environ, **self.env}
        env["HPCAGENT_SERVER_ACCESS_KEY"] = self.access_key
        env["HPCAGENT_SERVER_SECRET_KEY"] = self.secret_key
        argv = [
            sys.executable, "-m", "hpcagent.commands.server",
            "--host", self.host, "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--log-level", "warning", *self.extra_args,
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {self.log_path.read_text()}"
                )
            try:
                if requests.get(f"{self.url}/debug.ping", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s: {self.log_path.read_text()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server and wait for it; returns its exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def token(self) -> str:
        """A Bearer token from auth.login (cached)."""
        if self._token is None:
            reply = requests.get(
                f"{self.url}/auth.login", auth=(self.access_key, self.secret_key), timeout=10
            )
            reply.raise_for_status()
            self._token = str(reply.json()["data"]["token"])
        return self._token

    def request(
        self,
        endpoint: str,
        body: Any = None,
        *,
        method: str = "POST",
        auth: bool = True,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        """A raw call (any method, JSON ``body`` or raw ``data``); error replies are returned."""
        all_headers = {"Authorization": f"Bearer {self.token()}"} if auth else {}
        all_headers.update(headers or {})
        if data is None and body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        return requests.request(
            method, f"{self.url}/{endpoint}", data=data, headers=all_headers, timeout=30
        )

    def send(self, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` to ``endpoint``; return the envelope's ``data`` (raise on error)."""
        reply = requests.post(
            f"{self.url}/{endpoint}",
            json=body or {},
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
        )
        envelope = reply.json()
        if reply.status_code != 200:
            raise AssertionError(f"{endpoint} -> {reply.status_code}: {envelope['meta']}")
        data: dict[str, Any] = envelope["data"]
        return data


#: The embedded server's log line for a request field it refused (hpcagent/server/fields.py).
FIELD_REFUSED = "refused unsupported field"


@pytest.fixture
def no_field_refused(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test when an embedded server it used refused a request field during it: the
    server refuses every field it does not apply and logs a warning line for each, so a field
    the official SDK, clearml-agent or hpcagent's own parts send and the server would refuse
    is found by the flow that sends it (tests/e2e and tests/slurm use this for every test)."""
    names = ("embedded_server", "embedded_server_session")
    servers: list[Any] = [request.getfixturevalue(n) for n in names if n in request.fixturenames]
    start = {id(s): s.log_path.stat().st_size if s.log_path.exists() else 0 for s in servers}
    yield
    for server in servers:
        if not server.log_path.exists():
            continue
        with server.log_path.open("rb") as log:
            log.seek(start[id(server)])
            lines = log.read().decode(errors="replace").splitlines()
        refused = [line for line in lines if FIELD_REFUSED in line]
        assert refused == [], f"the server refused fields the flow sent: {refused}"


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A fresh real server per test."""
    server = EmbeddedServer(tmp_path / "server-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedded_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One real server shared by a whole session (tests must not assume an empty database)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("server") / "server-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedded_server_class() -> type[EmbeddedServer]:
    """The class itself, for fixtures of a wider scope than ``make_embedded_server`` (they
    stop the servers they start)."""
    return EmbeddedServer


@pytest.fixture
def make_embedded_server(tmp_path: Path) -> Iterator[Callable[..., EmbeddedServer]]:
    """A factory: ``make_embedded_server(name, start=True, **EmbeddedServer kwargs)``; every
    server it made is stopped at teardown."""
    made: list[EmbeddedServer] = []

    def make(name: str = "server-data", *, start: bool = True, **kwargs: Any) -> EmbeddedServer:
        server = EmbeddedServer(tmp_path / name, **kwargs)
        made.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for server in made:
            server.stop()


@pytest.fixture(scope="session")
def ui_browser(
    embedded_server_session: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A real headless Chromium (tests/ui_browser.py) on ``embedded_server_session``; fails
    (never skips) when chromium or chromedriver is missing: ``make browser`` installs them."""
    from ui_browser import UiBrowser, browser_missing

    why = browser_missing()
    if why:
        pytest.fail(why)
    root = tmp_path_factory.mktemp("chromium")
    browser = UiBrowser(embedded_server_session, root / "profile", root / "downloads")
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def ui(ui_browser: Any) -> Any:
    """``ui_browser`` signed in, on the task table, its console log of earlier tests read."""
    ui_browser.errors()  # forget the previous test's console
    ui_browser.sign_in()
    ui_browser.wait("#task-table")
    return ui_browser
