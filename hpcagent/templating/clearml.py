"""The ClearML-style ``${CLEARML_...}`` template renderer (grammar in ``analysis.py``).

A value is looked up, the default used when it is missing, ``null`` or empty, its newlines
removed unless it has ``|raw`` (as ClearML does), the filters applied left to right, and
the result placed by the rule of the context it sits in
(``values.py`` for shell text and comments, ``directives.py`` for ``#SBATCH`` lines).
"""

from __future__ import annotations

import logging
import threading

from hpcagent.templating.analysis import Slot, parse
from hpcagent.templating.context import RenderContext
from hpcagent.templating.directives import place
from hpcagent.templating.values import (
    DIRECTIVE_SAFE,
    UnsafeValue,
    apply_filter,
    check_no_control,
    clean_comment,
    make_safe,
    to_text,
)

log = logging.getLogger("hpcagent.templating")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` once per process for ``key`` (not once per task)."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("%s", message)


def render_clearml(text: str, ctx: RenderContext, template_name: str = "<template>") -> str:
    """Render ``text`` against ``ctx``.

    Raises :class:`TemplateError` (naming the template, line, column and placeholder)
    for a static problem of the template (see :func:`analysis.problems`), an unknown
    name, a missing value without default outside comments, or a value that cannot be
    placed where it stands (a control character in shell text, a non-number for
    ``--nodes`` ...). A value in a comment never fails: it loses its control characters,
    and a missing one renders empty, with one warning per template line.
    """
    parsed = parse(text, template_name)
    if parsed.errors:
        raise parsed.errors[0]
    out: list[str] = []
    for part in parsed.parts:
        if isinstance(part, str):
            out.append(part)
        elif part.block:
            out.append(ctx.blocks[part.key])
        else:
            out.append(_render_slot(part, ctx, template_name))
    return "".join(out)


def _render_slot(slot: Slot, ctx: RenderContext, name: str) -> str:
    try:
        value = ctx.lookup(slot.key)
    except KeyError:
        raise slot.error(name, "unknown name") from None
    text = None if value is None else to_text(value)
    if text is None or (text == "" and slot.default is not None):
        if slot.default is None:
            if slot.in_comment:
                warn_once(
                    f"{name}:{slot.line}:{slot.column}",
                    f"{name}:{slot.line}:{slot.column}: placeholder {slot.placeholder} has no "
                    "value for some tasks; it renders empty in that comment",
                )
                return ""
            raise slot.error(name, "no value and no default")
        text = slot.default
    if "raw" not in {f for f, _ in slot.filters}:
        text = text.replace("\n", "")  # ClearML's default remove_newlines (|raw keeps them)
    try:
        for fname, args in slot.filters:
            try:
                text = apply_filter(text, fname, args)
            except TypeError as exc:
                raise UnsafeValue(f"bad arguments for filter {fname!r}: {exc}") from None
        return _place(text, slot)
    except UnsafeValue as exc:
        if slot.in_comment:
            return ""
        raise slot.error(name, str(exc)) from None


def _place(text: str, slot: Slot) -> str:
    if slot.mark.refused:  # accepted at parse time only with a safe filter
        if text and not DIRECTIVE_SAFE.fullmatch(text):
            raise UnsafeValue(f"value {text!r} is not plain after its filters")
        return text
    if slot.spot is not None:
        if slot.spot.state == "comment":
            return clean_comment(text)
        check_no_control(text)  # sbatch reads line by line
        return place(text, slot.spot)
    return make_safe(text, slot.mark.context)
