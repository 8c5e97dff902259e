"""Turning looked-up values into text, filters, and the safety rules per context.

The rules (documented in docs/templates.md):

* Every value is converted to text first: booleans as ``true``/``false``, numbers via
  ``str``, lists and dicts as compact JSON, ``None`` counts as missing.
* A value may not contain control characters (newline, carriage return, NUL, ...;
  tab is allowed outside directives). So no value can ever add a line.
* ``directive`` context (``#SBATCH`` lines, other full-line comments, the ``#!`` line):
  the value must match :data:`DIRECTIVE_SAFE` (letters, digits and ``_.,:=@%+/-``),
  must not start with ``-`` and must not be empty. Otherwise the task fails. The
  ``slug`` filter maps a free-form value into that charset.
* ``normal`` context: ``shlex.quote``; ``single``: ``'`` becomes ``'\\''``; ``double``:
  ``\\ " $ ``` get a backslash; here-document bodies: ``\\ $ ``` get a backslash
  (unquoted delimiter) or nothing (quoted delimiter), and a value containing the
  delimiter is refused; ``comment`` (after a command): as it is.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_.,:=@%+/-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.,:=@%+/-]")
_DOUBLE_SPECIAL = re.compile(r'([\\"$`])')
_HEREDOC_SPECIAL = re.compile(r"([\\$`])")


class UnsafeValue(ValueError):
    """A value cannot be placed safely in its context (the message says why)."""


def to_text(value: Any) -> str:
    """Convert a looked-up value to its template text (``None`` is not accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def slug(value: str) -> str:
    """Map ``value`` into the directive-safe charset (``_`` for anything else)."""
    out = _SLUG_BAD.sub("_", value)
    if out.startswith("-"):
        out = "_" + out[1:]
    return out or "_"


def _strip(value: str, chars: str | None = None) -> str:
    return value.strip(chars)


FILTERS: dict[str, Callable[..., str]] = {
    "strip": _strip,
    "lstrip": lambda v, chars=None: v.lstrip(chars),
    "rstrip": lambda v, chars=None: v.rstrip(chars),
    "lower": lambda v: v.lower(),
    "upper": lambda v: v.upper(),
    "capitalize": lambda v: v.capitalize(),
    "title": lambda v: v.title(),
    "slug": slug,
    # ClearML's "raw" keeps newlines; here nothing may bypass the safety rules, so it
    # is accepted for compatibility and does nothing.
    "raw": lambda v: v,
}


def apply_filter(value: str, name: str, args: list[str]) -> str:
    """Apply filter ``name`` with string ``args``; unknown names raise ``KeyError``."""
    return FILTERS[name](value, *args)


def check_no_control(value: str) -> None:
    """Refuse values with control characters (they could add lines)."""
    m = _CONTROL.search(value)
    if m:
        raise UnsafeValue(f"value contains a control character {m.group(0)!r}")


def check_directive(value: str) -> str:
    """Validate a value for an ``#SBATCH`` (or other full-line comment) line."""
    if not value:
        raise UnsafeValue("empty value in an #SBATCH/comment line")
    if not DIRECTIVE_SAFE.fullmatch(value):
        bad = sorted({c for c in value if not DIRECTIVE_SAFE.fullmatch(c)})
        raise UnsafeValue(
            f"value {value!r} has characters not allowed in an #SBATCH/comment line: "
            f"{''.join(bad)!r} (allowed: letters, digits and _.,:=@%+/-; try |slug)"
        )
    if value.startswith("-"):
        raise UnsafeValue(f"value {value!r} starts with '-' in an #SBATCH/comment line")
    return value


def make_safe(value: str, context: str, heredoc_delimiter: str | None = None) -> str:
    """Return ``value`` made safe for ``context`` (see the module docstring)."""
    check_no_control(value)
    if context == "directive":
        return check_directive(value)
    if context == "normal":
        return shlex.quote(value)
    if context == "single":
        return value.replace("'", "'\\''")
    if context == "double":
        return _DOUBLE_SPECIAL.sub(r"\\\1", value)
    if context in ("heredoc_literal", "heredoc_expand"):
        if heredoc_delimiter and heredoc_delimiter in value:
            raise UnsafeValue(f"value contains the here-document delimiter {heredoc_delimiter!r}")
        if context == "heredoc_expand":
            return _HEREDOC_SPECIAL.sub(r"\\\1", value)
        return value
    if context == "comment":
        return value
    raise UnsafeValue(
        "placeholder sits in a shell construct where no value can be placed safely "
        "(backticks, $'...', ${...} or $((...))); move it to a plain or quoted word"
    )
