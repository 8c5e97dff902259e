"""The URL a server announces: never a wildcard address that no client can use."""

from __future__ import annotations

import io
import socket

import pytest

from hpcagent.server.auth import Credentials
from hpcagent.server.runner import announce_credentials, public_url


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", ""])
def test_wildcard_bind_announces_the_machine_name(
    monkeypatch: pytest.MonkeyPatch, wildcard: str
) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "login1.cluster.example")
    assert public_url(wildcard, 8008) == "http://login1.cluster.example:8008"


def test_localhost_fqdn_falls_back_to_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "localhost.localdomain")
    monkeypatch.setattr(socket, "gethostname", lambda: "login1")
    assert public_url("0.0.0.0", 9000) == "http://login1:9000"


def test_a_named_host_is_kept_and_ipv6_bracketed() -> None:
    assert public_url("127.0.0.1", 8008) == "http://127.0.0.1:8008"
    assert public_url("server.lab", 8008) == "http://server.lab:8008"
    assert public_url("::1", 8008) == "http://[::1]:8008"


def test_announcement_says_how_compute_nodes_reach_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "login1.cluster.example")
    out = io.StringIO()
    url = public_url("0.0.0.0", 8008)
    announce_credentials(Credentials("AKEY", "S" * 40), url, out)
    text = out.getvalue()
    assert "0.0.0.0" not in text
    assert "api_server: http://login1.cluster.example:8008" in text
    assert "web_server: http://login1.cluster.example:8008" in text
    assert "Compute nodes must reach http://login1.cluster.example:8008" in text
    assert "docs/deploy.md" in text
