"""The non-responsive task watchdog: a task left ``in_progress`` by a runner that is gone is
stopped, as clearml-server's ``services.tasks.non_responsive_tasks_watchdog`` does.

A running task's executor pings it (``tasks.ping``, every ``executor.task_ping_interval_sec``)
and every log line, metric or status call moves its ``last_update``. When the node dies with the
submitter or daemon that would have noticed (a host lost for good, a submitter not restarted),
nothing reports the task again, and it would show "Running" forever in the web UI. Every
``server.non_responsive_check_sec`` (900 s) the watchdog stops each ``in_progress`` task whose
``last_update`` is older than ``server.non_responsive_sec`` (7200 s, clearml-server's default;
0 turns it off): status ``stopped``, reason and message ``Forced stop (non-responsive)``. Each
task is a separate transaction that checks the status and time again, so a task that reported
in between is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hpcagent.server.fields import epoch_to_iso, iso_to_epoch
from hpcagent.server.retention import InDb, run_periodically
from hpcagent.server.statemachine import IN_PROGRESS, STOPPED, set_status
from hpcagent.server.store import Store

log = logging.getLogger("hpcagent.server")

#: The status reason and message of a task the watchdog stopped (clearml-server's words).
FORCED_STOP = "Forced stop (non-responsive)"
#: clearml-server's defaults (``threshold_sec``, ``watch_interval_sec``).
DEFAULT_THRESHOLD_S = 7200.0
DEFAULT_INTERVAL_S = 900.0


class NonResponsiveWatchdog:
    """Stops ``in_progress`` tasks not updated for ``threshold_s`` seconds (0: never), checking
    every ``interval_s`` seconds."""

    def __init__(
        self,
        store: Store,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        if threshold_s < 0 or interval_s <= 0:
            raise ValueError(
                f"non-responsive watchdog: threshold must not be negative and the check interval "
                f"must be positive (got {threshold_s} s, {interval_s} s)"
            )
        self.store = store
        self.threshold_s = threshold_s
        self.interval_s = interval_s

    def start(self, in_db: InDb) -> asyncio.Task[None] | None:
        """The checking task (None when the watchdog is off); cancel it on shutdown. The first
        check comes one interval after the start, as in clearml-server: a server restarted
        after a pause gives the running executors time to ping first."""
        if not self.threshold_s:
            return None
        return asyncio.create_task(
            run_periodically(
                self.interval_s,
                lambda: self.check(in_db),
                "non-responsive check",
                first_delay_s=self.interval_s,
            )
        )

    async def check(self, in_db: InDb, now: float | None = None) -> list[str]:
        """Stop every task due at ``now`` (epoch s, default: the clock); returns their ids."""
        stopped = list(await in_db(self.stop_due, now))
        if stopped:
            log.info("non-responsive watchdog: stopped %d task(s) not updated for %g s",
                     len(stopped), self.threshold_s)  # fmt: skip
        return stopped

    def stop_due(self, now: float | None = None) -> list[str]:
        """Run in the database thread: stop the due tasks, one transaction each."""
        now = time.time() if now is None else now
        cutoff = now - self.threshold_s
        candidates = self.store.stale_tasks(IN_PROGRESS, epoch_to_iso(cutoff))
        stopped = []
        for task_id in candidates:
            with self.store.write():
                if not self.store.task_exists(task_id):
                    continue  # deleted since the listing
                task = self.store.get_task(task_id)
                if not self._due(task, cutoff):
                    continue  # it reported, or changed status, since the listing
                log.warning("non-responsive watchdog: stopping task %s (%r), last updated %s",
                            task_id, task.get("name"), task.get("last_update"))  # fmt: skip
                stamp = epoch_to_iso(now)
                set_status(task, STOPPED, stamp, reason=FORCED_STOP, message=FORCED_STOP)
                task["last_change"] = stamp
                self.store.put_task(task)
            stopped.append(task_id)
        return stopped

    @staticmethod
    def _due(task: dict[str, Any], cutoff: float) -> bool:
        last = task.get("last_update")
        return (
            task.get("status") == IN_PROGRESS
            and isinstance(last, str)
            and iso_to_epoch(last) < cutoff
        )
