"""Credentials and tokens of the embedded server.

* ``credentials.json`` (mode 0600 in the data dir) holds the access/secret key pairs
  (:mod:`hpcagent.server.keys`: generated on first start, preset, or made by
  ``hpcagent server keys add|rotate``).
* ``jwt_secret`` (mode 0600) is the HS256 signing secret, so tokens survive restarts.
* ``auth.login`` with HTTP Basic auth issues a JWT carrying the claims the ClearML clients read
  (``api_version`` 2.23, ``feature_set`` basic, ``server_version``, ``identity``, ``exp``) and
  ``kid``, the key pair it signed in with: a token lives at most the configured lifetime (default
  :data:`DEFAULT_TOKEN_LIFETIME_S`) and dies with its pair (revoked, rotated, or replaced by
  other preset keys at a restart).
* Failed sign-ins slow down per source address (:class:`SignInThrottle`): after
  :data:`SignInThrottle.FREE_FAILURES` failures each further try waits twice as long, answered
  ``429`` at once meanwhile (the event loop never sleeps).
* Every other endpoint needs ``Authorization: Bearer <token>``; verified tokens are cached.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from hpcagent.server.fields import (
    INVALID_CREDENTIALS,
    INVALID_TOKEN,
    MISSING_CREDENTIALS,
    TOO_MANY_SIGN_INS,
    ApiFault,
)
from hpcagent.server.files import FILES_PREFIX
from hpcagent.server.keys import KeyFile, KeyPair, write_private
from hpcagent.server.shared import SharedState

API_VERSION = "2.23"
SERVER_VERSION = "1.17.0"
#: The longest a token lives unless ``--token-lifetime-days`` says otherwise: a few days, so a
#: token that leaked is useless soon (clients sign in again with their keys by themselves).
DEFAULT_TOKEN_LIFETIME_S = 3 * 24 * 3600
#: The shortest lifetime a client's ``expiration_sec`` gets (below the cap): clearml-agent
#: refreshes a token 12 h before it ends, so a shorter one would mean a login before every call.
MIN_TOKEN_LIFETIME_S = 24 * 3600
#: Extensions of the ClearML API this server has (claim ``hpcagent_features``): ``pop_id``,
#: a repeatable ``queues.get_next_task`` (routes/queues.py); ``update_if_status``, a
#: ``tasks.update`` made only in the listed statuses (routes/tasks.py).
FEATURES = ("pop_id", "update_if_status")
_CACHE_MAX = 4096

ENV_ACCESS_KEY = "HPCAGENT_SERVER_ACCESS_KEY"
ENV_SECRET_KEY = "HPCAGENT_SERVER_SECRET_KEY"  # noqa: S105 (a variable name)


@dataclass(frozen=True)
class Credentials:
    """An access/secret key pair to hand to a client; ``generated`` is True on the start that
    made it."""

    access_key: str
    secret_key: str
    generated: bool = False


def prepare_keys(
    data_dir: Path, access_key: str | None = None, secret_key: str | None = None
) -> tuple[KeyFile, Credentials | None]:
    """The data dir's key file after storing preset keys (arguments, else the environment) or
    generating a first pair; the second value is the pair generated now (to print once).
    A preset secret shorter than 32 characters raises :class:`~.keys.KeyFileError`."""
    keyfile = KeyFile(data_dir)
    access_key = access_key or os.environ.get(ENV_ACCESS_KEY) or None
    secret_key = secret_key or os.environ.get(ENV_SECRET_KEY) or None
    made = keyfile.ensure(access_key, secret_key)
    if made is None:
        return keyfile, None
    return keyfile, Credentials(made.access_key, made.secret_key, generated=True)


def load_or_create_jwt_secret(data_dir: Path) -> bytes:
    """The persisted HS256 signing secret (created with mode 0600 on first use)."""
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_bytes().strip()
    secret = secrets.token_hex(32).encode()
    write_private(path, secret)
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


def own_credentials(keys: KeyFile) -> Credentials:
    """A stored pair for the server's own children (``--services-agent``): the preset pair if
    there is one, else the first."""
    pairs = keys.current().pairs
    pair = next((p for p in pairs if p.origin == "preset"), pairs[0] if pairs else None)
    if pair is None:
        return Credentials("", "")
    return Credentials(pair.access_key, pair.secret_key)


class SignInThrottle:
    """Failed sign-ins per source address: after :attr:`FREE_FAILURES` failures the source
    must wait ``2 ** (n - FREE_FAILURES - 1)`` seconds (at most :attr:`MAX_DELAY_S`) before its
    next try is even checked; meanwhile every try is ``429`` at once. A success forgets the
    source; so does :attr:`FORGET_AFTER_S` without a failure. The counts live in
    :class:`~hpcagent.server.shared.SharedState`, so every worker process of a server sees the
    same ones."""

    FREE_FAILURES = 5
    MAX_DELAY_S = 300.0
    FORGET_AFTER_S = 3600.0
    MAX_SOURCES = 10_000

    def __init__(self, shared: SharedState) -> None:
        self._shared = shared

    def check(self, source: str, now: float) -> None:
        """``429`` while ``source`` must wait."""
        entry = self._shared.failures(source)
        if entry is None:
            return
        _, until, last = entry
        if now - last > self.FORGET_AFTER_S:
            self._shared.forget_failures(source)
        elif now < until:
            wait = math.ceil(until - now)
            raise ApiFault(
                TOO_MANY_SIGN_INS,
                f"Too many failed sign-ins from {source}: try again in {wait} s",
                {"retry_after": wait},
            )

    def failed(self, source: str, now: float) -> None:
        entry = self._shared.failures(source)
        failures = (entry[0] if entry is not None else 0) + 1
        extra = failures - self.FREE_FAILURES
        delay = min(2.0 ** (extra - 1), self.MAX_DELAY_S) if extra > 0 else 0.0
        self._shared.set_failures(source, failures, now + delay, now, self.MAX_SOURCES)

    def succeeded(self, source: str) -> None:
        # Read first: a sign-in without earlier failures (nearly all) writes nothing.
        if self._shared.failures(source) is not None:
            self._shared.forget_failures(source)


class Authenticator:
    """Checks Basic credentials against the key file, issues JWTs bound to the pair that signed
    in, and verifies Bearer tokens (with a cache; a token of a pair no longer stored fails)."""

    def __init__(
        self,
        keys: KeyFile,
        secret: bytes,
        *,
        token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
        shared: SharedState | None = None,
    ) -> None:
        self.keys = keys
        self._secret = secret
        self.token_lifetime_s = token_lifetime_s
        #: State the server's worker processes share (sign-in failures, signed-out sessions).
        self.shared = shared if shared is not None else SharedState()
        self.throttle = SignInThrottle(self.shared)
        self._cache: dict[str, tuple[float, str, dict[str, Any]]] = {}

    def login(self, authorization: str | None, expiration_sec: int | None, source: str = "") -> str:
        """Issue a token for Basic credentials (or re-issue for a valid Bearer token).

        ``source`` (the client's address) is throttled after failed tries: 429 at once."""
        if not authorization:
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials")
        now = time.time()
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            kid = self._verify(authorization)[0]
        elif scheme.lower() == "basic":
            self.throttle.check(source, now)
            try:
                pair = self._check_basic(value)
            except ApiFault:
                self.throttle.failed(source, now)
                raise
            self.throttle.succeeded(source)
            kid = pair.key_id
        else:
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials (unsupported scheme)")
        lifetime = self.token_lifetime_s
        if expiration_sec is not None and expiration_sec > 0:
            lifetime = min(max(MIN_TOKEN_LIFETIME_S, expiration_sec), self.token_lifetime_s)
        issued = int(now)
        claims = {
            "env": "hpcagent",
            "iat": issued,
            "exp": issued + lifetime,
            "kid": kid,
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

    def own_credentials(self) -> Credentials:
        """A stored pair for the server's own children (``--services-agent``)."""
        return own_credentials(self.keys)

    @property
    def user_id(self) -> str:
        """The user every key pair signs in as (stable across rotations)."""
        return self.keys.current().user or "hpcagent"

    def _check_basic(self, value: str) -> KeyPair:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiFault(INVALID_CREDENTIALS, "Invalid credentials") from exc
        key, _, secret = decoded.partition(":")
        found: KeyPair | None = None
        for pair in self.keys.current().pairs:  # compare with every pair: no early exit
            ok_key = hmac.compare_digest(key.encode(), pair.access_key.encode())
            ok_secret = hmac.compare_digest(secret.encode(), pair.secret_key.encode())
            if ok_key and ok_secret:
                found = pair
        if found is None:
            raise ApiFault(INVALID_CREDENTIALS, "Invalid credentials (unknown key or bad secret)")
        return found

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The identity of a valid ``Bearer`` header; 401/20 when missing, 401/30 when bad,
        expired, or signed in with a key pair that is no longer stored."""
        return self._verify(authorization)[1]

    def _verify(self, authorization: str | None) -> tuple[str, dict[str, Any]]:
        if not authorization:
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials (no Authorization header)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            if scheme.lower() == "basic":
                raise ApiFault(INVALID_TOKEN, "Invalid token: Bearer token required")
            raise ApiFault(MISSING_CREDENTIALS, "Missing credentials")
        token = token.strip()
        now = time.time()
        valid = self.keys.current().key_ids
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            if hit[1] not in valid:
                raise ApiFault(INVALID_TOKEN, "Invalid token: its key pair was revoked")
            return hit[1], hit[2]
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"])
        except jwt.ExpiredSignatureError as exc:
            raise ApiFault(INVALID_TOKEN, "Invalid token: expired") from exc
        except jwt.PyJWTError as exc:
            raise ApiFault(INVALID_TOKEN, "Invalid token") from exc
        identity = claims.get("identity")
        if not isinstance(identity, dict):
            raise ApiFault(INVALID_TOKEN, "Invalid token: no identity")
        kid = claims.get("kid")
        if not isinstance(kid, str) or kid not in valid:
            raise ApiFault(INVALID_TOKEN, "Invalid token: its key pair was revoked")
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (float(claims.get("exp", now + 3600)), kid, identity)
        return kid, identity
