"""Common base of the thin per-service helpers (``client.tasks``, ``client.queues``, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcagent.api.client import ApiClient


class Service:
    """A thin wrapper that names a service's calls; :meth:`ApiClient.send` stays the primary API.

    Helpers only build bodies and pick fields out of replies; they add no state or caching.
    """

    service: str = ""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def call(self, action: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """``client.send(f"{service}.{action}", body)``."""
        return self.client.send(f"{self.service}.{action}", body or {}, **kw)


def drop_none(body: dict[str, Any]) -> dict[str, Any]:
    """The body without keys whose value is ``None`` (so that servers apply their defaults)."""
    return {k: v for k, v in body.items() if v is not None}
