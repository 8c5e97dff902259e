"""The server's access/secret key pairs: ``DATA_DIR/credentials.json`` (mode 0600).

The file holds one or more pairs, each with its origin and creation time, and the user id that
every pair signs in as (stable across rotations, so tasks keep their owner)::

    {"user": "hpcagent-…", "keys": [{"access_key": …, "secret_key": …, "origin": "generated",
                                     "created": "2026-…"}]}

(the one-pair ``{"access_key", "secret_key"}`` file of earlier versions is read too).

* First start without preset keys: one pair is generated (origin ``generated``) and printed once.
* Preset keys (``--access-key/--secret-key`` or ``HPCAGENT_SERVER_ACCESS_KEY`` /
  ``HPCAGENT_SERVER_SECRET_KEY``): the secret needs :data:`MIN_SECRET_CHARS` characters; the pair
  replaces the generated and the previously preset pairs (pairs made by ``keys add``/``rotate``
  stay).
* ``hpcagent server keys add|rotate|revoke|list`` edit the file under a lock
  (``credentials.lock``); a running server notices the change on its next request
  (:class:`KeyFile.current`), so a revoked pair's tokens are refused from then on.

A pair's :attr:`KeyPair.key_id` (a hash of both halves) is written into every token it signs
in for; a token whose ``kid`` is no longer a stored pair's is refused (:mod:`hpcagent.server.auth`).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

#: The shortest secret accepted as a preset key (a generated one has 48).
MIN_SECRET_CHARS = 32
KEYS_FILE = "credentials.json"
ORIGINS = ("generated", "preset", "added")


class KeyFileError(ValueError):
    """A key-file operation refused (unknown key, last pair, short secret, bad file)."""


@dataclass(frozen=True)
class KeyPair:
    """One access/secret pair and where it came from."""

    access_key: str
    secret_key: str
    origin: str = "generated"
    created: str = ""

    @property
    def key_id(self) -> str:
        """What tokens signed in with this pair carry: changes with either half."""
        digest = hashlib.sha256(f"{self.access_key}\0{self.secret_key}".encode())
        return digest.hexdigest()[:24]

    def public(self) -> dict[str, str]:
        """The pair without its secret (for listings and logs)."""
        return {"access_key": self.access_key, "origin": self.origin, "created": self.created}


@dataclass(frozen=True)
class KeySet:
    """The stored pairs and the user id they sign in as."""

    user: str
    pairs: tuple[KeyPair, ...]

    def find(self, access_key: str) -> KeyPair | None:
        return next((p for p in self.pairs if p.access_key == access_key), None)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(p.key_id for p in self.pairs)


def new_pair(origin: str) -> KeyPair:
    """A fresh random pair (20-character access key, 48-character secret)."""
    return KeyPair(
        access_key=secrets.token_hex(10).upper(),
        secret_key=secrets.token_urlsafe(36),
        origin=origin,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def check_preset_secret(secret_key: str) -> None:
    """Refuse a preset secret shorter than :data:`MIN_SECRET_CHARS` characters."""
    if len(secret_key) < MIN_SECRET_CHARS:
        raise KeyFileError(
            f"the preset secret key has {len(secret_key)} characters; at least "
            f"{MIN_SECRET_CHARS} are needed (generate one with: python3 -c "
            "'import secrets; print(secrets.token_urlsafe(36))')"
        )


def write_private(path: Path, data: bytes) -> None:
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


class KeyFile:
    """``credentials.json`` of one data dir: read, edit under a lock, follow changes."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE
        self._lock_path = data_dir / "credentials.lock"
        self._seen: tuple[int, int, int] | None = None
        self._current: KeySet | None = None

    def read(self) -> KeySet | None:
        """The stored pairs, or None when there is no file yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
            return _parse(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"{self.path} is not a valid key file: {exc}") from exc

    def write(self, keys: KeySet) -> None:
        doc: dict[str, Any] = {
            "user": keys.user,
            "keys": [
                {
                    "access_key": p.access_key,
                    "secret_key": p.secret_key,
                    "origin": p.origin,
                    "created": p.created,
                }
                for p in keys.pairs
            ],
        }
        write_private(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the key file's lock (edits by the CLI and by a starting server exclude each
        other)."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def current(self) -> KeySet:
        """The stored pairs, re-read whenever the file changed (one ``stat`` per call), so a
        running server follows ``keys add/rotate/revoke`` from the next request on. A file that
        disappeared or cannot be read leaves no pair valid."""
        try:
            st = os.stat(self.path)
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            seen = None
        if seen != self._seen or self._current is None:
            try:
                keys = self.read() if seen is not None else None
            except KeyFileError:
                keys = None
            self._current = keys if keys is not None else KeySet("", ())
            self._seen = seen
        return self._current

    # ---- edits -------------------------------------------------------------------------------

    def ensure(self, access_key: str | None, secret_key: str | None) -> KeyPair | None:
        """At start: store the preset pair (replacing the generated and earlier preset pairs),
        or generate a first pair when there is none. Returns the pair generated now, if any."""
        with self.locked():
            keys = self.read()
            if access_key and secret_key:
                check_preset_secret(secret_key)
                preset = KeyPair(access_key, secret_key, "preset", _now())
                if keys is not None:
                    same = keys.find(access_key)
                    if same is not None and same.secret_key == secret_key:
                        return None  # unchanged: keep the file (and its created time)
                    kept = tuple(
                        p for p in keys.pairs if p.origin == "added" and p.access_key != access_key
                    )
                    self.write(replace(keys, pairs=(*kept, preset)))
                else:
                    self.write(KeySet(_user_of(access_key), (preset,)))
                return None
            if keys is not None and keys.pairs:
                return None
            pair = new_pair("generated")
            user = keys.user if keys is not None and keys.user else _user_of(pair.access_key)
            self.write(KeySet(user, (pair,)))
            return pair

    def add(self) -> KeyPair:
        """A new pair next to the others."""
        with self.locked():
            keys = self._existing()
            pair = new_pair("added")
            self.write(replace(keys, pairs=(*keys.pairs, pair)))
            return pair

    def rotate(self, access_key: str | None) -> tuple[KeyPair, KeyPair]:
        """Replace ``access_key``'s pair (or the only pair) by a new one; ``(old, new)``."""
        with self.locked():
            keys = self._existing()
            if access_key is None:
                if len(keys.pairs) != 1:
                    raise KeyFileError(
                        f"{len(keys.pairs)} key pairs are stored: name the access key to rotate"
                    )
                old = keys.pairs[0]
            else:
                old = self._pair(keys, access_key)
            pair = new_pair("added")
            pairs = tuple(pair if p is old else p for p in keys.pairs)
            self.write(replace(keys, pairs=pairs))
            return old, pair

    def revoke(self, access_key: str) -> KeyPair:
        """Remove ``access_key``'s pair; the last pair cannot be removed."""
        with self.locked():
            keys = self._existing()
            old = self._pair(keys, access_key)
            if len(keys.pairs) == 1:
                raise KeyFileError(
                    f"{access_key} is the only key pair: add another first (keys add), or "
                    "replace it (keys rotate)"
                )
            self.write(replace(keys, pairs=tuple(p for p in keys.pairs if p is not old)))
            return old

    def _existing(self) -> KeySet:
        keys = self.read()
        if keys is None or not keys.pairs:
            raise KeyFileError(
                f"no key pairs in {self.path}: start the server once (hpcagent server) first"
            )
        return keys

    @staticmethod
    def _pair(keys: KeySet, access_key: str) -> KeyPair:
        pair = keys.find(access_key)
        if pair is None:
            known = ", ".join(p.access_key for p in keys.pairs)
            raise KeyFileError(f"no key pair with access key {access_key!r} (stored: {known})")
        return pair


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _user_of(access_key: str) -> str:
    # The user id of earlier versions (derived from the one access key), kept so that a data
    # dir's tasks keep their owner across rotations.
    return "hpcagent-" + access_key.lower()[:12]


def _parse(data: Any) -> KeySet:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    if "keys" not in data:  # the one-pair file of earlier versions
        access, secret = str(data["access_key"]), str(data["secret_key"])
        return KeySet(_user_of(access), (KeyPair(access, secret, "generated", ""),))
    pairs = tuple(
        KeyPair(
            str(item["access_key"]),
            str(item["secret_key"]),
            str(item.get("origin") or "added"),
            str(item.get("created") or ""),
        )
        for item in data["keys"]
    )
    user = str(data.get("user") or (_user_of(pairs[0].access_key) if pairs else ""))
    return KeySet(user, pairs)
