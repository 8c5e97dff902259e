"""Fixtures of the CLI tests: ``cli`` runs ``hpcagent ARGS`` against the real embedded server,
``api`` is a client of the same server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Invoke, write_conf

from hpcagent.api import ApiClient
from hpcagent.cli import main_group, run


@pytest.fixture
def cli(
    embedded_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Invoke:
    for var in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    conf = write_conf(
        tmp_path / "clearml.conf",
        embedded_server.url,
        embedded_server.access_key,
        embedded_server.secret_key,
    )

    def invoke(*args: str, conf_file: Path = conf) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = run(main_group, ["--config-file", str(conf_file), *args])
        out, err = capsys.readouterr()
        return rc, out, err

    return invoke


@pytest.fixture
def api(embedded_server: Any) -> ApiClient:
    return ApiClient(
        embedded_server.url, embedded_server.access_key, embedded_server.secret_key, retries=2
    )


@pytest.fixture
def client(embedded_server: Any) -> Iterator[ApiClient]:
    """A client of the embedded server with the default retries, closed after the test."""
    c = ApiClient(embedded_server.url, embedded_server.access_key, embedded_server.secret_key)
    yield c
    c.close()


@pytest.fixture
def rig(tmp_path: Path, client: ApiClient, embedded_server: Any) -> Iterator[Any]:
    """A submitter test rig (tests/unit/test_submitter_loop.py ``Rig``) on the embedded server;
    its ledger is closed after the test."""
    from test_submitter_loop import Rig

    r = Rig(tmp_path, client, embedded_server)
    yield r
    r.ledger.close()
