"""The files store of the embedded server: what ClearML's fileserver keeps, under the data dir.

ClearML's fileserver (clearml-server ``fileserver/fileserver.py``) lays files out by the path the
client names: ``POST /`` with a multipart body whose field name is the target path, ``GET
/<path>``, ``DELETE /<path>`` and ``POST /delete_many {files: [...]}``. The embedded server serves
the same layout under ``/files`` (so the SDK's ``files_server`` is ``http://HOST:PORT/files``)
and keeps the files in ``DATA_DIR/files``. The HTTP side lives in :mod:`files_http`; this module
holds the plain operations (also used by ``tasks.delete`` and ``models.delete`` cleanup and the
web UI).

Uploads are written to a temporary file in ``DATA_DIR/files/.incoming`` and renamed into place
when complete, so a reader never sees half a file and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

FILES_PREFIX = "/files"
INCOMING = ".incoming"
FREE_CHECK_EVERY = 64 * 1024 * 1024  # re-check free space after this many bytes of an upload


class FilesFault(Exception):
    """A files-server error reply: HTTP ``status`` with a plain-text ``message``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status} {message}")


@dataclass(frozen=True)
class FilesLimits:
    """``max_bytes``: largest single file (0 = no limit); ``min_free_bytes``: free space that an
    upload must leave on the data dir's filesystem; ``delete_delay_s``: grace period before the
    files of a deleted task or model are removed by the server (the SDK removes them first)."""

    max_bytes: int = 0
    min_free_bytes: int = 1024 * 1024 * 1024
    delete_delay_s: float = 60.0


def safe_relpath(name: str) -> str:
    """The normalised relative path of ``name``; 400 for empty, absolute-escaping or ``..``
    paths (the real server's ``safe_join`` refuses the same) and for our own ``.incoming``."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]
    if not parts or any(p == ".." for p in parts) or parts[0] == INCOMING or "\x00" in name:
        raise FilesFault(400, f"Invalid file path: {name!r}")
    return "/".join(parts)


class Upload:
    """One file being received: ``write`` chunks, then ``commit`` (rename into place) or
    ``abort``. Enforces the size limit and the free-space reserve while writing."""

    def __init__(self, store: FileStore, relpath: str) -> None:
        self.store = store
        self.relpath = relpath
        self.size = 0
        self._since_check = 0
        incoming = store.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        self.tmp = incoming / uuid.uuid4().hex
        self._handle: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes) -> None:
        if self._handle is None:
            return
        self.size += len(data)
        limit = self.store.limits.max_bytes
        if limit and self.size > limit:
            self.abort()
            raise FilesFault(413, f"File {self.relpath} is larger than the limit ({limit} bytes)")
        self._since_check += len(data)
        if self._since_check >= FREE_CHECK_EVERY:
            self._since_check = 0
            self.store.check_free(len(data))
        try:
            self._handle.write(data)
        except OSError as exc:
            self.abort()
            raise FilesFault(507, f"Cannot store {self.relpath}: {exc.strerror or exc}") from exc

    def commit(self) -> str:
        """Move the complete file to its path; returns the relative path."""
        if self._handle is None:
            raise FilesFault(400, f"Upload of {self.relpath} was aborted")
        self._handle.close()
        self._handle = None
        target = self.store.path_of(self.relpath)
        if target.is_dir():
            self.tmp.unlink(missing_ok=True)
            raise FilesFault(400, f"Invalid file path: {self.relpath} is a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, target)
        return self.relpath

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.tmp.unlink(missing_ok=True)


class FileStore:
    """Files under ``root`` (``DATA_DIR/files``), addressed by relative POSIX paths."""

    def __init__(self, root: Path, limits: FilesLimits | None = None) -> None:
        self.root = root
        self.limits = limits or FilesLimits()
        root.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads interrupted by a crash are garbage.
        shutil.rmtree(root / INCOMING, ignore_errors=True)

    def path_of(self, name: str) -> Path:
        """The file system path of ``name`` (validated by :func:`safe_relpath`)."""
        return self.root / safe_relpath(name)

    def check_free(self, incoming: int) -> None:
        """507 when storing ``incoming`` more bytes would leave less than the reserve free."""
        free = shutil.disk_usage(self.root).free
        if free - incoming < self.limits.min_free_bytes:
            raise FilesFault(
                507,
                f"Not enough free space on the files store ({free} bytes free, "
                f"{self.limits.min_free_bytes} must stay free)",
            )

    def check_announced(self, length: int | None) -> None:
        """Refuse an upload up front by its Content-Length (size limit, free space)."""
        if length is None:
            return
        limit = self.limits.max_bytes
        if limit and length > limit + 64 * 1024:  # the multipart framing adds a little
            raise FilesFault(413, f"Upload is larger than the limit ({limit} bytes)")
        self.check_free(length)

    def begin(self, name: str) -> Upload:
        return Upload(self, safe_relpath(name))

    def open_file(self, name: str) -> Path:
        """The path of an existing file; 404 when there is none (or it is a folder)."""
        path = self.path_of(name)
        if not path.is_file():
            raise FilesFault(404, f"File {name} not found")
        return path

    def delete(self, name: str) -> None:
        """Delete one file; 404 when it is not a file."""
        self.open_file(name).unlink()
        self._prune(self.path_of(name).parent)

    def delete_many(self, names: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Delete files or whole folders, like the real ``/delete_many``: ``(deleted, errors)``,
        ``deleted`` maps each given name to its path, ``errors`` maps a reason to names."""
        deleted: dict[str, str] = {}
        errors: dict[str, list[str]] = {}
        for given in names:
            path_str = unquote(given.replace("+", " "))
            try:
                path = self.path_of(path_str)
            except FilesFault:
                errors.setdefault("Invalid or empty path", []).append(given)
                continue
            if path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                errors.setdefault("Not found", []).append(given)
                continue
            self._prune(path.parent)
            deleted[given] = path_str
        return deleted, errors

    def _prune(self, folder: Path) -> None:
        """Remove empty folders up to the root (the real server leaves them; we keep it tidy)."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def relpath_of_url(self, url: str) -> str | None:
        """The stored path behind a files-server URL of this server (any host: the server
        cannot know every name it is reached by), or None for other URLs."""
        if not url:
            return None
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            return None
        path = unquote(parsed.path)
        if not path.startswith(FILES_PREFIX + "/"):
            return None
        try:
            return safe_relpath(path[len(FILES_PREFIX) + 1 :])
        except FilesFault:
            return None

    def delete_urls(self, urls: list[str]) -> list[str]:
        """Delete the files of those URLs that point into this store; returns the deleted URLs.
        Other URLs (another storage) are left alone."""
        done: list[str] = []
        for url in urls:
            rel = self.relpath_of_url(url)
            if rel is None:
                continue
            path = self.root / rel
            if path.is_file():
                path.unlink()
                self._prune(path.parent)
                done.append(url)
            elif path.is_dir():
                shutil.rmtree(path)
                self._prune(path.parent)
                done.append(url)
        return done
