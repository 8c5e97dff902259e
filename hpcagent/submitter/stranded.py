"""Tasks left ``queued`` with no queue entry, and what the submitter does with them.

A pop takes the entry out of the queue and leaves the task ``queued`` (as clearml-server
does). If the popper never learns what it took (the reply was lost: a timeout, a dropped
connection, a server paused mid-pop) or dies before it writes its ledger row, the task stays
``queued`` in no queue: nobody will ever run it. The embedded server makes a repeated pop safe
(``pop_id``), so with it this happens only after a crash; a real ClearML server has no such
thing, and the client then never repeats a pop (api/client.py), so the task is stranded.

:class:`StrandedSweep` finds such tasks among the queues this submitter serves and puts each
back at the front of its queue (docs/reliability.md says why re-enqueue, not fail). A task is
taken only when all of these hold, in two sweeps at least ``grace_s`` apart (another agent may
be between its pop and its next write):

* status ``queued``, ``execution.queue`` one of the submitter's queues, in none of their entries;
* no live row in this submitter's ledger, and no live job by its name in the scheduler;
* no job recorded on it by another worker (``job-worker`` property: that submitter follows it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hpcagent.api import ApiClient
from hpcagent.scheduler.base import PROP_WORKER, Scheduler
from hpcagent.submitter import taskops
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.options import QueueRef, job_name, legacy_job_name

log = logging.getLogger("hpcagent.submitter")


class StrandedSweep:
    """See the module docstring; :meth:`sweep` is cheap (two server calls) when none are."""

    def __init__(
        self,
        client: ApiClient,
        ledger: Ledger,
        scheduler: Scheduler,
        queues: list[QueueRef],
        worker_id: str,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.scheduler = scheduler
        self.queues = {q.id: q for q in queues}
        self.worker_id = worker_id
        self.grace_s = grace_s
        self.clock = clock
        self._first_seen: dict[str, float] = {}
        #: Tasks put back so far (for tests and the chaos figures).
        self.requeued: list[str] = []

    def candidates(self) -> dict[str, str]:
        """``{task: queue}`` of queued tasks of these queues that are in no entry of them."""
        data = self.client.send(
            "tasks.get_all",
            {"status": ["queued"], "only_fields": ["id", "execution.queue"], "search_hidden": True},
        )
        queued: dict[str, str] = {}
        for task in data.get("tasks") or []:
            if not isinstance(task, dict):
                continue
            execution = task.get("execution")
            queue = execution.get("queue") if isinstance(execution, dict) else None
            if isinstance(queue, str) and queue in self.queues and task.get("id"):
                queued[str(task["id"])] = queue
        if not queued:
            return {}
        reply = self.client.send(
            "queues.get_all", {"id": list(self.queues), "only_fields": ["id", "entries"]}
        )
        waiting: set[str] = set()
        for queue in reply.get("queues") or []:
            for entry in (queue.get("entries") if isinstance(queue, dict) else None) or []:
                if isinstance(entry, dict):
                    waiting.add(str(entry.get("task")))
        live = {e.task_id for e in self.ledger.live()}
        return {t: q for t, q in queued.items() if t not in waiting and t not in live}

    def sweep(self) -> list[str]:
        """Put back every task stranded for ``grace_s``; returns their ids."""
        now = self.clock()
        found = self.candidates()
        self._first_seen = {t: self._first_seen.get(t, now) for t in found}
        settled: list[str] = []
        for tid, queue_id in found.items():
            if now - self._first_seen[tid] < self.grace_s or self._claimed(tid):
                continue
            q = self.queues[queue_id]
            if taskops.requeue_front(
                self.client, tid, queue_id, "it was queued without a queue entry (a lost pop)"
            ):
                log.info(
                    "task %s queue %s: queued with no queue entry for %.0f s or more (a pop whose "
                    "reply was lost?); back at the front of its queue",
                    tid,
                    q.name,
                    self.grace_s,
                )
                settled.append(tid)
            self._first_seen.pop(tid, None)
        self.requeued.extend(settled)
        return settled

    def _claimed(self, task_id: str) -> bool:
        """Someone follows the task: a live job of ours by its name, or another worker's job
        record on it."""
        jobs = set(self.scheduler.find_by_name(job_name(task_id)))
        jobs |= set(self.scheduler.find_by_name(legacy_job_name(task_id)))
        if jobs:
            statuses = self.scheduler.status(sorted(jobs))
            if any(not js.state.is_terminal for js in statuses.values()):
                return True
        task = taskops.get_task(self.client, task_id)
        worker = _property(task, PROP_WORKER) if task else ""
        if worker and worker != self.worker_id:
            log.debug("task %s: queued without an entry, but worker %s holds it", task_id, worker)
            return True
        return False


def _property(task: dict[str, Any], name: str) -> str:
    """A ``hyperparams.properties`` value of a task as stored (anything malformed is "")."""
    hyperparams = task.get("hyperparams")
    section = hyperparams.get("properties") if isinstance(hyperparams, dict) else None
    item = section.get(name) if isinstance(section, dict) else None
    value = item.get("value") if isinstance(item, dict) else None
    return value if isinstance(value, str) else ""
