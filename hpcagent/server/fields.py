"""Request-body validation helpers and the API fault type of the embedded server.

Handlers receive the merged request body as a plain ``dict`` and read it only through the
helpers below, so that a wrong type always becomes a ClearML-style ``400/12`` validation error
that names the field (never a 500). Query endpoints (``*.get_all``) check their bodies against
the fields they implement (:func:`reject_unknown`): a filter this server does not apply is a 400
naming it, never silently ignored. Only the spurious ``"method": "get"`` key the SDK adds is
passed over.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hpcagent.server.regex import Matcher, RegexRefused, compile_filter

log = logging.getLogger("hpcagent.server")

# ClearML result codes/subcodes used by the server (apiserver/apierrors/errors.conf).
VALIDATION = (400, 12)
INVALID_TASK_ID = (400, 101)
INVALID_TASK_STATUS = (400, 110)
INVALID_MODEL_ID = (400, 201)
MODEL_IN_USE = (400, 205)
MODEL_CREATING_TASK_EXISTS = (400, 206)
INVALID_PROJECT_ID = (400, 401)
INVALID_PROJECT_NAME = (400, 407)
CANNOT_UPDATE_PROJECT_LOCATION = (400, 408)
PROJECT_PATH_EXCEEDS_MAX = (400, 409)
INVALID_QUEUE_ID = (400, 701)
QUEUE_NOT_EMPTY = (400, 702)
TASK_NOT_QUEUED = (400, 703)
NO_DEFAULT_QUEUE = (400, 707)
INVALID_WORKER_ID = (400, 1001)
MISSING_CREDENTIALS = (401, 20)
INVALID_CREDENTIALS = (401, 22)
INVALID_TOKEN = (401, 30)
TOO_MANY_SIGN_INS = (429, 0)
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
    return epoch_to_iso(time.time())


def epoch_to_iso(epoch: float) -> str:
    """``epoch`` (seconds) as the ISO-8601 UTC text with milliseconds the store keeps."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).isoformat(timespec="milliseconds")


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


def opt_regex(body: dict[str, Any], field: str) -> Matcher | None:
    """An optional case-insensitive regex field (ClearML's name filters), compiled for the
    bounded engine (:mod:`hpcagent.server.regex`); 400/12 if invalid or refused there."""
    pattern = opt_str(body, field)
    if not pattern:
        return None
    try:
        return compile_filter(pattern)
    except RegexRefused as exc:
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


#: Keys a client sends that are no filter: the SDK adds ``"method": "get"`` to GET-style calls.
NON_FILTER_KEYS = frozenset({"method"})

#: ClearML's multi-field pattern filters: ``{fields: [...], pattern: regex}``, every field
#: (``_all_``/``_and_``) or any field (``_any_``/``_or_``) matching, as in clearml-server.
MULTI_FIELD_KEYS = {"_all_": True, "_and_": True, "_any_": False, "_or_": False}


def reject_unknown(body: dict[str, Any], known: Iterable[str], endpoint: str = "") -> None:
    """400/12 naming every key of ``body`` outside ``known`` (and ``endpoint``): a field is
    applied or refused, never ignored."""
    allowed = set(known) | NON_FILTER_KEYS
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        names = ", ".join(f"'{k[:64]}'" for k in unknown[:10])
        data: dict[str, Any] = {"field": unknown[0][:64], "fields": [k[:64] for k in unknown[:10]]}
        if endpoint:
            data["endpoint"] = endpoint
        where = f" of {endpoint}" if endpoint else ""
        # One warning line: a client that sends what this server does not apply is a
        # compatibility gap to see (tests/e2e fail on these lines after the SDK's flows).
        log.warning("refused unsupported field(s) %s%s", names, where)
        raise ApiFault(
            VALIDATION,
            f"Validation error: unsupported field(s) {names}{where}: this server does not "
            "apply them",
            data,
        )


def field_values(doc: dict[str, Any], path: str) -> list[Any]:
    """The values at dotted ``path`` (a list at the end is its elements, as Mongo matches)."""
    src: Any = doc
    for part in path.split("."):
        if not isinstance(src, dict) or part not in src:
            return []
        src = src[part]
    return list(src) if isinstance(src, list) else [src]


@dataclass(frozen=True)
class FieldPattern:
    """One ``_all_``/``_any_`` filter: ``pattern`` searched (case-insensitive) in ``fields``.

    As in clearml-server (Mongo ``$regex``): a field matches when one of its string values
    contains the pattern; a missing field or a non-string value does not match.
    """

    key: str
    fields: tuple[str, ...]
    regex: Matcher
    every: bool

    @classmethod
    def from_body(cls, body: dict[str, Any], key: str) -> FieldPattern | None:
        spec = opt_dict(body, key)
        if spec is None:
            return None
        extra = sorted(set(spec) - {"fields", "pattern"})
        if extra:
            raise ApiFault(
                VALIDATION,
                f"Validation error: field '{key}' supports only 'fields' and 'pattern', "
                f"not {', '.join(repr(e) for e in extra)}",
                {"field": f"{key}.{extra[0]}"},
            )
        fields = opt_str_list(spec, "fields") or []
        pattern = spec.get("pattern")
        if not isinstance(pattern, str):
            raise _bad(f"{key}.pattern", "a string", pattern)
        if not fields:
            return None  # clearml-server: no fields, no condition
        try:
            regex = compile_filter(pattern)
        except RegexRefused as exc:
            raise ApiFault(
                VALIDATION,
                f"Validation error: field '{key}.pattern' is not a valid regex: {exc}",
                {"field": f"{key}.pattern"},
            ) from exc
        return cls(key, tuple(fields), regex, MULTI_FIELD_KEYS[key])

    def admits(self, doc: dict[str, Any]) -> bool:
        hits = (
            any(isinstance(v, str) and self.regex.search(v) for v in field_values(doc, f))
            for f in self.fields
        )
        return all(hits) if self.every else any(hits)


#: The ordering and paging keys :func:`order_and_page` reads.
PAGING_KEYS = ("order_by", "page", "page_size", "size")


def order_and_page(docs: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
    """``docs`` sorted by ``order_by`` (dotted fields, ``-`` for descending; values compared as
    strings, missing as "") and cut to page ``page`` of ``page_size`` (or ``size``)."""
    out = list(docs)
    for order in reversed(opt_str_list(body, "order_by") or []):
        path = order.lstrip("-+")

        def key(doc: dict[str, Any], path: str = path) -> str:
            values = field_values(doc, path)
            return str(values[0]) if values and values[0] is not None else ""

        out.sort(key=key, reverse=order.startswith("-"))
    page = opt_int(body, "page")
    page_size = opt_int(body, "page_size") or opt_int(body, "size")
    if page_size is not None and page_size > 0:
        start = (page or 0) * page_size
        out = out[start : start + page_size]
    return out


@dataclass(frozen=True)
class ListFilter:
    """The filters that every ``*.get_all`` shares.

    ``id`` and ``only_fields`` are kept for the caller; :meth:`admits` applies the hidden rule
    (hidden documents only with ``search_hidden`` or an explicit id list), the ``name`` regex,
    the ``system_tags``/``tags`` tag filters and the ``_all_``/``_any_`` pattern filters.
    """

    ids: list[str] | None
    only_fields: list[str] | None
    name_re: Matcher | None
    system_tags: list[str] | None
    tags: list[str] | None
    search_hidden: bool
    patterns: tuple[FieldPattern, ...] = ()

    #: The body keys :meth:`from_body` reads.
    KEYS = ("id", "only_fields", "name", "system_tags", "tags", "search_hidden", *MULTI_FIELD_KEYS)

    @classmethod
    def from_body(cls, body: dict[str, Any], *, also: Iterable[str] = ()) -> ListFilter:
        """Read the shared fields; any key outside them and ``also`` (the endpoint's own
        filters) is refused with 400 naming it."""
        reject_unknown(body, (*cls.KEYS, *also))
        patterns = (FieldPattern.from_body(body, key) for key in MULTI_FIELD_KEYS)
        return cls(
            ids=opt_str_list(body, "id"),
            only_fields=opt_str_list(body, "only_fields"),
            name_re=opt_regex(body, "name"),
            system_tags=opt_str_list(body, "system_tags"),
            tags=opt_str_list(body, "tags"),
            search_hidden=opt_bool(body, "search_hidden"),
            patterns=tuple(p for p in patterns if p is not None),
        )

    def admits(self, doc: dict[str, Any]) -> bool:
        """Whether stored ``doc`` passes; any stored shape (a planted record, an older server's)
        is read as clearml-server's Mongo query would read it, never raised on."""
        system_tags = stored_strings(doc.get("system_tags"))
        if not self.search_hidden and "hidden" in system_tags and self.ids is None:
            return False
        if self.name_re is not None:
            name = doc.get("name")
            if not isinstance(name, str) or not self.name_re.search(name):
                return False  # Mongo's $regex does not match a value that is not a string
        if not all(p.admits(doc) for p in self.patterns):
            return False
        return match_tags(system_tags, self.system_tags) and match_tags(doc.get("tags"), self.tags)


def stored_strings(value: Any) -> list[str]:
    """The strings a stored field holds, as a Mongo filter sees them: a string is itself, a list
    its string elements; anything else (a number, an object, null) holds none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


#: ClearML's list-filter operators: ``__$all``/``__$and`` and ``__$any``/``__$or`` set how the
#: values after them join (until the next operator), ``__$not`` excludes the one value after it,
#: ``__$nop`` goes back to the default (any).
ALL_OPS = frozenset({"__$all", "__$and"})
ANY_OPS = frozenset({"__$any", "__$or", "__$nop"})
NOT_OP = "__$not"


@dataclass(frozen=True)
class ListMatch:
    """A ClearML filter over a list field (``tags``, ``system_tags``) or a one-value field
    (``status``, ``type``, ...), as clearml-server reads it: ``["a", "b"]`` any of them;
    ``["__$all", "a", "b"]`` all of them; ``["__$not", "x"]`` not x; and for tags the older
    ``"-x"``, not x. The buckets join with AND (the SDK's ``Dataset.get`` and pipeline versions
    send ``["__$all", tag, "__$not", "archived"]``)."""

    any_of: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: list[str] | None, *, dash: bool = False) -> ListMatch | None:
        """The filter ``values`` (None: no filter); ``dash``: a leading ``-`` excludes."""
        if not values:
            return None
        any_of: list[str] = []
        all_of: list[str] = []
        none_of: list[str] = []
        joined, negate = any_of, False
        for value in values:
            if value in ALL_OPS or value in ANY_OPS:
                joined = all_of if value in ALL_OPS else any_of
            elif value == NOT_OP:
                negate = True
            elif negate or (dash and value.startswith("-") and len(value) > 1):
                none_of.append(value if negate else value[1:])
                negate = False
            else:
                joined.append(value)
        return cls(tuple(any_of), tuple(all_of), tuple(none_of))

    @property
    def plain(self) -> list[str] | None:
        """The values when the filter is a plain "any of" list (one SQL ``IN``), else None."""
        return list(self.any_of) if self.any_of and not self.all_of and not self.none_of else None

    def admits(self, stored: Any) -> bool:
        """Whether a stored field (a list, or one value) passes; see :func:`stored_strings`."""
        present = set(stored_strings(stored))
        return (
            not any(v in present for v in self.none_of)
            and all(v in present for v in self.all_of)
            and (not self.any_of or any(v in present for v in self.any_of))
        )


def match_tags(stored: Any, wanted: list[str] | None) -> bool:
    """ClearML tag filter over a stored tags field (:class:`ListMatch`, with the older ``-name``
    exclusion)."""
    match = ListMatch.parse(wanted, dash=True)
    return match is None or match.admits(stored)
