"""ClearML REST client (``reference/clearml-api.md`` §1).

``ApiClient.send(endpoint, body) -> data`` is the primary API; ``client.tasks``,
``client.queues``, ``client.workers``, ``client.events`` and ``client.projects`` are thin helpers.
This package imports only ``hpcagent.config`` (duck-typed) and ``hpcagent.errors``.
"""

from __future__ import annotations

from hpcagent.api.client import DEFAULT_MAX_REQ_SIZE, EVENTS_MAX_REQ_SIZE, ApiClient
from hpcagent.api.envelope import parse_envelope, split_lines, token_refresh_time

__all__ = [
    "DEFAULT_MAX_REQ_SIZE",
    "EVENTS_MAX_REQ_SIZE",
    "ApiClient",
    "parse_envelope",
    "split_lines",
    "token_refresh_time",
]
