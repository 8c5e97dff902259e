"""Request-body validation helpers and the API fault type of the embedded server.

Handlers receive the merged request body as a plain ``dict`` and read it only through the
helpers below, so that a wrong type always becomes a ClearML-style ``400/12`` validation error
that names the field (never a 500). Unknown fields are simply never read, which is how the
server ignores the spurious ``"method": "get"`` key the SDK sends.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from dataclasses import dataclass
from typing import Any

# ClearML result codes/subcodes used by the server (apiserver/apierrors/errors.conf).
VALIDATION = (400, 12)
INVALID_TASK_ID = (400, 101)
INVALID_TASK_STATUS = (400, 110)
INVALID_MODEL_ID = (400, 201)
MODEL_IN_USE = (400, 205)
MODEL_CREATING_TASK_EXISTS = (400, 206)
INVALID_PROJECT_ID = (400, 401)
INVALID_QUEUE_ID = (400, 701)
QUEUE_NOT_EMPTY = (400, 702)
TASK_NOT_QUEUED = (400, 703)
NO_DEFAULT_QUEUE = (400, 707)
INVALID_WORKER_ID = (400, 1001)
MISSING_CREDENTIALS = (401, 20)
INVALID_CREDENTIALS = (401, 22)
INVALID_TOKEN = (401, 30)
UNKNOWN_ENDPOINT = (404, 0)
BODY_TOO_LARGE = (413, 0)


class ApiFault(Exception):
    """An error reply: HTTP status == ``code``, ``result_subcode`` == ``subcode``."""

    def __init__(
        self,
        code_sub: tuple[int, int],
        message: str,
        error_data: dict[str, Any] | None = None,
    ) -> None:
        self.code, self.subcode = code_sub
        self.message = message
        self.error_data = error_data or {}
        super().__init__(f"{self.code}/{self.subcode} {message}")


def new_id() -> str:
    """A 32-character uuid4 hex id, like the real server's."""
    return uuid.uuid4().hex


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string with milliseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def iso_to_epoch(value: str | None) -> float:
    """Seconds since the epoch for an ISO-8601 string (0.0 for None or garbage)."""
    if not value:
        return 0.0
    try:
        return _dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def _bad(field: str, expected: str, value: Any) -> ApiFault:
    return ApiFault(
        VALIDATION,
        f"Validation error: field '{field}' must be {expected}, got {type(value).__name__}",
        {"field": field},
    )


def req_str(body: dict[str, Any], field: str) -> str:
    """A required non-empty string field."""
    value = body.get(field)
    if value is None or value == "":
        raise ApiFault(
            VALIDATION, f"Validation error: missing required field '{field}'", {"field": field}
        )
    if not isinstance(value, str):
        raise _bad(field, "a string", value)
    return value


def opt_str(body: dict[str, Any], field: str, default: str | None = None) -> str | None:
    """An optional string field (None when absent or null)."""
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(field, "a string", value)
    return value


def opt_regex(body: dict[str, Any], field: str) -> re.Pattern[str] | None:
    """An optional case-insensitive regex field (ClearML's name filters); 400/12 if invalid."""
    pattern = opt_str(body, field)
    if not pattern:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ApiFault(
            VALIDATION,
            f"Validation error: field '{field}' is not a valid regex: {exc}",
            {"field": field},
        ) from exc


def opt_bool(body: dict[str, Any], field: str, default: bool = False) -> bool:
    """An optional boolean; also accepts "true"/"false" strings from query strings."""
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _bad(field, "a boolean", value)


INT_LIMIT = 2**62  # SQLite integers are 64-bit; larger values are a client mistake


def opt_int(body: dict[str, Any], field: str, default: int | None = None) -> int | None:
    """An optional integer (|n| < 2**62); numeric strings (query strings) are accepted."""
    value = body.get(field)
    if value is None:
        return default
    result: int | None = None
    if isinstance(value, bool):
        result = None
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str):
        try:
            result = int(value)
        except ValueError:
            result = None
    if result is None or abs(result) >= INT_LIMIT:
        raise _bad(field, "an integer (|n| < 2**62)", value)
    return result


def opt_dict(body: dict[str, Any], field: str) -> dict[str, Any] | None:
    """An optional JSON object field."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(field, "an object", value)
    return value


def opt_list(body: dict[str, Any], field: str) -> list[Any] | None:
    """An optional JSON array field."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _bad(field, "an array", value)
    return value


def req_list(body: dict[str, Any], field: str) -> list[Any]:
    """A required JSON array field."""
    value = opt_list(body, field)
    if value is None:
        raise ApiFault(
            VALIDATION, f"Validation error: missing required field '{field}'", {"field": field}
        )
    return value


def opt_str_list(body: dict[str, Any], field: str) -> list[str] | None:
    """An optional list of strings; a single string is taken as a one-element list."""
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(field, "an array of strings", value)
    return list(value)


def project_fields(doc: dict[str, Any], only_fields: list[str] | None) -> dict[str, Any]:
    """Keep only the dotted paths of ``only_fields`` (plus ``id``), like a Mongo projection."""
    if not only_fields:
        return doc
    out: dict[str, Any] = {}
    if "id" in doc:
        out["id"] = doc["id"]
    for path in only_fields:
        parts = path.split(".")
        src: Any = doc
        for part in parts:
            if not isinstance(src, dict) or part not in src:
                src = _MISSING
                break
            src = src[part]
        if src is _MISSING:
            continue
        dst = out
        for part in parts[:-1]:
            nxt = dst.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                dst[part] = nxt
            dst = nxt
        dst[parts[-1]] = src
    return out


_MISSING = object()


@dataclass(frozen=True)
class ListFilter:
    """The filters that ``projects``, ``queues`` and ``tasks.get_all`` share.

    ``id`` and ``only_fields`` are kept for the caller; :meth:`admits` applies the hidden rule
    (hidden documents only with ``search_hidden`` or an explicit id list), the ``name`` regex and
    the ``system_tags``/``tags`` tag filters.
    """

    ids: list[str] | None
    only_fields: list[str] | None
    name_re: re.Pattern[str] | None
    system_tags: list[str] | None
    tags: list[str] | None
    search_hidden: bool

    @classmethod
    def from_body(cls, body: dict[str, Any], *, with_tags: bool = True) -> ListFilter:
        """Read the shared fields; ``with_tags=False`` ignores ``tags`` (projects)."""
        return cls(
            ids=opt_str_list(body, "id"),
            only_fields=opt_str_list(body, "only_fields"),
            name_re=opt_regex(body, "name"),
            system_tags=opt_str_list(body, "system_tags"),
            tags=opt_str_list(body, "tags") if with_tags else None,
            search_hidden=opt_bool(body, "search_hidden"),
        )

    def admits(self, doc: dict[str, Any]) -> bool:
        system_tags = doc.get("system_tags") or []
        if not self.search_hidden and "hidden" in system_tags and self.ids is None:
            return False
        if self.name_re is not None and not self.name_re.search(doc.get("name") or ""):
            return False
        return match_tags(system_tags, self.system_tags) and match_tags(
            doc.get("tags") or [], self.tags
        )


def match_tags(have: list[str], wanted: list[str] | None) -> bool:
    """ClearML tag filter: plain names must be present (any of them), ``-name`` must be absent."""
    if not wanted:
        return True
    include = [t for t in wanted if not t.startswith("-")]
    exclude = [t[1:] for t in wanted if t.startswith("-")]
    if any(t in have for t in exclude):
        return False
    return not include or any(t in have for t in include)
