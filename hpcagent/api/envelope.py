"""The ClearML API's wire format, without I/O: the reply envelope, json-lines bodies, tokens.

* :func:`parse_envelope`: a reply ``{"meta": {...}, "data": {...}}`` gives ``data`` (``{}``
  for ``null``) or raises :class:`~hpcagent.errors.ApiError` (:class:`~hpcagent.errors.AuthError`
  for 401) built from ``meta``; a body that is no envelope is an ApiError naming the status.
* :func:`error_envelope`: whether an HTTP 500 carries an envelope (the server answered).
* :func:`split_lines`: json-lines request bodies of at most a given size, in order.
* :func:`token_claims`: a JWT's claims, read without verifying its signature.
* :func:`token_refresh_time`: when the client renews its JWT.

:mod:`hpcagent.api.client` sends and retries; everything here is a pure function of its input.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from hpcagent.errors import ApiError, AuthError

if TYPE_CHECKING:
    from hpcagent.api.transport import Reply

#: Renew the token when it has less than this left (the agent's threshold), but never later than
#: half-way through its lifetime, so that short-lived tokens do not cause a login per call.
TOKEN_REFRESH_THRESHOLD_S = 12 * 3600.0


def error_envelope(resp: Reply | None) -> bool:
    """An HTTP 500 that carries a ClearML error envelope (the server answered)."""
    if resp is None or resp.status_code != 500:
        return False
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("meta"), dict)


def token_claims(token: str) -> dict[str, Any] | None:
    """The claims (payload) of a JWT, read without verifying its signature (a client cannot,
    and needs only the claims); None when ``token`` is no JWT with a JSON object payload.

    Decoded here rather than with PyJWT: importing it (and the ``cryptography`` it loads) cost
    every short-lived process, such as ``hpcagent execute`` in each job, about 0.1 s of CPU.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def token_refresh_time(token: str, now: float | None = None) -> float:
    """When to renew ``token``: ``exp`` minus the threshold, at most half-way through its life.

    The token is decoded without verifying its signature (the client cannot, and needs only the
    claims). A token without ``exp`` never needs renewal; one that cannot be decoded is renewed
    after an hour.
    """
    now = time.time() if now is None else now
    claims = token_claims(token)
    if claims is None:
        return now + 3600.0
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)):
        return float("inf")
    iat = claims.get("iat")
    threshold = TOKEN_REFRESH_THRESHOLD_S
    if isinstance(iat, (int, float)) and exp > iat:
        threshold = min(threshold, (exp - iat) / 2)
    return float(exp) - threshold


def parse_envelope(endpoint: str, resp: Reply) -> dict[str, Any]:
    """Return the ``data`` dict of a ClearML reply, or raise ApiError/AuthError from ``meta``."""
    status = resp.status_code
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        doc = None
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(meta, dict):
        snippet = resp.text[:200].strip().replace("\n", " ")
        cls = AuthError if status == 401 else ApiError
        raise cls(endpoint, status, 0, f"not a ClearML API reply (HTTP {status}): {snippet}")
    code = meta.get("result_code", status)
    code = code if isinstance(code, int) else status
    if code != 200 or status >= 400:
        code = status if status >= 400 else code
        subcode = meta.get("result_subcode") or 0
        message = str(meta.get("result_msg") or "")
        err_data = doc.get("data") if isinstance(doc.get("data"), dict) else None
        cls = AuthError if code == 401 else ApiError
        raise cls(endpoint, code, int(subcode), message, err_data)
    data = doc.get("data")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ApiError(endpoint, status, 0, f"reply data is a {type(data).__name__}, not an object")
    return data


def split_lines(lines: Iterable[bytes], max_bytes: int) -> Iterable[bytes]:
    """Group serialized JSON ``lines`` into newline-joined bodies of at most ``max_bytes``.

    Order is kept. A single line longer than ``max_bytes`` forms a body of its own.
    """
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        extra = len(line) + (1 if chunk else 0)
        if chunk and size + extra > max_bytes:
            yield b"\n".join(chunk)
            chunk, size = [], 0
            extra = len(line)
        chunk.append(line)
        size += extra
    if chunk:
        yield b"\n".join(chunk)
