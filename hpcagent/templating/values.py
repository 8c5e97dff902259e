"""Turning looked-up values into text, filters, and the safety rules per shell context.

The rules (documented in docs/templates.md):

* Every value is converted to text first: booleans as ``true``/``false``, numbers via
  ``str``, a list of plain values joined with ``,`` (as ClearML does), other lists and
  dicts as compact JSON, an entity reference as its id; ``None`` counts as missing.
* A value may not contain control characters (newline, carriage return, NUL, ...;
  tab is allowed) where it is code: so no value can ever add a line. In a comment
  (:func:`clean_comment`) they are removed instead, so a comment never fails a task.
* ``normal`` context: ``shlex.quote``; ``single``: ``'`` becomes ``'\\''``; ``double``:
  ``\\ " $ ``` get a backslash; the ``#!`` line: plain characters only.
  ``#SBATCH`` lines are placed by ``directives.py``.
* The filters in :data:`SAFE_FILTERS` (``int``, ``slug``) limit a value to characters no
  shell context gives a meaning to; only they make a value acceptable where quoting
  cannot protect it (see ``shell_context.py``).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

from hpcagent.templating.context import EntityRef

DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_.,:=@%+/-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.,:=@%+/-]")
_DOUBLE_SPECIAL = re.compile(r'([\\"$`])')


class UnsafeValue(ValueError):
    """A value cannot be placed safely in its context (the message says why)."""


def to_text(value: Any) -> str:
    """Convert a looked-up value to its template text (``None`` is not accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, EntityRef):
        return str(value)
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (bool, int, float, str)) for v in value
    ):
        return ",".join(to_text(v) for v in value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def slug(value: str) -> str:
    """Map ``value`` into the directive-safe charset (``_`` for anything else)."""
    out = _SLUG_BAD.sub("_", value)
    if out.startswith("-"):
        out = "_" + out[1:]
    return out or "_"


def _strip(value: str, chars: str | None = None) -> str:
    return value.strip(chars)


def to_int(value: str) -> str:
    """The ``int`` filter: the value as a whole number, else the task fails."""
    text = value.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise UnsafeValue(f"value {value!r} is not a whole number (|int)")
    return str(int(text))


FILTERS: dict[str, Callable[..., str]] = {
    "strip": _strip,
    "lstrip": lambda v, chars=None: v.lstrip(chars),
    "rstrip": lambda v, chars=None: v.rstrip(chars),
    "lower": lambda v: v.lower(),
    "upper": lambda v: v.upper(),
    "capitalize": lambda v: v.capitalize(),
    "title": lambda v: v.title(),
    "slug": slug,
    "int": to_int,
    "remove_newlines": lambda v: v.replace("\n", ""),
    # ClearML's "raw" keeps newlines (the renderer then does not remove them); a newline
    # in shell text or a directive is still refused: no filter bypasses the safety rules.
    "raw": lambda v: v,
}
#: Filters whose output no shell context gives a meaning to (see shell_context.py).
SAFE_FILTERS = frozenset({"int", "slug"})


def apply_filter(value: str, name: str, args: list[str]) -> str:
    """Apply filter ``name`` with string ``args``; unknown names raise ``KeyError``."""
    return FILTERS[name](value, *args)


def check_no_control(value: str) -> None:
    """Refuse values with control characters (they could add lines)."""
    m = _CONTROL.search(value)
    if m:
        raise UnsafeValue(f"value contains a control character {m.group(0)!r}")


def check_directive(value: str) -> str:
    """Validate a plain value (the ``#!`` line, Jinja2's ``sbatch_value``)."""
    if not value:
        raise UnsafeValue("empty value in a directive or #! line")
    if not DIRECTIVE_SAFE.fullmatch(value):
        bad = sorted({c for c in value if not DIRECTIVE_SAFE.fullmatch(c)})
        raise UnsafeValue(
            f"value {value!r} has characters not allowed in a directive or #! line: "
            f"{''.join(bad)!r} (allowed: letters, digits and _.,:=@%+/-; try |slug)"
        )
    if value.startswith("-"):
        raise UnsafeValue(f"value {value!r} starts with '-' in a directive or #! line")
    return value


def clean_comment(value: str) -> str:
    """A value in a comment: control characters (newlines included) removed."""
    return _CONTROL.sub("", value)


def make_safe(value: str, context: str) -> str:
    """Return ``value`` made safe for the shell ``context`` (see the module docstring)."""
    if context in ("comment", "comment_line"):
        return clean_comment(value)
    check_no_control(value)
    if context == "shebang":
        return check_directive(value)
    if context == "normal":
        return shlex.quote(value)
    if context == "single":
        return value.replace("'", "'\\''")
    if context == "double":
        return _DOUBLE_SPECIAL.sub(r"\\\1", value)
    raise UnsafeValue(f"no value can be placed safely in context {context!r}")
