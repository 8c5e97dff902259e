"""HTTP side of the files server (``/files``), as the ClearML SDK's HTTP storage driver uses it.

* ``GET /files`` → ``OK`` (the real fileserver's ping).
* ``POST /files`` → multipart body; each part's field name is the target path (the SDK sends
  ``project/task.ID/artifacts/NAME/FILE``). Reply: a JSON list of the stored paths. The body is
  parsed as it arrives and written straight to disk (no file is held in memory).
* ``GET|HEAD /files/PATH`` → the file (Range requests work; streamed from disk).
* ``DELETE /files/PATH`` → ``"PATH"``; 404 when there is no such file.
* ``POST /files/delete_many {"files": [...]}`` → ``{"deleted": {...}, "errors": {...}}``.

Authentication: the SDK sends ``Authorization: Bearer <token>`` (its API session token) to every
URL under its configured ``files_server``; the real fileserver with ``auth.enabled`` validates
that token, and so do we, always. Errors are plain text, as the real fileserver's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from hpcagent.server.fields import ApiFault
from hpcagent.server.files import FILES_PREFIX, FilesFault, FileStore, Upload

if TYPE_CHECKING:
    from hpcagent.server.auth import Authenticator

log = logging.getLogger("hpcagent.server.files")

TOKEN_COOKIE = "clearml_token_basic"  # noqa: S105 - the ClearML web UI's cookie, accepted like the header


def _json(value: Any) -> Response:
    return Response(orjson.dumps(value), media_type="application/json")


class _PartCollector:
    """python-multipart callbacks that stream each file part into an :class:`Upload`."""

    def __init__(self, files: FileStore) -> None:
        self.files = files
        self.stored: list[str] = []
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self.current: Upload | None = None

    def on_part_begin(self) -> None:
        self._headers = {}
        self.current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = b""
        self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:  # the real server skips nameless parts
            return
        self.current = self.files.begin(name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.write(data[start:end])

    def on_part_end(self) -> None:
        if self.current is not None:
            self.stored.append(self.current.commit())
            self.current = None

    def callbacks(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in (
                "on_part_begin",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
                "on_part_data",
                "on_part_end",
            )
        }


class FilesHttp:
    """The ``/files`` routes around a :class:`FileStore` and the server's authenticator."""

    def __init__(self, files: FileStore, auth: Authenticator) -> None:
        self.files = files
        self.auth = auth

    def routes(self) -> list[BaseRoute]:
        return [
            Route(FILES_PREFIX, self._root, methods=["GET", "POST"]),
            Route(FILES_PREFIX + "/", self._root, methods=["GET", "POST"]),
            Route(FILES_PREFIX + "/delete_many", self._delete_many, methods=["POST"]),
            Route(FILES_PREFIX + "/{path:path}", self._file, methods=["GET", "HEAD", "DELETE"]),
        ]

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if not header and request.cookies.get(TOKEN_COOKIE):
            header = "Bearer " + request.cookies[TOKEN_COOKIE]
        try:
            self.auth.verify(header)
        except ApiFault as fault:
            raise FilesFault(401, fault.message) from fault

    async def _root(self, request: Request) -> Response:
        try:
            self._authenticate(request)
            if request.method == "GET":
                return PlainTextResponse("OK")
            return _json(await self._upload(request))
        except FilesFault as fault:
            return PlainTextResponse(fault.message, status_code=fault.status)

    async def _upload(self, request: Request) -> list[str]:
        if request.headers.get("content-encoding"):
            raise FilesFault(415, "Content encoding is not supported")
        ctype, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise FilesFault(400, "Expected a multipart/form-data body")
        length = request.headers.get("content-length")
        self.files.check_announced(int(length) if length and length.isdigit() else None)
        collector = _PartCollector(self.files)
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        try:
            # Parsing writes the file: in a worker thread, so a slow disk never holds the loop.
            async for chunk in request.stream():
                await run_in_threadpool(parser.write, chunk)
            await run_in_threadpool(parser.finalize)
        except FilesFault:
            raise
        except ClientDisconnect as exc:  # a client that died mid-upload: one line, no trace
            part = collector.current.relpath if collector.current is not None else "-"
            log.info("upload aborted (the client went away) in %s; nothing stored of it", part)
            raise FilesFault(400, "Upload aborted") from exc
        except Exception as exc:  # a malformed body: the parser's own error
            raise FilesFault(400, f"Malformed multipart body: {exc}") from exc
        finally:
            if collector.current is not None:  # body ended inside a part
                collector.current.abort()
        log.info("stored %d file(s)", len(collector.stored))
        return collector.stored

    async def _file(self, request: Request) -> Response:
        path = request.path_params["path"]
        try:
            self._authenticate(request)
            if request.method == "DELETE":
                await run_in_threadpool(self.files.delete, path)
                return _json(path)
            return FileResponse(await run_in_threadpool(self.files.open_file, path))
        except FilesFault as fault:
            return PlainTextResponse(fault.message, status_code=fault.status)

    async def _delete_many(self, request: Request) -> Response:
        try:
            self._authenticate(request)
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                raise FilesFault(400, "Json payload is missing") from None
            files = body.get("files") if isinstance(body, dict) else None
            if not files or not isinstance(files, list):
                raise FilesFault(400, "files are missing")
            if not all(isinstance(f, str) for f in files):
                raise FilesFault(400, "files must be strings")
            deleted, errors = await run_in_threadpool(self.files.delete_many, files)
            return _json({"deleted": deleted, "errors": errors})
        except FilesFault as fault:
            return PlainTextResponse(fault.message, status_code=fault.status)
