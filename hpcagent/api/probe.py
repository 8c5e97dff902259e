"""Checking a server before a config is written (``hpcagent init``), and what it is.

:func:`probe_server` logs in once with the key pair (``auth.login``, HTTP Basic) and tells
apart the two ways it can fail: the URL (nothing answers, or not a ClearML API server) and the
keys (the server refuses them). The token's claims say which API version the server follows and
whether it is hpcagent's embedded server.

:func:`derived_web_files` reproduces how the clearml SDK guesses the web and files servers from
the API URL (``api.`` host → ``app.``/``files.``; port 8008 → 8080/8081), so that ``init`` can
write them out, and knows when the SDK could not guess (then they must be given).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

from hpcagent.api.envelope import token_claims
from hpcagent.errors import ConfigError

EMBEDDED_BUILD = "hpcagent"  # the embedded server's ``server_build`` claim


@dataclass(frozen=True)
class ServerInfo:
    """What a successful login tells about the server."""

    api_version: str
    server_version: str
    embedded: bool


def probe_server(url: str, access_key: str, secret_key: str, timeout_s: float = 15.0) -> ServerInfo:
    """Log in to ``url`` with the key pair; :class:`ConfigError` says whether the URL or the
    keys failed."""
    import requests  # here: the client that imports this module uses http.client

    try:
        resp = requests.post(
            f"{url.rstrip('/')}/auth.login",
            json={},
            auth=(access_key, secret_key),
            timeout=(min(10.0, timeout_s), timeout_s),
        )
    except requests.RequestException as exc:
        raise ConfigError(
            f"API server URL failed: nothing answers at {url} ({type(exc).__name__})"
        ) from exc
    try:
        envelope = resp.json()
        meta = envelope["meta"]
        code = int(meta.get("result_code", resp.status_code))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"API server URL failed: {url} is not a ClearML API server (HTTP {resp.status_code})"
        ) from None
    if code == 401 or resp.status_code == 401:
        raise ConfigError(
            f"credentials failed: {url} refused the access key {access_key!r} or its secret key "
            f"({meta.get('result_msg') or 'unauthorized'})"
        )
    token = (envelope.get("data") or {}).get("token") if code == 200 else None
    if not isinstance(token, str) or not token:
        raise ConfigError(
            f"API server URL failed: {url} answered auth.login with {code} "
            f"{meta.get('result_msg') or ''}".rstrip()
        )
    claims = token_claims(token) or {}
    return ServerInfo(
        api_version=str(claims.get("api_version") or ""),
        server_version=str(claims.get("server_version") or ""),
        embedded=claims.get("server_build") == EMBEDDED_BUILD,
    )


def derived_web_files(api_server: str) -> tuple[str, str] | None:
    """``(web_server, files_server)`` as the SDK would guess them from ``api_server``, or None
    where it cannot (it then fails with "Could not detect ClearML web application server")."""
    parsed = urlparse(api_server.rstrip("/"))
    host = parsed.netloc
    if "://api." in api_server or host.startswith("api."):
        web = parsed._replace(netloc=host.replace("api.", "app.", 1))
        files = parsed._replace(netloc=host.replace("api.", "files.", 1))
    elif parsed.port == 8008:
        web = parsed._replace(netloc=host.replace(":8008", ":8080", 1))
        files = parsed._replace(netloc=host.replace(":8008", ":8081", 1))
    else:
        return None
    return urlunparse(web), urlunparse(files)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.26"`` → ``(2, 26)``; garbage → ``()`` (older than everything)."""
    parts: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)
