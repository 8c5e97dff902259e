"""``hpcagent server --workers 2``: two real worker processes over one port and one database.

Which worker answers a new connection is the kernel's choice; to make a request reach a chosen
worker the test freezes the other one (SIGSTOP: it cannot accept, the running one takes the
connection) and thaws it after (SIGCONT). Every request of these tests opens a new connection.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from embedded import EmbeddedServer


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def _wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path / "data", extra_args=["--workers", "2"])
    srv.start()
    try:
        assert srv.proc is not None
        _wait_for(lambda: len(_children(srv.proc.pid)) == 2, "two workers")  # type: ignore[union-attr]
        yield srv
    finally:
        srv.stop()


def _workers(srv: EmbeddedServer) -> list[int]:
    assert srv.proc is not None
    return _children(srv.proc.pid)


@contextmanager
def _only(srv: EmbeddedServer, worker: int) -> Iterator[None]:
    """New connections go to ``worker``: every other worker is frozen meanwhile."""
    others = [pid for pid in _workers(srv) if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def _call(srv: EmbeddedServer, endpoint: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    reply = requests.post(
        f"{srv.url}/{endpoint}",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Connection": "close"},
        timeout=60,
    )
    assert reply.status_code == 200, (endpoint, reply.status_code, reply.text[:300])
    data: dict[str, Any] = reply.json()["data"]
    return data


def _token(srv: EmbeddedServer) -> str:
    reply = requests.get(
        f"{srv.url}/auth.login",
        auth=(srv.access_key, srv.secret_key),
        headers={"Connection": "close"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["token"])


def _ui_sign_in(srv: EmbeddedServer) -> str:
    """Sign in through the web UI's form; the session cookie."""
    form_page = requests.get(f"{srv.url}/login", headers={"Connection": "close"}, timeout=30)
    nonce = re.search(r'name="nonce" value="([^"]+)"', form_page.text)
    assert nonce is not None
    reply = requests.post(
        f"{srv.url}/login",
        data={"nonce": nonce.group(1), "next": "/tasks", "access_key": srv.access_key,
              "secret_key": srv.secret_key},
        cookies=form_page.cookies,
        headers={"Connection": "close"},
        allow_redirects=False,
        timeout=30,
    )  # fmt: skip
    assert reply.status_code == 303, reply.text[:300]
    return str(reply.cookies["clearml_token_basic"])


def _ui_get(srv: EmbeddedServer, path: str, session: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{srv.url}{path}",
        cookies={"clearml_token_basic": session},
        headers={"Connection": "close", **headers},
        allow_redirects=False,
        timeout=30,
    )


def test_every_entry_is_popped_exactly_once_across_two_workers(server: EmbeddedServer) -> None:
    """16 threads enqueue 200 tasks and 16 others pop them, each call on a new connection (so
    both workers serve both kinds); every task comes out exactly once, and a pop repeated
    with its pop id at the other worker answers the same entry and pops nothing."""
    token = _token(server)
    queue = _call(server, "queues.create", {"name": f"workers {uuid.uuid4().hex[:6]}"}, token)["id"]
    made: list[str] = []
    popped: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    enqueue_done = threading.Event()

    def submit(count: int) -> None:
        try:
            for i in range(count):
                body = {"name": f"pop «{i}» 'q'", "type": "training"}
                task = _call(server, "tasks.create", body, token)["id"]
                _call(server, "tasks.enqueue", {"task": task, "queue": queue}, token)
                with lock:
                    made.append(task)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def pop() -> None:
        try:
            while True:
                data = _call(server, "queues.get_next_task",
                             {"queue": queue, "pop_id": uuid.uuid4().hex}, token)  # fmt: skip
                if data:
                    with lock:
                        popped.append(data["entry"]["task"])
                elif enqueue_done.is_set():
                    return
        except BaseException as exc:
            errors.append(exc)

    submitters = [threading.Thread(target=submit, args=(25,)) for _ in range(8)]
    poppers = [threading.Thread(target=pop) for _ in range(16)]
    for thread in submitters + poppers:
        thread.start()
    for thread in submitters:
        thread.join()
    enqueue_done.set()
    for thread in poppers:
        thread.join()
    assert not errors, errors
    assert len(made) == 200
    counts = Counter(popped)
    assert sorted(counts) == sorted(made)
    assert set(counts.values()) == {1}, [t for t, n in counts.items() if n > 1]
    assert _call(server, "queues.get_num_entries", {"queue": queue}, token)["num"] == 0

    # A pop id at one worker, repeated at the other: the same entry, nothing more popped.
    first, second = _workers(server)
    for task in made[:2]:
        _call(server, "tasks.enqueue", {"task": task, "queue": queue}, token)
    pop_id = uuid.uuid4().hex
    with _only(server, first):
        entry = _call(server, "queues.get_next_task", {"queue": queue, "pop_id": pop_id}, token)
    with _only(server, second):
        again = _call(server, "queues.get_next_task", {"queue": queue, "pop_id": pop_id}, token)
    assert again == entry
    assert entry["entry"]["task"] == made[0]
    assert _call(server, "queues.get_num_entries", {"queue": queue}, token)["num"] == 1


def test_ui_session_sign_out_and_throttle_are_shared_by_the_workers(
    server: EmbeddedServer,
) -> None:
    first, second = _workers(server)
    with _only(server, first):
        session = _ui_sign_in(server)
        page = _ui_get(server, "/tasks", session)
        assert page.status_code == 200
        live = _ui_get(server, "/tasks", session, **{"X-Hpcagent-Live": "-"})
        live_token = live.headers["X-Hpcagent-Live"]
    token = _token(server)
    # A session cookie signed in at one worker is accepted by the other; a task made through
    # the first worker shows in the second's live poll (not a 204 "unchanged").
    with _only(server, first):
        name = f"made at worker one {uuid.uuid4().hex[:6]}"
        _call(server, "tasks.create", {"name": name, "type": "training"}, token)
    with _only(server, second):
        page = _ui_get(server, "/tasks", session)
        assert page.status_code == 200
        polled = _ui_get(server, "/tasks", session, **{"X-Hpcagent-Live": live_token})
        assert polled.status_code == 200
        assert name in polled.text
        # Sign out at the second worker ...
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match is not None
        csrf = match.group(1)
        out = requests.post(
            f"{server.url}/logout",
            data={"csrf": csrf},
            cookies={"clearml_token_basic": session},
            headers={"Connection": "close"},
            allow_redirects=False,
            timeout=30,
        )
        assert out.status_code == 303
    # ... and the first refuses the session from then on.
    with _only(server, first):
        refused = _ui_get(server, "/tasks", session)
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/login")
    # Failed sign-ins count at every worker: tries alternate between the two, and the first
    # 429 comes after the five free failures of all of them together (with a count per worker
    # it would take twelve tries).
    codes = []
    for i in range(12):
        with _only(server, (first, second)[i % 2]):
            bad = requests.get(f"{server.url}/auth.login", auth=(server.access_key, "wrong"),
                               headers={"Connection": "close"}, timeout=30)  # fmt: skip
        codes.append(bad.status_code)
        if bad.status_code == 429:
            break
    assert codes[:6] == [401] * 6, codes
    assert codes[-1] == 429, codes


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_all(server: EmbeddedServer) -> None:
    token = _token(server)
    task = _call(server, "tasks.create", {"name": "survives", "type": "training"}, token)["id"]
    first, second = _workers(server)
    os.kill(first, signal.SIGKILL)
    workers = _wait_for(
        lambda: w if len(w := _workers(server)) == 2 and first not in w else None,
        "a new worker in place of the killed one",
    )
    assert second in workers
    new = next(pid for pid in workers if pid != second)
    with _only(server, new):
        assert _call(server, "tasks.get_by_id", {"task": task}, token)["task"]["name"] == "survives"
    assert server.proc is not None
    parent = server.proc.pid
    assert server.stop() == 0
    for pid in [parent, *workers]:
        assert not Path(f"/proc/{pid}").exists()
    # Everything acknowledged is there after a restart, and the WAL was checkpointed.
    wal = server.data_dir / "server.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    server.start()
    assert _call(server, "tasks.get_by_id", {"task": task}, _token(server))["task"]["id"] == task


def test_sigterm_to_every_process_at_once_stops_cleanly(server: EmbeddedServer) -> None:
    """systemd's default KillMode signals the parent and the workers together: the workers
    finish, none is started again, the parent exits 0 and leaves no process behind."""
    token = _token(server)
    task = _call(server, "tasks.create", {"name": "kept", "type": "training"}, token)["id"]
    assert server.proc is not None
    proc = server.proc
    workers = _workers(server)
    for pid in [proc.pid, *workers]:
        os.kill(pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    server.proc = None
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()
    log = server.log_path.read_text()
    assert "starting it again" not in log, log[-2000:]
    server.start()
    assert _call(server, "tasks.get_by_id", {"task": task}, _token(server))["task"]["id"] == task


def test_a_file_uploaded_at_one_worker_is_served_and_deleted_at_the_other(
    server: EmbeddedServer,
) -> None:
    token = _token(server)
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    name = "proj/run ü.abc/artifacts/data/data.bin"
    payload = os.urandom(300_000)
    first, second = _workers(server)
    with _only(server, first):
        stored = requests.post(f"{server.url}/files", files={name: ("data.bin", payload)},
                               headers=headers, timeout=60)  # fmt: skip
        assert stored.status_code == 200, stored.text
    with _only(server, second):
        got = requests.get(f"{server.url}/files/{name}", headers=headers, timeout=60)
        assert got.status_code == 200
        assert got.content == payload
        gone = requests.delete(f"{server.url}/files/{name}", headers=headers, timeout=60)
        assert gone.status_code == 200
    with _only(server, first):
        missing = requests.get(f"{server.url}/files/{name}", headers=headers, timeout=60)
        assert missing.status_code == 404
