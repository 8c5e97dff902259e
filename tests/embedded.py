"""A REAL ``hpcagent server`` subprocess for tests and for the fault suite (tests/chaos.py):
a free loopback port, a data dir, preset keys. ``.url``, ``.access_key``, ``.secret_key``,
``.data_dir``, ``.stop()``, ``.start()`` (restart on the same port and data), ``.token()`` and
``.send(endpoint, body)`` over plain ``requests``.

A plain module, not conftest.py: scripts import it by name, and ``conftest`` names a different
module in each test folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
