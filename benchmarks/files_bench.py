"""Benchmark of the embedded server's files server (``/files``): upload and download MB/s of one
big file, and the server's resident memory (RSS) while it streams.

Starts a real ``hpcagent server`` subprocess (fresh temporary data dir), writes a ``--size-mib``
file of random-ish bytes (not timed), then

* upload: ``POST /files`` with a multipart body streamed from disk in 1 MiB chunks (the SDK's
  HTTP driver sends the same framing; its ``MultipartEncoder`` also streams from the file);
  figure = size / wall time; the server's RSS is sampled every 50 ms (psutil) during it;
* download: ``GET /files/PATH`` streamed to a file; figure = size / wall time; the copy is
  compared with the source (size and SHA-256).

Prints the machine, the figures and the RSS before/peak/after, in MiB.

    .venv/bin/python benchmarks/files_bench.py [--size-mib 2048]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

ACCESS_KEY = "BENCHACCESSKEY"
SECRET_KEY = "bench-secret-key-0123456789abcdefghijklmnop"  # >= 32 characters
CHUNK = 1024 * 1024
MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_file(path: Path, size_mib: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with path.open("wb") as out:
        for i in range(size_mib):
            chunk = i.to_bytes(8, "little") + block[8:]
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _multipart(path: Path, name: str, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval_s`` until stopped; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=2048)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="files-bench-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HPCAGENT_SERVER_ACCESS_KEY=ACCESS_KEY,
               HPCAGENT_SERVER_SECRET_KEY=SECRET_KEY)  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "hpcagent.commands.server", "--port", str(port),
         "--data-dir", str(work / "data"), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/debug.ping", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        token = requests.get(f"{url}/auth.login", auth=(ACCESS_KEY, SECRET_KEY), timeout=10)
        auth = {"Authorization": f"Bearer {token.json()['data']['token']}"}
        source = work / "source.bin"
        expected = _make_file(source, args.size_mib)
        size = source.stat().st_size
        before = psutil.Process(server.pid).memory_info().rss

        sampler = RssSampler(server.pid)
        sampler.start()
        boundary = "benchboundary7d1a"
        start = time.perf_counter()
        reply = requests.post(
            f"{url}/files",
            data=_multipart(source, "bench/big.bin", boundary),
            headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=3600,
        )
        upload_s = time.perf_counter() - start
        peak = sampler.stop()
        reply.raise_for_status()
        after = psutil.Process(server.pid).memory_info().rss

        copy = work / "copy.bin"
        digest = hashlib.sha256()
        start = time.perf_counter()
        with requests.get(f"{url}/files/bench/big.bin", headers=auth, stream=True,
                          timeout=3600) as got, copy.open("wb") as out:  # fmt: skip
            got.raise_for_status()
            for chunk in got.iter_content(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        download_s = time.perf_counter() - start
        same = copy.stat().st_size == size and digest.hexdigest() == expected

        print(f"machine: nproc={os.cpu_count()} {platform.platform()} Python "
              f"{platform.python_version()}")  # fmt: skip
        print(f"file: {size / MIB:.0f} MiB")
        print(f"upload: {size / MIB / upload_s:.1f} MB/s ({upload_s:.1f} s)")
        print(f"download: {size / MIB / download_s:.1f} MB/s ({download_s:.1f} s), "
              f"identical: {same}")  # fmt: skip
        print(f"server RSS MiB: before {before / MIB:.1f}, peak during upload "
              f"{peak / MIB:.1f}, after {after / MIB:.1f}")  # fmt: skip
        if not same:
            raise SystemExit("download differs from the upload")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
