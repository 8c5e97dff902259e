"""Field types of stored documents, checked as strictly as clearml-server's schemas do.

clearml-server validates every request against its JSON schemas (apiserver/schema/services), so
a wrong type never reaches its database. We check the same fields before storing them, so that
nothing stored can make a later read or filter fail (``tags: [1]`` is a 400, not a poisoned
task that turns every tag filter into a 500).
"""

from __future__ import annotations

from typing import Any

from hpcagent.server.fields import (
    INVALID_PROJECT_NAME,
    PROJECT_PATH_EXCEEDS_MAX,
    VALIDATION,
    ApiFault,
)

_DESCRIPTIONS = {
    "str": "a string",
    "bool": "a boolean",
    "dict": "an object",
    "str_list": "an array of strings",
    "int_dict": "an object of integers",
    "metadata": "an array or object of {key, type, value}",
    "list": "an array",
    "number": "a number",
    "int": "an integer",
    "dict_list": "an array of objects",
    "str_map": "an object of strings (or null)",
}

#: How deep a request's JSON may nest. MongoDB (clearml-server's store) refuses documents
#: nested more than 100 levels; orjson, which writes every reply, stops at 254, so a record
#: stored deeper could never be read back. No client sends more than a few levels.
MAX_DEPTH = 64


def _fits(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "int_dict":
        return isinstance(value, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        )
    if kind == "metadata":
        return isinstance(value, (list, dict))
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "dict_list":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if kind == "str_map":
        return isinstance(value, dict) and all(
            v is None or isinstance(v, str) for v in value.values()
        )
    raise ValueError(f"unknown field kind {kind}")


def check_value(field: str, kind: str, value: Any) -> Any:
    """``value`` when it is of ``kind`` (None passes: it clears the field); else 400/12."""
    if value is None or _fits(kind, value):
        return value
    raise ApiFault(
        VALIDATION,
        f"Validation error: field '{field}' must be {_DESCRIPTIONS[kind]}, "
        f"got {type(value).__name__}: {str(value)[:100]}",
        {"field": field},
    )


def check_depth(value: Any, where: str = "body", limit: int = MAX_DEPTH) -> None:
    """400/12 when ``value`` nests arrays/objects more than ``limit`` levels (iterative: a
    hostile depth costs no Python recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise ApiFault(
                VALIDATION,
                f"Validation error: {where} nests deeper than {limit} levels",
                {"field": where, "max_depth": limit},
            )
        stack.extend((child, depth + 1) for child in children)


def check_subfields(field: str, value: Any, spec: dict[str, str]) -> None:
    """The keys of ``spec`` in the object ``value`` (an embedded document) checked with
    :func:`check_value` (400/12 naming ``field.key``); other keys are kept as sent."""
    if isinstance(value, dict):
        for key, kind in spec.items():
            if key in value:
                check_value(f"{field}.{key}", kind, value[key])


def check_fields(body: dict[str, Any], spec: dict[str, str]) -> dict[str, Any]:
    """The fields of ``spec`` present in ``body``, each checked; other fields are ignored."""
    return {
        name: check_value(name, kind, body[name]) for name, kind in spec.items() if name in body
    }


#: clearml-server's minimum (stripped) name length: task, model, queue and project names
#: (``min_length=3`` on their ``StrippedStringField`` in apiserver/database/model).
MIN_NAME_LENGTH = 3

#: clearml-server's ``services.projects.sub_projects.max_depth`` default.
MAX_PROJECT_DEPTH = 10

#: clearml-server's TaskType (apiserver/database/model/task/task.py).
TASK_TYPES = frozenset(
    {
        "training",
        "testing",
        "inference",
        "data_processing",
        "application",
        "monitor",
        "controller",
        "report",
        "optimizer",
        "service",
        "qc",
        "custom",
    }
)


def check_name(field: str, value: Any, what: str, min_length: int = MIN_NAME_LENGTH) -> str:
    """A name as clearml-server stores it: a string, stripped, at least ``min_length``
    characters (3 by default, as clearml-server for tasks, models and queues)."""
    if not isinstance(value, str):
        check_value(field, "str", value)
        raise ApiFault(
            VALIDATION, f"Validation error: missing required field '{field}'", {"field": field}
        )
    name = value.strip()
    if len(name) < max(1, min_length):
        raise ApiFault(
            VALIDATION,
            f"Validation error: {what} name must be at least {max(1, min_length)} characters "
            f"(got {name!r})",
            {"field": field},
        )
    return name


def check_task_type(value: Any) -> str:
    """A task type from clearml-server's enum."""
    if not isinstance(value, str) or value not in TASK_TYPES:
        raise ApiFault(
            VALIDATION,
            f"Validation error: field 'type' must be one of {', '.join(sorted(TASK_TYPES))}, "
            f"got {value!r}",
            {"field": "type"},
        )
    return value


def check_project_name(value: Any, parents: bool = True) -> str:
    """A project name as clearml-server's ``projects.create`` stores it (bll/project): a path
    of at most 10 non-empty ``/`` parts (else 400/409), each part stripped and blank parts
    dropped (nothing left: 400/407), and each part at least 3 characters (400/12): the last
    one is the project's ``basename``, the others are the parent projects clearml-server
    creates on the way, whose basenames have the same minimum (``parents=False``: the last
    part only, as ``projects.update``, which keeps the parents)."""
    if not isinstance(value, str):
        check_value("name", "str", value)
        raise ApiFault(
            VALIDATION, "Validation error: missing required field 'name'", {"field": "name"}
        )
    if len([part for part in value.split("/") if part]) > MAX_PROJECT_DEPTH:
        raise ApiFault(
            PROJECT_PATH_EXCEEDS_MAX,
            f"Project path exceed the maximum allowed depth (max_depth={MAX_PROJECT_DEPTH})",
            {"field": "name", "max_depth": MAX_PROJECT_DEPTH},
        )
    # A blank part is dropped like an empty one (clearml-server keeps it as an empty path part).
    parts = [part.strip() for part in value.split("/") if part.strip()]
    if not parts:
        raise ApiFault(
            INVALID_PROJECT_NAME, f"invalid project name (name={value!r})", {"field": "name"}
        )
    for part in parts if parents else parts[-1:]:
        if len(part) < MIN_NAME_LENGTH:
            raise ApiFault(
                VALIDATION,
                f"Validation error: project name must be at least {MIN_NAME_LENGTH} characters "
                f"in each '/' part (got {part!r} in {value!r})",
                {"field": "name"},
            )
    return "/".join(parts)
