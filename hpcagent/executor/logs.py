"""Console-log shipping: line splitting with progress-bar collapse, batching, disk spool.

:class:`LineSplitter` turns raw output chunks into lines; a line containing carriage returns
(a progress bar redrawing itself) keeps only its last state.

:class:`LogShipper` never blocks the producer on the network. Producers call :meth:`emit`,
which appends to an in-memory buffer; when that buffer passes ``mem_limit`` the producer spills
it to the disk spool itself (a local file write). A background thread ships the buffer at least
every ``flush_interval`` seconds or as soon as 64 KiB are waiting, with ``events.add_batch``
(requests ≤ 1 MiB, consecutive lines concatenated into events of ≤ 64 KiB, as the ClearML agent
does).

Delivery is ordered and exactly once: a batch that fails is written to
``spool_dir/<seq>-<part>.jsonl`` (one request per file); while spool files exist, new batches are
spooled behind them; the thread re-sends the oldest file and deletes it only after
``add_batch`` succeeded. Before re-sending, the optional ``verifier`` asks the server whether the
request's first event is already stored (its reply may have been lost after the server stored
it), so an ambiguous failure never duplicates lines. The shipper holds its spool while it lives
(``hpcagent.api.spool.hold``); what a run leaves there (the server away at its end, or the run
killed) is delivered by a later run (``spool.deliver_orphans``), exactly once by the same check.
The spool is bounded by ``spool_max_bytes``; beyond it new lines are dropped and counted, and a
notice with the count is shipped once delivery resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcagent.api import spool
from hpcagent.api.spool import Sender, Verifier
from hpcagent.executor.background import BackgroundThread

MAX_EVENT_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 1024 * 1024


class LineSplitter:
    """Split a byte stream into text lines, collapsing carriage-return redraws.

    ``feed`` returns the complete lines found so far; ``flush`` returns the unterminated rest.
    A pending partial line is bounded: only its part after the last ``\\r`` is kept, and a
    pending line longer than ``max_pending`` is emitted as it is.
    """

    def __init__(self, max_pending: int = MAX_EVENT_BYTES) -> None:
        self._pending = b""
        self._max = max_pending

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            complete, rest = b"", data
        else:
            complete, rest = data[:cut], data[cut + 1 :]
        if b"\r" in rest:
            rest = _after_last_cr(rest)
        self._pending = rest
        lines: list[str] = []
        if cut >= 0:
            text = complete.decode("utf-8", "replace")
            # Fast path (C-level split) unless the chunk holds something to clean up.
            if "\r" in text or "\x1b[0m" in text or "\b" in text:
                lines = [collapse_cr(line) for line in text.split("\n")]
            else:
                lines = text.split("\n")
        if len(self._pending) > self._max:
            lines.append(self._pending.decode("utf-8", "replace"))
            self._pending = b""
        return lines

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, b""
        return [collapse_cr(rest.decode("utf-8", "replace"))] if rest else []


def _after_last_cr(data: bytes) -> bytes:
    stripped = data.rstrip(b"\r")
    if b"\r" not in stripped:
        return stripped if stripped else data
    return stripped.rsplit(b"\r", 1)[1]


def collapse_cr(line: str) -> str:
    """The last state of a line redrawn with ``\\r`` (a trailing ``\\r`` from CRLF is ignored).

    The ANSI reset ``ESC[0m`` and backspaces are dropped, as the ClearML agent does.
    """
    line = line.rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    return line.replace("\x1b[0m", "").replace("\b", "")


def _cut(data: bytes, limit: int) -> list[bytes]:
    """Cut ``data`` into pieces of at most ``limit`` bytes, at newlines where possible."""
    pieces: list[bytes] = []
    start, n = 0, len(data)
    while n - start > limit:
        cut = data.rfind(b"\n", start, start + limit)
        if cut <= start:  # one line longer than the limit: hard cut
            pieces.append(data[start : start + limit])
            start += limit
        else:
            pieces.append(data[start:cut])
            start = cut + 1
    pieces.append(data[start:])
    return pieces


def pack_events(
    entries: Iterable[tuple[int, str, str]], task: str, worker: str
) -> list[dict[str, Any]]:
    """Concatenate consecutive same-level text into log events of at most 64 KiB.

    ``entries`` are ``(timestamp_ms, level, text)`` where ``text`` is one line or a block of
    lines; each event takes the timestamp of its first entry, and timestamps are already
    strictly increasing (see :class:`LogShipper`). Blocks are cut at newlines.
    """
    events: list[dict[str, Any]] = []
    buf: list[bytes] = []
    size = 0
    first_ts = 0
    level = ""
    limit = MAX_EVENT_BYTES - 1

    def close() -> None:
        if buf:
            events.append(
                {
                    "type": "log",
                    "task": task,
                    "worker": worker,
                    "level": level,
                    "timestamp": first_ts,
                    "msg": b"\n".join(buf).decode("utf-8", "replace"),
                }
            )

    for ts, lvl, text in entries:
        for piece in _cut(text.encode("utf-8", "replace"), limit):
            nbytes = len(piece) + 1
            if buf and (lvl != level or size + nbytes > MAX_EVENT_BYTES):
                close()
                buf, size = [], 0
            if not buf:
                first_ts, level = ts, lvl
            buf.append(piece)
            size += nbytes
    close()
    return events


def request_chunks(
    events: list[dict[str, Any]], max_bytes: int = MAX_REQUEST_BYTES - 4096
) -> list[list[dict[str, Any]]]:
    """Group events into requests of at most ``max_bytes`` of JSON-lines (each sent alone, so a
    failure never leaves a request half delivered)."""
    chunks: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    size = 0
    for event in events:
        n = len(event.get("msg", "").encode("utf-8", "replace")) * 2 + 256  # JSON escaping slack
        if cur and size + n > max_bytes:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(event)
        size += n
    if cur:
        chunks.append(cur)
    return chunks


class LogShipper(BackgroundThread):
    """Thread that ships log lines to the server, spooling to disk while it is unreachable."""

    thread_name = "hpcagent-log-shipper"

    def __init__(
        self,
        sender: Sender,
        *,
        task: str,
        worker: str,
        spool_dir: Path,
        flush_interval: float = 2.0,
        flush_bytes: int = MAX_EVENT_BYTES,
        mem_limit: int = 8 * 1024 * 1024,
        spool_max_bytes: int = 256 * 1024 * 1024,
        retry_interval: float = 2.0,
        verifier: Verifier | None = None,
    ) -> None:
        super().__init__()
        self._send = sender
        self._verify = verifier
        self.task = task
        self.worker = worker
        self.spool_dir = spool_dir
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.mem_limit = mem_limit
        self.spool_max_bytes = spool_max_bytes
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._buf: list[tuple[int, str, str]] = []
        self._buf_bytes = 0
        self._last_ts = 0
        self._seq = 0
        self._spool_bytes = 0
        self._dropped = 0
        self._wake = threading.Event()
        #: Counters for tests and benchmarks.
        self.lines_emitted = 0
        self.events_sent = 0
        self.requests_sent = 0
        self.send_failures = 0
        self.last_error = ""
        spool_dir.mkdir(parents=True, exist_ok=True)
        self._hold = spool.hold(spool_dir)  # a later run delivers it only once we are gone

    # -- producer side -----------------------------------------------------------------------

    def emit(self, text: str, level: str = "DEBUG") -> None:
        """Queue one line or a block of lines; never blocks on the network."""
        now = int(time.time() * 1000)
        nbytes = len(text) + 1
        with self._lock:
            ts = max(now, self._last_ts + 1)  # strictly increasing: keeps order on the server
            self._last_ts = ts
            self._buf.append((ts, level, text))
            self._buf_bytes += nbytes
            self.lines_emitted += text.count("\n") + 1
            spill = self._buf_bytes >= self.mem_limit
            if spill:
                seq, lines = self._take_locked()
        if spill:
            self._spool(seq, pack_events(lines, self.task, self.worker))
        elif self._buf_bytes >= self.flush_bytes:
            self._wake.set()

    def emit_lines(self, lines: list[str], level: str = "DEBUG") -> None:
        """Queue several lines as one block (one lock round, one timestamp)."""
        if lines:
            self.emit("\n".join(lines), level)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, timeout: float = 60.0) -> bool:
        """Stop the thread and try to deliver everything within ``timeout`` seconds.

        Returns True when nothing is left undelivered; otherwise the spool files stay on disk
        for a later run (the spool is let go here).
        """
        self.stop(max(1.0, timeout / 2))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.flush_once():
                    return True
                time.sleep(min(self.retry_interval, max(0.0, deadline - time.monotonic())))
            with self._lock:  # what is still in memory goes to disk, for the next run
                seq, lines = self._take_locked()
            if lines:
                self._spool(seq, pack_events(lines, self.task, self.worker))
            return self.pending() == 0
        finally:
            spool.release(self._hold)
            self._hold = None

    def _wake_loop(self) -> None:
        self._wake.set()

    def pending(self) -> int:
        """Lines in memory plus spool files not yet delivered."""
        with self._lock:
            return len(self._buf) + len(self._spool_files())

    # -- shipping ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self.flush_once():
                self._stop.wait(self.retry_interval)

    def flush_once(self) -> bool:
        """Deliver the spool (oldest first), then the buffer. True when all got through."""
        with self._send_lock:
            for path in self._spool_files():
                events = spool.read(path)
                already = self._already_delivered(events)
                if already is None:  # cannot tell now (server still away): retry later
                    return False
                if not already and not self._try_send(events):
                    with self._lock:
                        seq, lines = self._take_locked()
                    if lines:
                        self._spool(seq, pack_events(lines, self.task, self.worker))
                    return False
                size = path.stat().st_size
                path.unlink()
                with self._lock:
                    self._spool_bytes = max(0, self._spool_bytes - size)
            with self._lock:
                seq, lines = self._take_locked()
                dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.insert(
                    0,
                    (
                        lines[0][0] - 1 if lines else int(time.time() * 1000),
                        "WARNING",
                        f"hpcagent: {dropped} log lines were dropped (spool full)",
                    ),
                )
            if not lines:
                return True
            chunks = request_chunks(pack_events(lines, self.task, self.worker))
            for i, chunk in enumerate(chunks):
                if not self._try_send(chunk):
                    self._spool(seq, [e for c in chunks[i:] for e in c], first_part=i)
                    return False
            return True

    def _already_delivered(self, events: list[dict[str, Any]]) -> bool | None:
        """Whether a spooled request already reached the server (None: cannot tell).

        A request whose reply was lost (a read timeout after the server stored it) must not be
        sent twice. One request is stored atomically, and every event of a run has its own
        strictly increasing timestamp, so looking up the first event is enough.
        """
        already = spool.already_delivered(events, self._verify)
        if already is None:
            self.last_error = "cannot tell whether a spooled request was delivered"
        return already

    def _try_send(self, events: list[dict[str, Any]]) -> bool:
        if not events:
            return True
        try:
            self._send(events)
        except Exception as exc:  # any failure: keep the data, retry later
            self.send_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.requests_sent += 1
        self.events_sent += len(events)
        return True

    def _take_locked(self) -> tuple[int, list[tuple[int, str, str]]]:
        """Take the buffer with the next sequence number (spool files are ordered by it)."""
        lines, self._buf, self._buf_bytes = self._buf, [], 0
        self._seq += 1
        return self._seq, lines

    def _spool_files(self) -> list[Path]:
        return spool.files(self.spool_dir)

    def _spool(self, seq: int, events: list[dict[str, Any]], first_part: int = 0) -> None:
        """Write events to spool files, one per request (bounded); never raises."""
        for part, chunk in enumerate(request_chunks(events), start=first_part):
            self._spool_one(self.spool_dir / f"{seq:012d}-{part:05d}.jsonl", chunk)

    def _spool_one(self, name: Path, events: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        with self._lock:
            if self._spool_bytes + len(data) > self.spool_max_bytes:
                self._dropped += sum(e["msg"].count("\n") + 1 for e in events)
                return
            self._spool_bytes += len(data)
        tmp = name.with_suffix(".tmp")
        try:
            tmp.write_text(data)
            os.replace(tmp, name)
        except OSError as exc:
            with self._lock:
                self._dropped += len(events)
                self.last_error = f"spool write failed: {exc}"
            with contextlib.suppress(OSError):
                tmp.unlink()
