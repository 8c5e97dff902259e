"""Credentials and tokens of the embedded server.

* ``credentials.json`` (mode 0600 in the data dir) holds the one access/secret key pair. It is
  generated on first start unless keys are preset (``--access-key/--secret-key`` or the
  ``HPCAGENT_SERVER_ACCESS_KEY``/``HPCAGENT_SERVER_SECRET_KEY`` environment), in which case the
  preset pair is used and stored.
* ``jwt_secret`` (mode 0600) is the HS256 signing secret, so tokens survive restarts.
* ``auth.login`` with HTTP Basic auth issues a JWT carrying the claims the ClearML clients read
  (``api_version`` 2.23, ``feature_set`` basic, ``server_version``, ``identity``, ``exp``).
* Every other endpoint needs ``Authorization: Bearer <token>``; verified tokens are cached.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson

from hpcagent.server.fields import (
    INVALID_CREDENTIALS,
    INVALID_TOKEN,
    MISSING_CREDENTIALS,
    ApiFault,
)
from hpcagent.server.files import FILES_PREFIX

API_VERSION = "2.23"
SERVER_VERSION = "1.17.0"
DEFAULT_TOKEN_LIFETIME_S = 30 * 24 * 3600
MIN_TOKEN_LIFETIME_S = 24 * 3600
MAX_TOKEN_LIFETIME_S = 365 * 24 * 3600
#: Extensions of the ClearML API this server has (claim ``hpcagent_features``): ``pop_id``,
#: a repeatable ``queues.get_next_task`` (routes/queues.py).
FEATURES = ("pop_id",)
_CACHE_MAX = 4096

ENV_ACCESS_KEY = "HPCAGENT_SERVER_ACCESS_KEY"
ENV_SECRET_KEY = "HPCAGENT_SERVER_SECRET_KEY"  # noqa: S105 (a variable name)


@dataclass(frozen=True)
class Credentials:
    """The server's access/secret key pair; ``generated`` is True on the start that made it."""

    access_key: str
    secret_key: str
    generated: bool = False


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (no window with looser bits)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_or_create_credentials(
    data_dir: Path, access_key: str | None = None, secret_key: str | None = None
) -> Credentials:
    """The key pair of this data dir: preset keys win (and are stored), else stored, else new."""
    path = data_dir / "credentials.json"
    access_key = access_key or os.environ.get(ENV_ACCESS_KEY) or None
    secret_key = secret_key or os.environ.get(ENV_SECRET_KEY) or None
    if access_key and secret_key:
        creds = Credentials(access_key, secret_key)
        stored = _read_credentials(path)
        if stored != creds:
            _write_private(path, orjson.dumps({"access_key": access_key, "secret_key": secret_key}))
        return creds
    stored = _read_credentials(path)
    if stored is not None:
        return stored
    creds = Credentials(
        access_key=secrets.token_hex(10).upper(),
        secret_key=secrets.token_urlsafe(36),
        generated=True,
    )
    _write_private(
        path, orjson.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key})
    )
    return creds


def _read_credentials(path: Path) -> Credentials | None:
    if not path.exists():
        return None
    data = orjson.loads(path.read_bytes())
    return Credentials(str(data["access_key"]), str(data["secret_key"]))


def load_or_create_jwt_secret(data_dir: Path) -> bytes:
    """The persisted HS256 signing secret (created with mode 0600 on first use)."""
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_bytes().strip()
    secret = secrets.token_hex(32).encode()
    _write_private(path, secret)
    return secret


def embedded_urls(api_server: str) -> tuple[str, str]:
    """``(web_server, files_server)`` of an embedded server reached at ``api_server``: the web
    UI is served at its root and the files under ``/files``. Written out explicitly because the
    SDK can guess them only for port 8008 or an ``api.`` host name."""
    base = api_server.rstrip("/")
    return base, base + FILES_PREFIX


def clearml_conf_snippet(api_server: str, creds: Credentials) -> str:
    """A clearml.conf ``api`` section pointing at this server (API, web and files URLs)."""
    web_server, files_server = embedded_urls(api_server)
    return (
        "api {\n"
        f"    api_server: {api_server}\n"
        f"    web_server: {web_server}\n"
        f"    files_server: {files_server}\n"
        "    credentials {\n"
        f'        access_key: "{creds.access_key}"\n'
        f'        secret_key: "{creds.secret_key}"\n'
        "    }\n"
        "}\n"
    )


class Authenticator:
    """Checks Basic credentials, issues JWTs and verifies Bearer tokens (with a cache)."""

    def __init__(self, creds: Credentials, secret: bytes) -> None:
        self.creds = creds
        self._secret = secret
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.user_id = "hpcagent-" + creds.access_key.lower()[:12]

    def login(self, authorization: str | None, expiration_sec: int | None) -> str:
        """Issue a token for Basic credentials (or re-issue for a valid Bearer token)."""
        if not authorization:
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            self.verify(authorization)
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ApiFault(INVALID_CREDENTIALS, "Invalid credentials") from exc
            key, _, secret = decoded.partition(":")
            ok_key = hmac.compare_digest(key.encode(), self.creds.access_key.encode())
            ok_secret = hmac.compare_digest(secret.encode(), self.creds.secret_key.encode())
            if not (ok_key and ok_secret):
                raise ApiFault(
                    INVALID_CREDENTIALS, "Invalid credentials (unknown key or bad secret)"
                )
        else:
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials (unsupported scheme)")
        lifetime = DEFAULT_TOKEN_LIFETIME_S
        if expiration_sec is not None and expiration_sec > 0:
            # Honour the request within [1 day, 1 year]: the agent refreshes a token 12 h
            # before exp, so anything shorter than a day would make it log in before every call.
            lifetime = max(MIN_TOKEN_LIFETIME_S, min(expiration_sec, MAX_TOKEN_LIFETIME_S))
        now = int(time.time())
        claims = {
            "env": "hpcagent",
            "iat": now,
            "exp": now + lifetime,
            "session_id": uuid.uuid4().hex,
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "server_build": "hpcagent",
            "feature_set": "basic",
            # hpcagent's extensions, for its own client (api/compat.py); others ignore it.
            "hpcagent_features": list(FEATURES),
            "identity": {
                "user": self.user_id,
                "company": "hpcagent",
                "role": "admin",
                "user_name": "hpcagent",
                "company_name": "hpcagent",
            },
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The identity of a valid ``Bearer`` header; 401/20 when missing, 401/30 when bad."""
        if not authorization:
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials (no Authorization header)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            if scheme.lower() == "basic":
                raise ApiFault(INVALID_TOKEN, "Invalid token: Bearer token required")
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials")
        token = token.strip()
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"])
        except jwt.ExpiredSignatureError as exc:
            raise ApiFault(INVALID_TOKEN, "Invalid token: expired") from exc
        except jwt.PyJWTError as exc:
            raise ApiFault(INVALID_TOKEN, "Invalid token") from exc
        identity = claims.get("identity")
        if not isinstance(identity, dict):
            raise ApiFault(INVALID_TOKEN, "Invalid token: no identity")
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (float(claims.get("exp", now + 3600)), identity)
        return identity
