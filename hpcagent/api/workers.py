"""``workers.*`` helpers (clearml-api.md §2a)."""

from __future__ import annotations

import time
from typing import Any

from hpcagent.api.base import Service, drop_none


class WorkersService(Service):
    service = "workers"

    def register(
        self, worker: str | None = None, queues: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Register ``worker`` (default: the client's worker id) listening on queue ids."""
        body = {"worker": worker or self.client.worker, "queues": queues or [], **extra}
        return self.call("register", body)

    def unregister(
        self, worker: str | None = None, queues: list[str] | None = None
    ) -> dict[str, Any]:
        return self.call("unregister", {"worker": worker or self.client.worker, "queues": queues})

    def status_report(
        self,
        worker: str | None = None,
        *,
        task: str | None = None,
        queue: str | None = None,
        queues: list[str] | None = None,
        machine_stats: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Report the worker's state; with ``task`` the server records it as the task's worker."""
        body = {
            "worker": worker or self.client.worker,
            "timestamp": int(time.time() * 1000),
            "task": task,
            "queue": queue,
            "queues": queues,
            "machine_stats": machine_stats,
            **extra,
        }
        return self.call("status_report", drop_none(body))

    def get_all(self, **filters: Any) -> list[dict[str, Any]]:
        workers = self.call("get_all", drop_none(filters)).get("workers") or []
        return [w for w in workers if isinstance(w, dict)]

    def get_runtime_properties(self, worker: str | None = None) -> list[dict[str, Any]] | None:
        """The worker's runtime properties ``[{key, value, ...}]``; None when the server has no
        such endpoint (the open-source clearml-server; logged once, not asked again)."""
        data = self.client.compat.optional_call(
            "workers.get_runtime_properties", {"worker": worker or self.client.worker}
        )
        if data is None:
            return None
        return [p for p in data.get("runtime_properties") or [] if isinstance(p, dict)]

    def set_runtime_properties(
        self, properties: list[dict[str, Any]], worker: str | None = None
    ) -> bool:
        """Set runtime properties ``[{key, value, expiry}]``; False when the server has no
        such endpoint (logged once, not asked again)."""
        data = self.client.compat.optional_call(
            "workers.set_runtime_properties",
            {"worker": worker or self.client.worker, "runtime_properties": properties},
        )
        return data is not None
