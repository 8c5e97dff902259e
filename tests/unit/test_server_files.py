"""The files server of ``hpcagent server`` (``/files``), over real HTTP: ClearML fileserver
layout, Bearer authentication, streaming, size limit, free-space check, hostile paths."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests


def _auth(server: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token()}"}


def _upload(server: Any, path: str, data: bytes, **kwargs: Any) -> requests.Response:
    # the field name is the target path, as the SDK's HTTP driver sends it
    files = {path: (path, data, "application/octet-stream")}
    headers = kwargs.pop("headers", _auth(server))
    return requests.post(f"{server.url}/files", files=files, headers=headers, timeout=30)


def test_upload_download_delete_in_fileserver_layout(embedded_server: Any) -> None:
    srv = embedded_server
    name = "proj ä/task.abc/artifacts/x/data file.bin"
    payload = bytes(range(256)) * 100
    reply = _upload(srv, name, payload)
    assert reply.status_code == 200, reply.text
    assert reply.json() == [name]
    assert (srv.data_dir / "files" / name).read_bytes() == payload
    got = requests.get(f"{srv.url}/files/{name}", headers=_auth(srv), timeout=10)
    assert got.status_code == 200
    assert got.content == payload
    ranged = requests.get(
        f"{srv.url}/files/{name}", headers={**_auth(srv), "Range": "bytes=10-19"}, timeout=10
    )
    assert ranged.status_code == 206
    assert ranged.content == payload[10:20]
    gone = requests.delete(f"{srv.url}/files/{name}", headers=_auth(srv), timeout=10)
    assert gone.status_code == 200
    assert gone.json() == name
    assert not (srv.data_dir / "files" / "proj ä").exists()  # empty folders pruned
    again = requests.delete(f"{srv.url}/files/{name}", headers=_auth(srv), timeout=10)
    assert again.status_code == 404
    missing = requests.get(f"{srv.url}/files/{name}", headers=_auth(srv), timeout=10)
    assert missing.status_code == 404


def test_delete_many_files_and_folders(embedded_server: Any) -> None:
    srv = embedded_server
    for name in ("p/t/a.txt", "p/t/sub/b.txt", "p/other.txt"):
        assert _upload(srv, name, b"x").status_code == 200
    reply = requests.post(
        f"{srv.url}/files/delete_many",
        json={"files": ["p/t", "p/other.txt", "p/nothing", "../etc"]},
        headers=_auth(srv),
        timeout=10,
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["deleted"] == {"p/t": "p/t", "p/other.txt": "p/other.txt"}
    assert body["errors"] == {"Not found": ["p/nothing"], "Invalid or empty path": ["../etc"]}
    assert not (srv.data_dir / "files" / "p").exists()


def test_files_need_the_api_token(embedded_server: Any) -> None:
    srv = embedded_server
    assert _upload(srv, "a.txt", b"secret").status_code == 200
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
        url = f"{srv.url}/files/a.txt"
        assert requests.get(url, headers=headers, timeout=10).status_code == 401
        assert _upload(srv, "b.txt", b"x", headers=headers).status_code == 401
        assert requests.delete(url, headers=headers, timeout=10).status_code == 401
    assert not (srv.data_dir / "files" / "b.txt").exists()
    assert requests.get(f"{srv.url}/files", headers=_auth(srv), timeout=10).text == "OK"


def test_hostile_paths_are_refused(embedded_server: Any) -> None:
    srv = embedded_server
    for name in ("../escape.txt", "a/../../escape.txt", ".incoming/x", ""):
        reply = _upload(srv, name, b"x")
        assert reply.status_code in (200, 400), (name, reply.status_code)
        if name:
            assert reply.status_code == 400, name
    assert not (srv.data_dir / "escape.txt").exists()
    assert not (srv.data_dir.parent / "escape.txt").exists()
    bad = requests.get(f"{srv.url}/files/..%2Fserver.db", headers=_auth(srv), timeout=10)
    assert bad.status_code in (400, 404)
    assert b"SQLite" not in bad.content
    garbage = requests.post(
        f"{srv.url}/files",
        data=b"--b\r\nnot a multipart",
        headers={**_auth(srv), "Content-Type": "multipart/form-data; boundary=b"},
        timeout=10,
    )
    assert garbage.status_code == 400
    plain = requests.post(f"{srv.url}/files", data=b"x", headers=_auth(srv), timeout=10)
    assert plain.status_code == 400


def test_size_limit_and_free_space(make_embedded_server: Callable[..., Any]) -> None:
    small = make_embedded_server("small", extra_args=["--files-max-mb", "1"])
    assert _upload(small, "ok.bin", b"x" * 1000).status_code == 200
    big = _upload(small, "big.bin", b"x" * (2 * 1024 * 1024))
    assert big.status_code == 413
    assert not (small.data_dir / "files" / "big.bin").exists()
    assert list((small.data_dir / "files" / ".incoming").iterdir()) == []
    full = make_embedded_server("full", extra_args=["--files-min-free-mb", str(1 << 40)])
    reply = _upload(full, "a.bin", b"x" * 1000)
    assert reply.status_code == 507
    assert "free space" in reply.text


def test_upload_is_streamed_to_disk_while_it_arrives(embedded_server: Any) -> None:
    """The server writes the file while the body is still arriving (it never holds it whole):
    half-way through a chunked upload, the partial file on disk already holds most of what was
    sent. RSS-independent; the 2 GiB figure is benchmarks/files_bench.py."""
    srv = embedded_server
    incoming = srv.data_dir / "files" / ".incoming"
    chunk = b"z" * (1024 * 1024)
    seen: list[int] = []

    def body() -> Iterator[bytes]:
        boundary_head = (
            b'--bnd\r\nContent-Disposition: form-data; name="s/big.bin"; '
            b'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        yield boundary_head
        for i in range(24):
            yield chunk
            if i == 16:
                seen.append(_partial_size(incoming))
        yield b"\r\n--bnd--\r\n"

    reply = requests.post(
        f"{srv.url}/files",
        data=body(),
        headers={**_auth(srv), "Content-Type": "multipart/form-data; boundary=bnd"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert (srv.data_dir / "files" / "s" / "big.bin").stat().st_size == 24 * len(chunk)
    # 17 MiB sent by then; socket buffers hold a few MiB at most
    assert seen[0] >= 8 * len(chunk), seen


def _partial_size(incoming: Path) -> int:
    import time

    deadline = time.monotonic() + 10
    size = 0
    while time.monotonic() < deadline:
        files = list(incoming.iterdir()) if incoming.exists() else []
        size = max((f.stat().st_size for f in files), default=0)
        if size >= 8 * 1024 * 1024:
            return size
        time.sleep(0.05)
    return size
