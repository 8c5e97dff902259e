"""Abort detection: poll the task's status while it runs (clearml-api.md §4.3), ping it.

The official ``clearml-agent execute`` does not poll; hpcagent does, every
``abort_poll_interval`` seconds (at most 5). Outcomes:

* ``in_progress`` with "stopping" in ``status_message`` → abort, the task ends **stopped**;
* ``stopped``/``closed``/``failed``/``published``/``completed``/``queued`` → abort; the status was
  set by someone else, so the executor writes none;
* ``created`` for 4 polls in a row (a reset) or the task is gone → abort, no status call.

Failed polls (server down) are ignored: an unreachable server never stops a task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcagent.executor.background import BackgroundThread

log = logging.getLogger(__name__)

EXTERNAL_END = frozenset(
    {"stopped", "closed", "failed", "published", "publishing", "completed", "queued"}
)


@dataclass(frozen=True)
class AbortRequest:
    """Why the run must end; ``write_status`` says whether the executor marks the task."""

    reason: str
    write_status: bool


def judge(status: str, message: str, created_polls: int) -> AbortRequest | None:
    """Decide from one poll (pure; see the module docstring)."""
    if status == "in_progress":
        if "stopping" in message:
            return AbortRequest("stopped by user (tasks.stop)", True)
        return None
    if status in EXTERNAL_END:
        return AbortRequest(f"the task was set to {status} elsewhere", False)
    if status == "created" and created_polls >= 4:
        return AbortRequest("the task was reset", False)
    return None


class AbortWatcher(BackgroundThread):
    """Background thread: status poll every ``interval`` s; ``tasks.ping`` every
    ``ping_interval`` s."""

    thread_name = "hpcagent-abort-poll"

    def __init__(
        self,
        send: Callable[[str, dict[str, Any]], dict[str, Any]],
        task_id: str,
        *,
        interval: float = 2.0,
        ping_interval: float = 60.0,
        on_abort: Callable[[AbortRequest], None],
        ping: bool = True,
    ) -> None:
        super().__init__()
        self._send = send
        self.task_id = task_id
        self.interval = min(5.0, max(0.05, interval))
        self.ping_interval = ping_interval
        self._on_abort = on_abort
        self._ping = ping
        self.request: AbortRequest | None = None
        self.polls = 0

    def _loop(self) -> None:
        created_polls = 0
        next_ping = time.monotonic() + self.ping_interval
        while not self._stop.wait(self.interval):
            try:
                data = self._send(
                    "tasks.get_all",
                    {"id": [self.task_id], "only_fields": ["id", "status", "status_message"]},
                )
            except Exception as exc:  # server down or slow: try again next round
                log.debug("abort poll failed: %s", exc)
                continue
            self.polls += 1
            tasks = data.get("tasks") or []
            if not tasks:
                request: AbortRequest | None = AbortRequest("the task no longer exists", False)
            else:
                status = str(tasks[0].get("status") or "")
                created_polls = created_polls + 1 if status == "created" else 0
                request = judge(status, str(tasks[0].get("status_message") or ""), created_polls)
            if request is not None:
                self.request = request
                self._on_abort(request)
                return
            if self._ping and time.monotonic() >= next_ping:
                next_ping = time.monotonic() + self.ping_interval
                try:
                    self._send("tasks.ping", {"task": self.task_id})
                except Exception as exc:  # a missed ping is harmless
                    log.debug("ping failed: %s", exc)
