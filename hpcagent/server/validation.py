"""Field types of stored documents, checked as strictly as clearml-server's schemas do.

clearml-server validates every request against its JSON schemas (apiserver/schema/services), so
a wrong type never reaches its database. We check the same fields before storing them, so that
nothing stored can make a later read or filter fail (``tags: [1]`` is a 400, not a poisoned
task that turns every tag filter into a 500).
"""

from __future__ import annotations

from typing import Any

from hpcagent.server.fields import VALIDATION, ApiFault

_DESCRIPTIONS = {
    "str": "a string",
    "bool": "a boolean",
    "dict": "an object",
    "str_list": "an array of strings",
    "int_dict": "an object of integers",
    "metadata": "an array or object of {key, type, value}",
    "list": "an array",
}


def _fits(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "int_dict":
        return isinstance(value, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        )
    if kind == "metadata":
        return isinstance(value, (list, dict))
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


def check_fields(body: dict[str, Any], spec: dict[str, str]) -> dict[str, Any]:
    """The fields of ``spec`` present in ``body``, each checked; other fields are ignored."""
    return {
        name: check_value(name, kind, body[name]) for name, kind in spec.items() if name in body
    }
