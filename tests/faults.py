"""Faults between a client and a real server, for tests: :class:`LossyProxy`.

A reverse HTTP proxy on 127.0.0.1 that forwards every request to the server as it came, and
can lose the reply of chosen calls after the server handled them: the client's connection is
closed without an answer (``mode="drop"``: the client sees the connection end) or held until
the client gives up (``mode="hold"``: the client's read timeout). The server did the work
either way, which is what makes a blind retry of a pop take a second entry.
"""

from __future__ import annotations

import http.server
import threading
import time
from typing import Any

import requests

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class LossyProxy:
    """``LossyProxy(server_url)``; ``.url`` for the client; ``lose("queues.get_next_task", 2)``
    loses the next two replies of that call; ``.seen[endpoint]`` counts the requests that
    reached the server through it, ``.lost`` the replies it lost."""

    def __init__(self, target: str, mode: str = "drop", hold_s: float = 5.0) -> None:
        self.target = target.rstrip("/")
        self.mode = mode
        self.hold_s = hold_s
        self.seen: dict[str, int] = {}
        self.lost: list[str] = []
        self._to_lose: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                proxy.handle(self)

            do_GET = do_POST

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lose(self, endpoint: str, count: int = 1) -> None:
        with self._lock:
            self._to_lose[endpoint] = self._to_lose.get(endpoint, 0) + count

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        endpoint = h.path.rsplit("/", 1)[-1].split("?")[0]
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_HEADERS}
        resp = requests.request(
            h.command, self.target + h.path, data=body, headers=headers, timeout=60
        )
        with self._lock:
            self.seen[endpoint] = self.seen.get(endpoint, 0) + 1
            lose = self._to_lose.get(endpoint, 0) > 0
            if lose:
                self._to_lose[endpoint] -= 1
                self.lost.append(endpoint)
        if lose:
            if self.mode == "hold":
                time.sleep(self.hold_s)
            h.close_connection = True
            return  # the server handled it; the client never hears
        h.send_response(resp.status_code)
        for key, value in resp.headers.items():
            if key.lower() not in HOP_HEADERS and key.lower() != "content-encoding":
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(resp.content)))
        h.end_headers()
        h.wfile.write(resp.content)
