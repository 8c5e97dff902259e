"""The web UI never stalls the server (issue 14, item 3: blocking work leaves the event loop).

A page reads through the REST handlers (``Ui.call``); like every REST request they run in the
server's one database thread (``ServerApp.in_db``), one hop per read, and Jinja renders in a
worker thread. So while a page's read is in progress other clients' pings are answered at once,
and their pops run between the page's reads. Sign-ins (``auth.login``, the UI's form), which
may wait for the database's write lock, wait in a worker thread too.

The server runs in this process (uvicorn in a thread, real sockets, real HTTP clients) so that a
test can hold a handler with an Event at the one seam, the route table: the tests assert what
happened in which order, and from which thread the database was used, never how long anything
took.
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import uvicorn
from helpers import wait_for
from starlette.routing import Route

from hpcagent.server.app import DB_THREAD_PREFIX, Ctx, ServerApp
from hpcagent.server.runner import ServerOptions, prepare, uvicorn_config
from hpcagent.server.ui import ui_routes
from hpcagent.server.ui.session import LOGIN_COOKIE, SESSION_COOKIE, UiSessions

KEY = "UILOOPACCESSKEY01234"
SECRET = "uiloop-secret-key-0123456789abcdefghijklmnop"
HOLD_S = 120  # how long the held read waits for the test to let it go (a stalled loop never does)
Handler = Callable[[Ctx, dict[str, Any]], dict[str, Any]]


@dataclass
class Served:
    app: ServerApp
    url: str
    token: str

    def send(self, endpoint: str, body: Any = None, data: bytes | None = None) -> dict[str, Any]:
        reply = requests.post(
            f"{self.url}/{endpoint}",
            json=body if data is None else None,
            data=data,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=HOLD_S,
        )
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()["data"]
        return result

    def ui_sign_in(self, access_key: str, secret_key: str) -> requests.Response:
        """The UI's sign-in form, filled in and sent as a browser does (nonce cookie and all)."""
        with requests.Session() as browser:
            page = browser.get(f"{self.url}/login", timeout=HOLD_S)
            nonce = page.cookies.get(LOGIN_COOKIE) or ""
            form = {"nonce": nonce, "access_key": access_key, "secret_key": secret_key}
            return browser.post(f"{self.url}/login", data=form, timeout=HOLD_S)

    def ui(self, path: str, *, form: dict[str, Any] | None = None, **kw: Any) -> requests.Response:
        """A signed-in UI GET, or a POST of ``form`` with the session's CSRF token."""
        cookies = {SESSION_COOKIE: self.token}
        if form is None:
            return requests.get(
                f"{self.url}{path}", cookies=cookies, allow_redirects=False, timeout=HOLD_S, **kw
            )
        csrf = UiSessions.csrf_token(SimpleNamespace(cookies=cookies))  # type: ignore[arg-type]
        return requests.post(
            f"{self.url}{path}",
            data={**form, "csrf": csrf},
            cookies=cookies,
            allow_redirects=False,
            timeout=HOLD_S,
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The server application in uvicorn with the server's own settings (connection limits
    included), on a free loopback port, in a thread of this process."""
    options = ServerOptions(
        data_dir=tmp_path / "data", access_key=KEY, secret_key=SECRET, log_level="warning"
    )
    app, _ = prepare(options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn_config(app, options, cap=64))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60)
        basic = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
        token = app.auth.login(f"Basic {basic}", None)
        yield Served(app, f"http://127.0.0.1:{port}", token)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _recording(order: list[str], name: str, handler: Handler) -> Handler:
    def recorded(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        order.append(name)
        return handler(ctx, body)

    return recorded


def test_a_page_held_in_its_read_leaves_pings_and_pops_answered(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task table's first read is held (an Event in the handler, the one seam) while a
    second client pings and a third pops: the ping is answered while the read is still held,
    and the pop, sent during the hold, runs before the page's next read (FIFO in the database
    thread), so a long page never holds the database for its whole build."""
    app = served.app
    ids = [str(served.send("tasks.create", {"name": f"row {i}", "type": "training"})["id"])
           for i in range(3)]  # fmt: skip
    queue = str(served.send("queues.create", {"name": "held"})["id"])
    served.send("tasks.enqueue", {"task": ids[0], "queue": queue})

    order: list[str] = []
    entered, release, pop_waiting = threading.Event(), threading.Event(), threading.Event()
    real_get_all = app.routes["tasks.get_all"]

    def held_get_all(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        if not entered.is_set():  # the page's first read: held until the test lets it go
            order.append("page read starts")
            entered.set()
            order.append("page read ends" if release.wait(HOLD_S) else "page read never let go")
        return real_get_all(ctx, body)

    monkeypatch.setitem(app.routes, "tasks.get_all", held_get_all)
    for endpoint in ("queues.get_all", "projects.get_all", "queues.get_next_task"):
        monkeypatch.setitem(app.routes, endpoint, _recording(order, endpoint, app.routes[endpoint]))
    real_in_db = app.in_db

    async def spying_in_db(fn: Callable[..., Any], *args: Any) -> Any:
        # A REST request is in_db(_dispatch, request, endpoint, ...). The loop submits the pop to
        # the database thread within this same step, before it can resume the page.
        if len(args) > 1 and args[1] == "queues.get_next_task":
            pop_waiting.set()
        return await real_in_db(fn, *args)

    monkeypatch.setattr(app, "in_db", spying_in_db)

    with ThreadPoolExecutor(max_workers=2) as pool:
        page = pool.submit(served.ui, "/tasks")
        assert entered.wait(HOLD_S), "the page never read the tasks"
        ping = requests.post(f"{served.url}/debug.ping", json={}, timeout=HOLD_S)
        order.append("ping answered")
        pop = pool.submit(served.send, "queues.get_next_task", {"queue": queue})
        assert pop_waiting.wait(HOLD_S), "the pop never reached the database thread's queue"
        release.set()
        page_reply, popped = page.result(), pop.result()

    assert ping.status_code == 200
    assert order == [
        "page read starts",
        "ping answered",
        "page read ends",
        "queues.get_next_task",
        "queues.get_all",
        "projects.get_all",
    ]
    assert popped["entry"]["task"] == ids[0]
    assert page_reply.status_code == 200, page_reply.text
    assert all(f'data-task="{task}"' in page_reply.text for task in ids), page_reply.text[:2000]


class _DbThreadOnly:
    """The store's SQLite connection, noting every statement run from a thread other than the
    database thread (attributes such as ``total_changes`` are plain reads, allowed anywhere)."""

    def __init__(self, conn: sqlite3.Connection, misuse: list[str]) -> None:
        self._conn = conn
        self._misuse = misuse

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._conn, name)
        thread = threading.current_thread().name
        if callable(value) and not thread.startswith(DB_THREAD_PREFIX):
            self._misuse.append(f"conn.{name} from thread {thread!r}")
        return value


def _plant(served: Served) -> dict[str, str]:
    """Two tasks with parameters, console lines, scalars, a plot and a debug image; a queue with
    an entry; a worker with machine stats."""
    hyper = {"Args": {"lr": {"section": "Args", "name": "lr", "value": "0.5", "type": "float"}}}
    a, b = (
        str(served.send("tasks.create", {"name": name, "type": "training",
                                         "hyperparams": hyper})["id"])
        for name in ("first", "second")
    )  # fmt: skip
    now = int(time.time() * 1000)
    events: list[dict[str, Any]] = []
    for task in (a, b):
        events += [{"task": task, "type": "training_stats_scalar", "metric": "loss",
                    "variant": "train", "iter": i, "value": 1.0 / (i + 1), "timestamp": now + i}
                   for i in range(50)]  # fmt: skip
        events += [{"task": task, "type": "log", "msg": f"line {i}", "timestamp": now + i}
                   for i in range(20)]  # fmt: skip
    figure = json.dumps({"data": [{"type": "bar", "x": ["x"], "y": [1]}]})
    events.append({"task": a, "type": "plot", "metric": "p", "variant": "v", "iter": 0,
                   "plot_str": figure, "timestamp": now})  # fmt: skip
    events.append({"task": a, "type": "training_debug_image", "metric": "img", "variant": "v",
                   "iter": 0, "url": "http://127.0.0.1/none.png", "timestamp": now})  # fmt: skip
    served.send("events.add_batch", data=b"\n".join(json.dumps(ev).encode() for ev in events))
    queue = str(served.send("queues.create", {"name": "guarded"})["id"])
    served.send("tasks.enqueue", {"task": b, "queue": queue})
    worker = "node1:guarded-worker"
    served.send("workers.register", {"worker": worker, "queues": [queue]})
    stats = {"cpu_usage": [12.5], "memory_used": 2048}
    served.send("workers.status_report",
                {"worker": worker, "timestamp": now, "machine_stats": stats})  # fmt: skip
    return {"a": a, "b": b, "queue": queue, "worker": worker}


def test_every_ui_route_uses_the_database_only_from_the_database_thread(
    served: Served,
) -> None:
    """Every page, data read and action of the UI, with the store's connection replaced by one
    that notes any statement run outside the database thread: none is (before, the UI's reads
    and writes ran on the event loop). Each route of ``ui_routes`` is visited at least once."""
    ids = _plant(served)
    a, b, queue, worker = ids["a"], ids["b"], ids["queue"], ids["worker"]
    misuse: list[str] = []
    served.app.store.conn = _DbThreadOnly(served.app.store.conn, misuse)  # type: ignore[assignment]
    visited: set[tuple[str, str]] = set()

    def get(route: str, path: str, **kw: Any) -> requests.Response:
        reply = served.ui(path, **kw)
        assert reply.status_code in (200, 204, 303), (path, reply.status_code, reply.text[:500])
        visited.add(("GET", route))
        return reply

    def post(route: str, path: str, **form: Any) -> requests.Response:
        reply = served.ui(path, form=form)
        assert reply.status_code == 303, (path, reply.status_code, reply.text[:500])
        visited.add(("POST", route))
        return reply

    for page in ("/home", "/queues", "/workers", "/projects", "/tasks"):
        get(page, page)
    get("/tasks", "/tasks", headers={"X-Hpcagent-Live": "-"})  # live.js's poll
    for tab in ("info", "execution", "configuration", "console", "artifacts"):
        get("/tasks/{task_id:str}", f"/tasks/{a}?tab={tab}")
    get("/tasks/{task_id:str}/edit", f"/tasks/{a}/edit")
    assert "line 19" in get("/tasks/{task_id:str}/console.txt", f"/tasks/{a}/console.txt").text
    get("/compare", f"/compare?ids={a},{b}")
    assert "loss" in get("/data/compare/scalars", f"/data/compare/scalars?ids={a},{b}").json()
    get("/data/tasks/{task_id:str}/console", f"/data/tasks/{a}/console")
    assert "loss" in get("/data/tasks/{task_id:str}/scalars", f"/data/tasks/{a}/scalars").json()
    for kind in ("plot", "debug"):
        events = get("/data/tasks/{task_id:str}/events", f"/data/tasks/{a}/events?kind={kind}")
        assert events.json()["events"], kind
        if kind == "plot":  # parsed (in a worker thread) into the figure the page draws
            assert events.json()["events"][0]["figure"]["data"][0]["type"] == "bar"
    stats = get("/data/worker-stats", f"/data/worker-stats?worker={worker}").json()
    assert worker in stats["workers"]

    post("/queues/{queue_id:str}/entry", f"/queues/{queue}/entry", op="top", task=b)
    for action in ("dequeue", "archive", "unarchive", "reset", "enqueue", "abort"):
        post("/tasks/{task_id:str}/action", f"/tasks/{b}/action", action=action, queue=queue)
    clone = post("/tasks/{task_id:str}/clone", f"/tasks/{a}/clone", name="copy")
    copy = clone.headers["location"].split("/")[2]
    edited = {
        "name": "copy, edited",
        "hp.0.section": "Args",
        "hp.0.name": "lr",
        "hp.0.value": "0.7",
    }
    post("/tasks/{task_id:str}/edit", f"/tasks/{copy}/edit", **edited)
    task = served.send("tasks.get_by_id", {"task": copy})["task"]
    assert task["hyperparams"]["Args"]["lr"]["value"] == "0.7"
    post("/tasks/bulk", "/tasks/bulk", action="delete", ids=copy, next="/tasks")
    created = post("/queues/create", "/queues/create", name="made in the UI")
    made = created.headers["location"].split("#queue-")[1]
    post("/queues/{queue_id:str}/delete", f"/queues/{made}/delete", force="1")

    assert misuse == []
    # Routes that never touch the database: the sign-in form and its post, the sign-out, the
    # static files and the SDK's results-page link (a redirect).
    sdk_link = "/projects/{project_id:str}/experiments/{task_id:str}{rest:path}"
    no_database = {("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"),
                   ("GET", "/static/{name:str}"), ("GET", sdk_link)}  # fmt: skip
    routes = {(method, route.path) for route in ui_routes(served.app) if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"}  # fmt: skip
    assert routes - no_database - visited == set()


def test_sign_ins_wait_for_the_database_off_the_loop(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong sign-in writes the shared sign-in state (its failures, per source) in the
    store's database file, so it may wait for a write transaction of the database thread. It
    waits in a worker thread: while a write transaction is held open (an Event in a writing
    handler), a wrong ``auth.login`` and a wrong sign-in on the UI's form wait for it, a ping is
    answered, and both then answer 401. (Before, the sign-in waited on the event loop, which
    stood still until SQLite gave up, and answered 500 "database is locked".)"""
    app = served.app
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()
    real_create = app.routes["tasks.create"]

    def held_create(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        with ctx.store.write():  # the handler's own transaction joins this one
            order.append("write transaction open")
            holding.set()
            order.append("write transaction ends" if release.wait(HOLD_S) else "never let go")
            return real_create(ctx, body)

    monkeypatch.setitem(app.routes, "tasks.create", held_create)
    writers = threading.Semaphore(0)
    real_set = app.auth.shared.set_failures

    def counting_set(*args: Any) -> None:
        writers.release()  # this sign-in's write is about to wait for the database
        real_set(*args)

    monkeypatch.setattr(app.auth.shared, "set_failures", counting_set)
    wrong = (KEY, "wrong-" + SECRET)
    with ThreadPoolExecutor(max_workers=3) as pool:
        create = pool.submit(served.send, "tasks.create", {"name": "held", "type": "training"})
        assert holding.wait(HOLD_S), "the write transaction never started"
        login = pool.submit(requests.get, f"{served.url}/auth.login", auth=wrong, timeout=HOLD_S)
        form = pool.submit(served.ui_sign_in, *wrong)
        # One of them is waiting to write (the other waits for it: SharedState's lock).
        assert writers.acquire(timeout=HOLD_S), "no wrong sign-in got to record its failure"
        ping = requests.post(f"{served.url}/debug.ping", json={}, timeout=HOLD_S)
        order.append("ping answered")
        release.set()
        login_reply, form_reply, _ = login.result(), form.result(), create.result()
    assert ping.status_code == 200
    assert order == ["write transaction open", "ping answered", "write transaction ends"]
    assert login_reply.status_code == 401, login_reply.text
    assert form_reply.status_code == 401, form_reply.text[:500]
    assert "Unknown access key or wrong secret key" in form_reply.text
