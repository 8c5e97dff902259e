"""Shared pytest fixtures.

``embedded_server`` (function scope) and ``embedded_server_session`` (session scope) start a
REAL ``hpcagent server`` subprocess on a free port with a temporary data dir and preset keys.
They offer ``.url``, ``.access_key``, ``.secret_key``, ``.data_dir``, ``.stop()``, ``.start()``
(restart on the same port and data), plus ``.token()`` and ``.send(endpoint, body)`` helpers
that use plain ``requests``. ``ui_browser`` (session scope) is a real headless Chromium on
``embedded_server_session`` (tests/ui_browser.py), ``ui`` the same signed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from embedded import EmbeddedServer

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
