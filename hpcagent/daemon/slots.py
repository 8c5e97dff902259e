"""The daemon's slots: how many tasks may run at once and which GPUs each gets.

:class:`Slots` supplies two of the submitter's hooks (see :mod:`hpcagent.daemon.run`):
``can_start`` before each pop and ``task_vars`` (the task's GPUs as ``CLEARML_DAEMON_GPUS``
and ``CLEARML_DAEMON_NVIDIA_GPUS``, which the daemon's job script exports).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcagent.daemon.gpus import GpuDemand, GpuPool
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.options import QueueRef

log = logging.getLogger("hpcagent.daemon")

GPU_VAR = "CLEARML_DAEMON_GPUS"
NVIDIA_VAR = "CLEARML_DAEMON_NVIDIA_GPUS"


class Slots:
    """The ``can_start``/``task_vars`` hooks (see the module docstring).

    ``gpus`` None: no GPU variables; ``[]``: CPU only; a list: static (every task gets them
    all) unless ``demands`` is given (dynamic: each queue id maps to a :class:`GpuDemand`).
    ``limit`` None: no limit on live tasks.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        gpus: Sequence[str] | None,
        limit: int | None,
        demands: Mapping[str, GpuDemand] | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.ledger = ledger
        self.gpus = None if gpus is None else list(gpus)
        self.limit = limit
        self.demands = dict(demands) if demands is not None else None
        self.state_file = state_file
        self.pool = GpuPool(self.gpus or []) if self.demands is not None else None
        if self.pool is not None and state_file is not None:
            self.pool.load(state_file)
            self._sync()

    def _sync(self) -> int:
        """Release the GPUs of settled tasks; returns the number of live tasks."""
        live = [e.task_id for e in self.ledger.live()]
        if self.pool is not None:
            released = self.pool.reconcile(live)
            if released:
                log.info("GPUs back in the pool from %s; free: %s", released, self.pool.free())
                self._save()
        return len(live)

    def _save(self) -> None:
        if self.pool is not None and self.state_file is not None:
            self.pool.save(self.state_file)

    def can_start(self, q: QueueRef) -> bool:
        live = self._sync()
        if self.limit is not None and live >= self.limit:
            return False
        if self.pool is not None and self.demands is not None:
            return self.pool.fits(self.demands.get(q.id, GpuDemand(1, 1)))
        return True

    def task_vars(self, task_id: str, q: QueueRef) -> dict[str, str]:
        if self.pool is not None and self.demands is not None:
            got = self.pool.allocate(task_id, self.demands.get(q.id, GpuDemand(1, 1)))
            self._save()
            log.info("task %s queue %s: GPUs %s", task_id, q.name, ",".join(got) or "none")
            gpus: list[str] | None = list(got)
        else:
            gpus = self.gpus
        if gpus is None:
            return {}
        joined = ",".join(gpus)
        return {GPU_VAR: joined, NVIDIA_VAR: joined or "none"}
