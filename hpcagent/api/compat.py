"""Where a real ClearML server differs from the embedded one, and the client's fallbacks.

Each difference is found out from the server itself (the API version in its token, or its
404 "Unable to find endpoint" reply), acted on explicitly, and logged once per client:

* ``workers.get_runtime_properties`` / ``workers.set_runtime_properties`` exist in ClearML
  Enterprise and the embedded server, not in the open-source clearml-server (404/0). Without
  them the submitter has no per-worker ``force`` switch and lists its jobs only in the worker's
  tags (what clearml-agent does too).
* ``tasks.dequeue`` takes ``new_status`` and answers a meaningful ``updated`` count from API
  2.26 on (and on the embedded server). Before 2.26 the dequeue sends the task to ``created``
  (``tasks.started`` then takes it to in_progress), and a task that is not queued any more is
  refused with 400/110 or answered ``updated: 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from hpcagent.api.probe import EMBEDDED_BUILD, version_tuple
from hpcagent.errors import ApiError, HpcAgentError

if TYPE_CHECKING:
    from hpcagent.api.client import ApiClient

log = logging.getLogger(__name__)

DEQUEUE_NEW_STATUS_API = (2, 26)
#: The token claim listing the embedded server's extensions, and the pop-id extension's name.
FEATURES_CLAIM = "hpcagent_features"
POP_ID = "pop_id"
UPDATE_IF_STATUS = "update_if_status"
RUNTIME_PROPERTY_ENDPOINTS = ("workers.get_runtime_properties", "workers.set_runtime_properties")


def is_missing_endpoint(exc: ApiError) -> bool:
    """The server does not have the endpoint (404, 405, or 400/410 "not supported")."""
    return exc.result_code in (404, 405) or (exc.result_code in (400, 410) and exc.subcode == 1)


class ServerCompat:
    """What one client's server lacks; every fallback is logged once."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._missing: set[str] = set()
        self._logged: set[str] = set()

    def once(self, key: str, message: str, *args: Any) -> None:
        """Log ``message`` at INFO the first time ``key`` comes up."""
        if key not in self._logged:
            self._logged.add(key)
            log.info(message, *args)

    @property
    def api_version(self) -> tuple[int, ...]:
        return version_tuple(str(self.client.token_claims().get("api_version") or ""))

    @property
    def embedded(self) -> bool:
        return self.client.token_claims().get("server_build") == EMBEDDED_BUILD

    def lacks(self, endpoint: str) -> bool:
        return endpoint in self._missing

    def optional_call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """``client.send``, or None when the server lacks the endpoint (remembered: it is not
        asked again)."""
        if endpoint in self._missing:
            return None
        try:
            return self.client.send(endpoint, body)
        except ApiError as exc:
            if not is_missing_endpoint(exc):
                raise
            self._missing.add(endpoint)
            self.once(
                endpoint,
                "the server has no %s (%s/%s %s): going on without it, as clearml-agent does",
                endpoint,
                exc.result_code,
                exc.subcode,
                exc.message,
            )
            return None

    def has_feature(self, name: str) -> bool:
        """Does the server declare the extension ``name`` (claim :data:`FEATURES_CLAIM`)?"""
        features = self.client.token_claims().get(FEATURES_CLAIM)
        return isinstance(features, list) and name in features

    def pop_ids(self) -> bool:
        """May a pop carry a ``pop_id``? (Otherwise it is never repeated: logged once.)"""
        if self.has_feature(POP_ID):
            return True
        self.once(
            "no-pop-id",
            "the server keeps no pop ids: a pop whose reply is lost is not sent again; a task it "
            "took is found by the stranded-task sweep",
        )
        return False

    def conditional_update(self) -> bool:
        """May ``tasks.update`` carry ``if_status``? (Otherwise logged once.)"""
        if self.has_feature(UPDATE_IF_STATUS):
            return True
        self.once(
            "no-update-if-status",
            "the server has no conditional tasks.update: a job-state message is written after "
            "reading the task's status, one round trip apart",
        )
        return False

    def dequeue_sets_status(self) -> bool:
        """Does ``tasks.dequeue`` take ``new_status`` (API >= 2.26, or the embedded server)?"""
        if self.embedded or self.api_version >= DEQUEUE_NEW_STATUS_API:
            return True
        self.once(
            "dequeue-new-status",
            "server API %s < 2.26: tasks.dequeue has no new_status; the task goes through "
            "'created' before tasks.started",
            ".".join(map(str, self.api_version)) or "unknown",
        )
        return False


class _Sender(Protocol):
    def send(self, endpoint: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]: ...


#: ``tasks.dequeue`` refusals that mean "this task is not queued" (older servers).
NOT_QUEUED = ((400, 110), (400, 101))


def dequeue_to_start(client: _Sender, task_id: str, status_reason: str = "") -> bool:
    """Take a queued task out of its queue to run it; False when it is not queued any more
    (another executor took it, or it was aborted).

    With ``new_status`` (API >= 2.26, the embedded server, or a client without
    :class:`ServerCompat`) the task goes straight to in_progress and ``updated: 0`` means it was
    not queued. Before 2.26 it goes to created (``tasks.started`` follows) and a task that is
    not queued is refused (400/110) or answered ``updated: 0``. Any other failure is logged and
    the run goes on, as before (the status calls that follow settle it).
    """
    compat = getattr(client, "compat", None)
    body: dict[str, Any] = {"task": task_id, "status_reason": status_reason}
    if not isinstance(compat, ServerCompat) or compat.dequeue_sets_status():
        body["new_status"] = "in_progress"
    try:
        reply = client.send("tasks.dequeue", body)
    except ApiError as exc:
        if (exc.result_code, exc.subcode) in NOT_QUEUED:
            return False
        log.warning("tasks.dequeue of %s failed (%s); starting anyway", task_id, exc)
        return True
    except HpcAgentError as exc:
        log.warning("tasks.dequeue of %s failed (%s); starting anyway", task_id, exc)
        return True
    return int(reply.get("updated", 1) or 0) > 0
