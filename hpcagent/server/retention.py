"""Event retention: events older than ``server.event_retention_days`` are deleted while the
server runs.

A lab's console logs grow without end (a few hundred bytes a line, about 0.4 GB per million
lines with their indexes: docs/performance.md). With a retention of N days (0, the default,
keeps everything) a sweep runs every :data:`SWEEP_INTERVAL_S`: it deletes the events whose
timestamp is more than N days old, oldest first, :data:`BATCH` rows per transaction, each batch
a separate call on the database thread, so requests queued meanwhile run between two batches
and none waits for more than one batch. Only event rows go; the tasks, their ``last_metrics``
and their files stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hpcagent.server.store import Store

log = logging.getLogger("hpcagent.server")

#: Seconds between two sweeps (a day's worth of events is cleared in one).
SWEEP_INTERVAL_S = 300.0
#: Events deleted per transaction: tens of milliseconds of the database thread (performance.md).
BATCH = 1000
DAY_MS = 86_400_000

InDb = Callable[..., Awaitable[Any]]


class EventRetention:
    """Deletes the store's events older than ``days`` (0: does nothing)."""

    def __init__(self, store: Store, days: float) -> None:
        if days < 0:
            raise ValueError(f"event retention must not be negative (got {days} days)")
        self.store = store
        self.days = days

    def start(self, in_db: InDb) -> asyncio.Task[None] | None:
        """The sweeping task (None when retention is off); cancel it on shutdown."""
        if not self.days:
            return None
        return asyncio.create_task(
            run_periodically(
                SWEEP_INTERVAL_S, lambda: self._sweep_logged(in_db), "event retention sweep"
            )
        )

    def cutoff_ms(self, now: float) -> int:
        """Events with a timestamp (ms) before this are due at ``now`` (seconds)."""
        return int(now * 1000 - self.days * DAY_MS)

    async def sweep(self, in_db: InDb, now: float | None = None) -> int:
        """Delete every due event, one batch per database call; returns how many went."""
        cutoff = self.cutoff_ms(time.time() if now is None else now)
        deleted = 0
        while True:
            count = int(await in_db(self.store.delete_events_before, cutoff, BATCH))
            deleted += count
            if count < BATCH:
                return deleted
            await asyncio.sleep(0)  # let the event loop hand the thread queued requests

    async def _sweep_logged(self, in_db: InDb) -> None:
        deleted = await self.sweep(in_db)
        if deleted:
            log.info("event retention: deleted %d events older than %g days", deleted, self.days)


async def run_periodically(
    interval_s: float,
    job: Callable[[], Awaitable[Any]],
    what: str,
    *,
    first_delay_s: float = 0.0,
) -> None:
    """Await ``job()`` every ``interval_s`` seconds until cancelled, the first after
    ``first_delay_s``; a failure is logged with ``what`` and the next round comes as planned
    (a server's housekeeping never dies of one bad round)."""
    await asyncio.sleep(first_delay_s)
    while True:
        try:
            await job()
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(interval_s)
