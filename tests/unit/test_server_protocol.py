"""Wire protocol of the embedded server: envelope, methods, auth, errors, persistence."""

from __future__ import annotations

import base64
import json
import stat
from typing import Any

import jwt
import pytest
import requests

EmbeddedServer = Any  # the class lives in tests/conftest.py (fixtures hand it out)


def _meta(reply: requests.Response) -> dict[str, Any]:
    envelope = reply.json()
    assert set(envelope) == {"meta", "data"}
    meta: dict[str, Any] = envelope["meta"]
    assert meta["result_code"] == reply.status_code
    return meta


def test_envelope_shape_and_empty_data_is_object(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    queue = srv.send("queues.create", {"name": "proto-empty"})["id"]
    reply = srv.request("queues.get_next_task", {"queue": queue})
    envelope = reply.json()
    assert reply.status_code == 200
    assert envelope["data"] == {}
    meta = envelope["meta"]
    assert len(meta["id"]) == 32
    assert meta["trx"]
    assert meta["endpoint"]["name"] == "queues.get_next_task"
    assert meta["endpoint"]["requested_version"] == "2.23"
    assert meta["endpoint"]["actual_version"]
    assert (meta["result_subcode"], meta["result_msg"]) == (0, "OK")
    assert meta["error_stack"] is None
    assert meta["error_data"] == {}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_every_method_reads_the_body(embedded_server_session: EmbeddedServer, method: str) -> None:
    srv = embedded_server_session
    name = f"proto-method-{method.lower()}"
    reply = srv.request("projects.create", {"name": name, "method": "get"}, method=method)
    assert reply.status_code == 200, reply.text
    project_id = reply.json()["data"]["id"]
    assert len(project_id) == 32
    got = srv.request("projects.get_by_id", {"project": project_id}, method=method)
    assert got.json()["data"]["project"]["name"] == name


def test_version_prefix_and_query_string_merge(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    project_id = srv.send("projects.create", {"name": "proto-query"})["id"]
    reply = srv.request(f"v2.5/projects.get_by_id?project={project_id}", method="GET")
    assert reply.status_code == 200
    meta = _meta(reply)
    assert meta["endpoint"]["requested_version"] == "2.5"
    assert reply.json()["data"]["project"]["id"] == project_id


def test_unknown_endpoint_is_404_envelope(embedded_server_session: EmbeddedServer) -> None:
    reply = embedded_server_session.request("nosuch.thing", {})
    assert reply.status_code == 404
    meta = _meta(reply)
    assert meta["result_subcode"] == 0
    assert meta["endpoint"]["name"] == "nosuch.thing"
    assert reply.json()["data"] == {}
    assert embedded_server_session.request("not-an-endpoint", {}).status_code == 404


def test_malformed_json_is_400_12(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    reply = srv.request("tasks.create", data=b'{"name": "x",', headers={"Content-Type": "x"})
    assert reply.status_code == 400
    assert _meta(reply)["result_subcode"] == 12
    not_object = srv.request("tasks.create", data=b"[1, 2]")
    assert (not_object.status_code, _meta(not_object)["result_subcode"]) == (400, 12)


def test_wrong_type_names_the_field(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    reply = srv.request("tasks.create", {"name": 42})
    meta = _meta(reply)
    assert (reply.status_code, meta["result_subcode"]) == (400, 12)
    assert "'name'" in meta["result_msg"]
    task = srv.send("tasks.create", {"name": "proto-types", "type": "training"})["id"]
    reply = srv.request("tasks.edit", {"task": task, "script": "not-an-object"})
    assert reply.status_code == 400
    assert "'script'" in _meta(reply)["result_msg"]
    reply = srv.request("tasks.get_all", {"only_fields": [1, 2]})
    assert reply.status_code == 400
    assert "'only_fields'" in _meta(reply)["result_msg"]
    reply = srv.request("tasks.started", {"task": task, "force": "maybe"})
    assert "'force'" in _meta(reply)["result_msg"]


@pytest.mark.parametrize("endpoint", ["projects.get_all", "queues.get_all", "tasks.get_all"])
def test_invalid_name_regex_is_400_12(
    embedded_server_session: EmbeddedServer, endpoint: str
) -> None:
    reply = embedded_server_session.request(endpoint, {"name": "(unclosed"})
    meta = _meta(reply)
    assert (reply.status_code, meta["result_subcode"]) == (400, 12)
    assert "field 'name' is not a valid regex" in meta["result_msg"]
    assert meta["error_data"] == {"field": "name"}


def test_missing_required_field(embedded_server_session: EmbeddedServer) -> None:
    reply = embedded_server_session.request("tasks.get_by_id", {})
    meta = _meta(reply)
    assert (reply.status_code, meta["result_subcode"]) == (400, 12)
    assert "'task'" in meta["result_msg"]


def test_auth_login_token_claims(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    reply = requests.get(f"{srv.url}/auth.login", auth=(srv.access_key, srv.secret_key), timeout=10)
    assert reply.status_code == 200
    token = reply.json()["data"]["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["api_version"] == "2.23"
    assert claims["feature_set"] == "basic"
    assert claims["server_version"] == "1.17.0"
    assert {"user", "company", "role"} <= set(claims["identity"])
    assert claims["exp"] - claims["iat"] == 3 * 24 * 3600  # the default cap: days, not a year
    assert claims["kid"]  # bound to the key pair that signed in
    # the token works on a protected endpoint
    ok = requests.post(
        f"{srv.url}/projects.get_all",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert ok.status_code == 200


def test_auth_errors(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    missing = srv.request("tasks.get_all", {}, auth=False)
    assert (missing.status_code, _meta(missing)["result_subcode"]) == (401, 20)
    bad_token = srv.request(
        "tasks.get_all", {}, auth=False, headers={"Authorization": "Bearer not.a.jwt"}
    )
    assert (bad_token.status_code, _meta(bad_token)["result_subcode"]) == (401, 30)
    forged = jwt.encode({"identity": {"user": "x"}}, "wrong-secret-of-32-bytes-or-more!!", "HS256")
    forged_reply = srv.request(
        "tasks.get_all", {}, auth=False, headers={"Authorization": f"Bearer {forged}"}
    )
    assert (forged_reply.status_code, _meta(forged_reply)["result_subcode"]) == (401, 30)
    wrong = requests.get(f"{srv.url}/auth.login", auth=(srv.access_key, "nope"), timeout=10)
    assert (wrong.status_code, _meta(wrong)["result_subcode"]) == (401, 22)
    no_creds = requests.get(f"{srv.url}/auth.login", timeout=10)
    assert (no_creds.status_code, _meta(no_creds)["result_subcode"]) == (401, 20)
    garbage = requests.get(
        f"{srv.url}/auth.login", timeout=10, headers={"Authorization": "Basic !!!"}
    )
    assert garbage.status_code == 401


def test_body_over_limit_is_413(make_embedded_server: Any) -> None:
    srv = make_embedded_server("small", extra_args=["--max-body-mb", "0.01"])
    try:
        big = {"name": "x" * 20000}
        reply = srv.request("projects.create", big)
        assert reply.status_code == 413
        assert _meta(reply)["result_code"] == 413
        lines = b"\n".join(
            json.dumps({"task": "t" * 32, "type": "log", "msg": "y" * 100}).encode()
            for _ in range(200)
        )
        chunked = srv.request(
            "events.add_batch",
            data=iter([lines]),
            headers={"Content-Type": "application/json-lines"},
        )
        assert chunked.status_code == 413
        assert srv.request("projects.get_all", {}).status_code == 200
    finally:
        srv.stop()


def test_credentials_file_mode_and_generated_keys(make_embedded_server: Any) -> None:
    srv = make_embedded_server("gen", access_key="", secret_key="")
    try:
        creds_file = srv.data_dir / "credentials.json"
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((srv.data_dir / "jwt_secret").stat().st_mode) == 0o600
        (creds,) = json.loads(creds_file.read_text())["keys"]
        assert creds["origin"] == "generated"
        printed = srv.log_path.read_text()
        assert creds["secret_key"] in printed
        assert "api_server" in printed
        srv.access_key, srv.secret_key = creds["access_key"], creds["secret_key"]
        assert srv.send("projects.get_all", {})["projects"] == []
    finally:
        srv.stop()
    # second start: keys are reused and not printed again
    srv.log_path.write_text("")
    srv.start()
    try:
        assert creds["secret_key"] not in srv.log_path.read_text()
        basic = base64.b64encode(f"{srv.access_key}:{srv.secret_key}".encode()).decode()
        reply = requests.get(
            f"{srv.url}/auth.login", headers={"Authorization": f"Basic {basic}"}, timeout=10
        )
        assert reply.status_code == 200
    finally:
        srv.stop()


def test_sigterm_is_clean_and_data_survives_restart(embedded_server: EmbeddedServer) -> None:
    srv = embedded_server
    queue = srv.send("queues.create", {"name": "persist"})["id"]
    ids = [
        srv.send("tasks.create", {"name": f"persist-{i}", "type": "training"})["id"]
        for i in range(20)
    ]
    for task_id in ids:
        srv.send("tasks.enqueue", {"task": task_id, "queue": queue})
    token = srv.token()
    assert srv.stop() == 0
    srv.start()
    # a token issued before the restart is still valid (the signing secret is persisted)
    reply = srv.request(
        "queues.get_num_entries", {"queue": queue}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.json()["data"]["num"] == len(ids)
    popped = srv.send("queues.get_next_task", {"queue": queue})
    assert popped["entry"]["task"] == ids[0]


def test_client_mistakes_never_give_5xx(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    task = srv.send("tasks.create", {"name": "proto-5xx", "type": "training"})["id"]
    queue = srv.send("queues.create", {"name": "proto-5xx"})["id"]
    calls: list[tuple[str, Any]] = [
        ("tasks.get_all", {"id": [1, 2]}),
        ("tasks.get_all", {"name": "(unclosed"}),
        ("tasks.get_all", {"page_size": 2**70}),
        ("tasks.edit", {"task": task, "hyperparams": [1]}),
        ("tasks.enqueue", {"task": task, "queue": 12}),
        ("tasks.get_by_id", {"task": ["x"]}),
        ("tasks.edit_hyper_params", {"task": task, "hyperparams": [{"section": "a"}]}),
        ("queues.get_next_task", {"queue": None}),
        ("queues.add_task", {"queue": queue, "task": "nope"}),
        ("events.get_task_log", {"task": task, "from_timestamp": 2**80}),
        ("events.get_task_events", {"task": task, "metrics": "loss"}),
        ("workers.set_runtime_properties", {"worker": "w", "runtime_properties": [3]}),
        ("projects.create", {"name": ""}),
    ]
    for endpoint, body in calls:
        reply = srv.request(endpoint, body)
        assert 400 <= reply.status_code < 500, (endpoint, body, reply.text)
        assert reply.json()["meta"]["result_code"] == reply.status_code
    huge = srv.request(
        "events.add_batch",
        data=json.dumps(
            [
                {
                    "task": task,
                    "type": "training_stats_scalar",
                    "iter": 2**64 - 1,
                    "value": 1.0,
                    "timestamp": 2**64 - 1,
                    "metric": "m",
                    "variant": "v",
                }
            ]
        ).encode(),
    )
    assert huge.status_code == 200
    assert huge.json()["data"]["added"] == 1


def test_busy_port_is_a_clear_error(embedded_server_session: EmbeddedServer, tmp_path: Any) -> None:
    import subprocess
    import sys

    srv = embedded_server_session
    proc = subprocess.run(
        [sys.executable, "-m", "hpcagent.commands.server", "--port", str(srv.port),
         "--data-dir", str(tmp_path / "other"), "--access-key", "a", "--secret-key", "s" * 40],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "cannot listen" in proc.stderr
    assert srv.send("projects.get_all", {})["projects"] is not None  # first server unaffected


def test_sigterm_under_load_loses_no_acknowledged_write(embedded_server: EmbeddedServer) -> None:
    import threading
    import time

    srv = embedded_server
    token = srv.token()
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while not stop.is_set():
            try:
                reply = session.post(
                    f"{srv.url}/tasks.create", json={"name": "load", "type": "training"}, timeout=10
                )
            except requests.RequestException:
                return
            if reply.status_code != 200:
                return
            acknowledged.append(reply.json()["data"]["id"])

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stop() == 0
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acknowledged) >= 50
    srv.start()
    found = srv.send("tasks.get_all", {"id": acknowledged, "only_fields": ["id"]})["tasks"]
    assert {t["id"] for t in found} == set(acknowledged)


def test_auth_is_checked_before_the_body(embedded_server_session: EmbeddedServer) -> None:
    reply = embedded_server_session.request("tasks.create", data=b"{not json", auth=False)
    assert (reply.status_code, reply.json()["meta"]["result_subcode"]) == (401, 20)


def test_login_expiration_sec_is_clamped(embedded_server_session: EmbeddedServer) -> None:
    srv = embedded_server_session
    day = 24 * 3600
    # at least a day; never past the server's cap (3 days by default): 365 days gets 3
    for asked, least, most in (
        (60, day, day),
        (2 * day, 2 * day, 2 * day),
        (365 * day, 3 * day, 3 * day),
    ):
        reply = requests.get(
            f"{srv.url}/auth.login?expiration_sec={asked}",
            auth=(srv.access_key, srv.secret_key),
            timeout=10,
        )
        claims = jwt.decode(reply.json()["data"]["token"], options={"verify_signature": False})
        assert least <= claims["exp"] - claims["iat"] <= most
