"""The ClearML SDK forks with its connection pool; the server must not keep those connections.

``Task.init`` forks the SDK's reporting subprocess (``sdk.development.report_use_subprocess``,
on by default on Linux) with ``os.fork`` and no exec, and the SDK patches ``os.fork`` so that a
user's forked workers report too. The child inherits the parent's ``requests`` session: a
kept-alive socket idle in its pool is then written by both processes, and two requests
interleave on one TCP connection (the body of one after the headers of the other). The server
can only answer ``400 Invalid HTTP request received``, or answer a request of one process to
the other. Seen in the SDK tier (tests/sdk_tier.py ``framework_autolog``): ``models.edit`` or
``tasks.add_or_update_model`` of a ``joblib.dump`` lost, ``events.add_batch`` lost.

The server therefore closes an SDK client's connection after each response, as the ClearML
apiserver under gunicorn's sync workers does (hpcagent/server/connections.py): no live socket is
left in the SDK's pool for a fork to share. These tests run the real SDK session against a real
server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

Server = Any  # tests/embedded.py::EmbeddedServer

#: Parent and forked child each send ROUNDS requests at once through the SDK session they
#: share, each checking that its reply answers its own request.
FORKED_SDK = textwrap.dedent(
    """
    import os, sys
    import psutil
    from clearml.backend_api import Session

    Session._session_timeout = (5.0, 20.0)  # a stolen reply fails fast, not in 300 s
    project, queue, port, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    session = Session()
    assert session.send_request("debug", "ping").status_code == 200
    # what a fork now would share: the session's sockets still connected to the server
    live = [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    print("live at fork:", len(live), flush=True)
    go_child, ready_child = os.pipe(), os.pipe()

    def hammer(service, key, ident, wait, tell):
        for _ in range(rounds):
            os.write(tell, b"x")  # both processes send at the same moment, each round
            os.read(wait, 1)
            try:
                reply = session.send_request(service, "get_by_id", json={key: ident})
            except Exception as exc:
                return f"{service}: {type(exc).__name__}: {exc}"
            if reply.status_code != 200:
                return f"{service}: {reply.status_code} {reply.text[:200]}"
            got = reply.json()["data"].get(key, {}).get("id")
            if got != ident:
                return f"{service}: the reply of another request: {reply.text[:200]}"
        return ""

    child = os.fork()
    if child == 0:
        problem = hammer("queues", "queue", queue, go_child[0], ready_child[1])
        print("child:", problem or "ok", flush=True)
        os._exit(1 if problem else 0)
    problem = hammer("projects", "project", project, ready_child[0], go_child[1])
    _, status = os.waitpid(child, 0)
    print("parent:", problem or "ok", flush=True)
    sys.exit(1 if problem or status else 0)
    """
)


def _sdk_conf(srv: Server, path: Path) -> Path:
    api = {
        "api_server": srv.url,
        "web_server": srv.url,
        "files_server": srv.url + "/files",
        "credentials": {"access_key": srv.access_key, "secret_key": srv.secret_key},
    }
    path.write_text(json.dumps({"api": api}))
    return path


def test_sdk_session_forked_with_its_pool_keeps_working(
    embedded_server_session: Server, tmp_path: Path
) -> None:
    srv = embedded_server_session
    project = srv.send("projects.create", {"name": f"fork-{tmp_path.name}"})["id"]
    queue = srv.send("queues.create", {"name": f"fork-{tmp_path.name}"})["id"]
    script = tmp_path / "forked_sdk.py"
    script.write_text(FORKED_SDK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env.update(
        CLEARML_CONFIG_FILE=str(_sdk_conf(srv, tmp_path / "clearml.conf")), HOME=str(tmp_path)
    )
    res = subprocess.run(
        [sys.executable, str(script), project, queue, str(srv.port), "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = res.stdout.splitlines()
    # deterministic: after its reply the server closed the SDK's connection, none is left for
    # the fork to share (kept alive, the pool holds one, which both processes then write)
    assert lines[:1] == ["live at fork: 0"], res.stdout + res.stderr[-3000:]
    # and so, both processes at once, each gets its own replies
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert sorted(lines[1:]) == ["child: ok", "parent: ok"], res.stdout


def _request(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _reply(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body (by its content-length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return head.lower(), body


def test_sdk_client_connections_close_after_each_response(embedded_server_session: Server) -> None:
    srv = embedded_server_session
    auth = {"Authorization": f"Bearer {srv.token()}"}
    sdk = {"X-ClearML-Client": "clearml-2.1.12", **auth}
    legacy = {"X-Trains-Client": "trains-0.16.4", **auth}
    for headers, path in (
        (sdk, "/projects.get_all"),
        (legacy, "/projects.get_all"),
        (auth, "/files"),
    ):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(_request(path, headers))
            head, _ = _reply(sock)
            assert head.startswith(b"http/1.1 200"), head
            assert b"\r\nconnection: close" in head, (path, headers.keys(), head)
            assert sock.recv(65536) == b"", "the server closes the connection after the reply"


def test_other_clients_keep_their_connection(embedded_server_session: Server) -> None:
    """hpcagent's own client (which never forks with its session) and the web UI keep alive."""
    srv = embedded_server_session
    own = {"X-ClearML-Agent": "hpcagent-test", "Authorization": f"Bearer {srv.token()}"}
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        for _ in range(3):
            sock.sendall(_request("/projects.get_all", own))
            head, body = _reply(sock)
            assert head.startswith(b"http/1.1 200"), head
            assert b"connection: close" not in head, head
            assert json.loads(body)["meta"]["result_code"] == 200
