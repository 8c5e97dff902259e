"""The ClearML-style ``${CLEARML_...}`` template renderer.

Grammar of a placeholder (anything else is left to the shell)::

    ${NAME[.dotted.path][|filter[(args)]]...[:default]}

``NAME`` is ``CLEARML_<UPPER_NAME>``, ``CLEARML_TASK``, ``CONFIG`` or
``CLEARML_CONFIG``. Filters run left to right on the value (or the default).
``$${CLEARML_...}`` produces the literal text ``${CLEARML_...}``. Unbraced
``$CLEARML_X`` and every other ``$VAR``/``${VAR}`` are shell text, untouched.
"""

from __future__ import annotations

import re

from hpcagent.errors import TemplateError
from hpcagent.templating.context import RenderContext
from hpcagent.templating.shell_context import ShellContextTracker
from hpcagent.templating.values import FILTERS, UnsafeValue, apply_filter, make_safe, to_text

PLACEHOLDER = re.compile(
    r"(?P<escape>\$\$(?=\{(?:CLEARML_|CONFIG\.)))"
    r"|\$\{(?P<key>(?:CLEARML_[A-Za-z0-9_]+|CONFIG)(?:\.[^{}|:\s()]+)?)"
    r"(?P<filters>(?:\|[A-Za-z_]+(?:\([^(){}\n]*\))?)*)"
    r"(?::(?P<default>[^{}\n]*))?\}"
)
_FILTER = re.compile(r"\|([A-Za-z_]+)(?:\(([^()]*)\))?")
_MALFORMED = re.compile(r"\$\{(?:CLEARML_|CONFIG\.)[^}\n]*\}?")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def render_clearml(text: str, ctx: RenderContext, template_name: str = "<template>") -> str:
    """Render ``text`` against ``ctx``.

    Raises :class:`TemplateError` (naming the template, the line and the placeholder)
    for an unknown or malformed placeholder, a missing value without default, an
    unknown filter, or a value that cannot be placed safely where it stands.
    """
    tracker = ShellContextTracker()
    out: list[str] = []
    pos = 0

    def fail(msg: str, start: int, placeholder: str) -> TemplateError:
        return TemplateError(
            f"placeholder {placeholder}: {msg}",
            template=template_name,
            line=_line_of(text, start),
            placeholder=placeholder,
        )

    def emit_literal(chunk: str, start: int) -> None:
        bad = _MALFORMED.search(chunk)
        if bad:
            raise fail("malformed placeholder", start + bad.start(), bad.group(0))
        out.append(chunk)
        tracker.feed(chunk)

    for m in PLACEHOLDER.finditer(text):
        emit_literal(text[pos : m.start()], pos)
        pos = m.end()
        if m.group("escape"):
            out.append("$")
            tracker.feed("$")
            continue
        placeholder = m.group(0)
        key = m.group("key")
        filters = _FILTER.findall(m.group("filters") or "")
        default = m.group("default")
        blocks = ctx.blocks
        if key in blocks:
            if filters or default is not None:
                raise fail("block placeholders take no filter or default", m.start(), placeholder)
            if tracker.context() != "normal":
                raise fail(
                    "block placeholders must stand in plain shell text", m.start(), placeholder
                )
            out.append(blocks[key])
            tracker.feed(blocks[key])
            continue
        try:
            value = ctx.lookup(key)
        except KeyError:
            raise fail("unknown name", m.start(), placeholder) from None
        text_value = None if value is None else to_text(value)
        if text_value is None or (text_value == "" and default is not None):
            if default is None:
                raise fail("no value and no default", m.start(), placeholder)
            text_value = default
        for fname, fargs in filters:
            if fname not in FILTERS:
                raise fail(f"unknown filter {fname!r}", m.start(), placeholder)
            args = [a.strip() for a in fargs.split(",")] if fargs else []
            try:
                text_value = apply_filter(text_value, fname, args)
            except TypeError as exc:
                msg = f"bad arguments for filter {fname!r}: {exc}"
                raise fail(msg, m.start(), placeholder) from None
        try:
            safe = make_safe(text_value, tracker.context(), tracker.heredoc_delimiter)
        except UnsafeValue as exc:
            raise fail(str(exc), m.start(), placeholder) from None
        out.append(safe)
        tracker.feed(safe)
    emit_literal(text[pos:], pos)
    return "".join(out)
