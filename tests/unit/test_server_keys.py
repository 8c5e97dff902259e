"""Keys and tokens of the embedded server (issue 14, item 4), against a real server: tokens die
with the key pair that signed in, ``hpcagent server keys`` edits the pairs of a running server,
the token lifetime has a cap, failed sign-ins slow down per source, short preset secrets are
refused at start."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import requests
from helpers import hpcagent_argv

Server = Any  # tests/conftest.py::EmbeddedServer


def _login(srv: Server, access: str, secret: str, **params: Any) -> requests.Response:
    return requests.get(f"{srv.url}/auth.login", params=params, auth=(access, secret), timeout=30)


def _token(srv: Server, access: str, secret: str) -> str:
    reply = _login(srv, access, secret)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["token"])


def _call(srv: Server, token: str) -> tuple[int, int]:
    reply = requests.post(
        f"{srv.url}/projects.get_all",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return reply.status_code, int(reply.json()["meta"]["result_subcode"])


def _keys(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hpcagent_argv("server", "keys", *args, "--data-dir", str(srv.data_dir)),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _printed_pair(out: str) -> tuple[str, str]:
    access = out.split('access_key: "')[1].split('"')[0]
    secret = out.split('secret_key: "')[1].split('"')[0]
    return access, secret


def test_tokens_die_with_the_keys_of_a_restart(make_embedded_server: Any) -> None:
    srv = make_embedded_server("restart")
    old = srv.token()
    assert _call(srv, old) == (200, 0)
    srv.stop()
    srv.secret_key = secrets.token_urlsafe(36)  # same access key, new secret
    srv.start()
    assert _call(srv, old) == (401, 30)
    refresh = requests.get(
        f"{srv.url}/auth.login", headers={"Authorization": f"Bearer {old}"}, timeout=30
    )
    assert refresh.status_code == 401  # nor can it mint a new one
    assert _login(srv, srv.access_key, "x" * 40).status_code == 401
    assert _call(srv, _token(srv, srv.access_key, srv.secret_key)) == (200, 0)


def test_keys_add_rotate_revoke_list_on_a_running_server(make_embedded_server: Any) -> None:
    srv = make_embedded_server("keys", extra_args=["--log-level", "debug"])
    first = srv.token()
    added = _keys(srv, "add")
    assert added.returncode == 0, added.stderr
    access2, secret2 = _printed_pair(added.stdout)
    token2 = _token(srv, access2, secret2)
    assert _call(srv, token2) == (200, 0)
    listed = _keys(srv, "list")
    assert srv.access_key in listed.stdout
    assert access2 in listed.stdout
    assert secret2 not in listed.stdout
    assert srv.secret_key not in listed.stdout
    assert stat.S_IMODE((srv.data_dir / "credentials.json").stat().st_mode) == 0o600

    assert _keys(srv, "revoke", access2).returncode == 0
    assert _call(srv, token2) == (401, 30)  # from the very next request on
    assert _login(srv, access2, secret2).status_code == 401
    assert _call(srv, first) == (200, 0)  # the other pair's token lives on

    rotated = _keys(srv, "rotate")  # the only pair left
    assert rotated.returncode == 0, rotated.stderr
    access3, secret3 = _printed_pair(rotated.stdout)
    assert _call(srv, first) == (401, 30)
    assert _login(srv, srv.access_key, srv.secret_key).status_code == 401
    assert _call(srv, _token(srv, access3, secret3)) == (200, 0)

    last = _keys(srv, "revoke", access3)
    assert last.returncode == 9
    assert "only key pair" in last.stderr
    unknown = _keys(srv, "revoke", "NOSUCHKEY")
    assert unknown.returncode == 9
    assert "NOSUCHKEY" in unknown.stderr
    log = srv.log_path.read_text()
    for secret in (secret2, secret3):
        assert secret not in log


def test_token_lifetime_has_a_cap(make_embedded_server: Any) -> None:
    srv = make_embedded_server("lifetime", extra_args=["--token-lifetime-days", "0.5"])
    for asked in (None, 60, 30 * 24 * 3600):
        params = {} if asked is None else {"expiration_sec": asked}
        token = _login(srv, srv.access_key, srv.secret_key, **params).json()["data"]["token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 12 * 3600


def _raw_login(srv: Server, source: str, access: str, secret: str) -> tuple[int, str]:
    """auth.login from the loopback address ``source`` (127.x.y.z): status and Retry-After."""
    basic = base64.b64encode(f"{access}:{secret}".encode()).decode()
    with socket.create_connection(("127.0.0.1", srv.port), 30, (source, 0)) as sock:
        sock.sendall(
            f"GET /auth.login HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode()
    retry = [
        h.split(":", 1)[1].strip()
        for h in head.split("\r\n")
        if h.lower().startswith("retry-after:")
    ]
    return int(head.split()[1]), (retry[0] if retry else "")


def test_failed_sign_ins_slow_down_per_source(make_embedded_server: Any) -> None:
    srv = make_embedded_server("throttle")
    statuses = [_raw_login(srv, "127.0.0.2", srv.access_key, "wrong" * 8)[0] for _ in range(6)]
    assert statuses == [401] * 6
    status, retry_after = _raw_login(srv, "127.0.0.2", srv.access_key, srv.secret_key)
    assert status == 429  # even the right secret must wait
    assert int(retry_after) >= 1
    # another source is not slowed down, and the server answers everyone meanwhile
    assert _raw_login(srv, "127.0.0.3", srv.access_key, srv.secret_key)[0] == 200
    assert requests.get(f"{srv.url}/debug.ping", timeout=30).status_code == 200
    time.sleep(int(retry_after))  # the wait it was told
    assert _raw_login(srv, "127.0.0.2", srv.access_key, srv.secret_key)[0] == 200
    # a success forgets the failures: five more wrong tries are answered 401 again
    assert [_raw_login(srv, "127.0.0.2", "k", "s" * 40)[0] for _ in range(5)] == [401] * 5


def test_short_preset_secret_is_refused_at_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HPCAGENT_SERVER_ACCESS_KEY": "AKAKAKAKAKAKAKAKAKAK",
        "HPCAGENT_SERVER_SECRET_KEY": "s" * 31,
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run(
        hpcagent_argv("server", "--port", str(port), "--data-dir", str(tmp_path / "d")),
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    assert "31 characters; at least 32 are needed" in proc.stderr
    assert "s" * 31 not in proc.stderr + proc.stdout
    assert not (tmp_path / "d" / "credentials.json").exists()


def test_old_one_pair_key_file_still_signs_in(make_embedded_server: Any) -> None:
    srv = make_embedded_server("legacy", start=False, access_key="", secret_key="")
    srv.data_dir.mkdir(parents=True)
    srv.access_key, srv.secret_key = "LEGACYACCESSKEY00000", secrets.token_urlsafe(36)
    legacy = {"access_key": srv.access_key, "secret_key": srv.secret_key}
    (srv.data_dir / "credentials.json").write_text(json.dumps(legacy))
    access, secret = srv.access_key, srv.secret_key
    srv.access_key = srv.secret_key = ""  # start without preset keys: the file's pair is used
    srv.start()
    token = _token(srv, access, secret)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["identity"]["user"] == "hpcagent-legacyaccess"  # the owner of earlier tasks
    assert _call(srv, token) == (200, 0)


def test_web_ui_sign_in_is_throttled_per_browser_address(tmp_path: Path) -> None:
    """The UI's sign-in form goes through the same throttle, keyed by the browser's address."""
    from hpcagent.server.auth import Authenticator, prepare_keys
    from hpcagent.server.fields import ApiFault
    from hpcagent.server.ui.session import UiSessions

    keyfile, made = prepare_keys(tmp_path, "UIKEYUIKEYUIKEYUIKEY", "u" * 40)
    assert made is None  # preset: nothing generated, nothing to print
    sessions = UiSessions(Authenticator(keyfile, b"k" * 32))
    codes = []
    for _ in range(7):
        try:
            sessions.sign_in("UIKEYUIKEYUIKEYUIKEY", "wrong", "10.0.0.7")
            codes.append(200)
        except ApiFault as fault:
            codes.append(fault.code)
    assert codes == [401] * 6 + [429]
    assert sessions.sign_in("UIKEYUIKEYUIKEYUIKEY", "u" * 40, "10.0.0.8")  # another browser
