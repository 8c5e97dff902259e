"""``events.*`` helpers: console log and scalar events (clearml-api.md §2b, §6.5).

Events go out through :meth:`ApiClient.send_lines` (json-lines, at most 1 MiB per request).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from hpcagent.api.base import Service, drop_none

#: Largest ``msg`` of one log event, in UTF-8 bytes (the agent's limit).
MAX_LOG_MSG_BYTES = 64 * 1024


def _pieces(line: str, limit: int) -> Iterable[str]:
    """``line`` cut into parts of at most ``limit`` UTF-8 bytes (never inside a character)."""
    data = line.encode()
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # do not split a multi-byte character
            cut -= 1
        yield data[:cut].decode()
        data = data[cut:]
    yield data.decode()


def pack_log_lines(lines: Iterable[str], limit: int = MAX_LOG_MSG_BYTES) -> list[str]:
    """Join consecutive ``lines`` with newlines into messages of at most ``limit`` bytes.

    Order and content are kept: ``"\\n".join(result) == "\\n".join(lines)`` (trailing newlines
    of the input lines are stripped first). A line longer than the limit is split.
    """
    msgs: list[str] = []
    buf: list[str] = []
    size = 0
    for raw in lines:
        for piece in _pieces(raw.rstrip("\r\n"), limit):
            n = len(piece.encode())
            extra = n + (1 if buf else 0)
            if buf and size + extra > limit:
                msgs.append("\n".join(buf))
                buf, size, extra = [], 0, n
            buf.append(piece)
            size += extra
    if buf:
        msgs.append("\n".join(buf))
    return msgs


def build_log_events(
    task: str,
    lines: Iterable[str],
    worker: str,
    level: str = "info",
    *,
    base_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Log events ``{type: log, task, worker, level, msg, timestamp}`` with timestamps base+i."""
    base = int(time.time() * 1000) if base_ms is None else base_ms
    return [
        {
            "type": "log",
            "task": task,
            "worker": worker,
            "level": level,
            "msg": msg,
            "timestamp": base + i,
        }
        for i, msg in enumerate(pack_log_lines(lines))
    ]


class EventsService(Service):
    service = "events"

    def add_batch(self, events: Sequence[dict[str, Any]]) -> int:
        """Send ``events`` (split at 1 MiB per request); return how many the server added."""
        if not events:
            return 0
        replies = self.client.send_lines("events.add_batch", events)
        return sum(int(r.get("added", 0)) for r in replies)

    def add_log(
        self,
        task: str,
        lines: Iterable[str],
        worker: str | None = None,
        level: str = "info",
    ) -> int:
        """Send console ``lines`` of ``task`` as log events; return the number of events added."""
        events = build_log_events(task, lines, worker or self.client.worker, level)
        return self.add_batch(events)

    def add_scalars(
        self,
        task: str,
        scalars: Iterable[tuple[str, str, float, int]],
    ) -> int:
        """Send ``(metric, variant, value, iteration)`` tuples as scalar events."""
        base = int(time.time() * 1000)
        events = [
            {
                "type": "training_stats_scalar",
                "task": task,
                "timestamp": base + i,
                "iter": int(it),
                "metric": metric,
                "variant": variant,
                "value": float(value),
            }
            for i, (metric, variant, value, it) in enumerate(scalars)
        ]
        return self.add_batch(events)

    def get_task_log(
        self,
        task: str,
        *,
        batch_size: int | None = None,
        navigate_earlier: bool | None = None,
        from_timestamp: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """``events.get_task_log``: reply ``{events: [...], returned, total, ...}``."""
        body = {
            "task": task,
            "batch_size": batch_size,
            "navigate_earlier": navigate_earlier,
            "from_timestamp": from_timestamp,
            **extra,
        }
        return self.call("get_task_log", drop_none(body))
