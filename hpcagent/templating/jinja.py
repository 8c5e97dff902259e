"""Jinja2 templates (``*.j2``): StrictUndefined, ``shquote`` and the same context.

Safety: every ``{{ ... }}`` output passes through ``finalize``. Output of the quoting
filters (``shquote``, ``sbatch_quote``, ``sbatch_value``, ``slug``, ``int``) and the
trusted blocks is
emitted as it is; any other value is emitted only when it matches the directive-safe
charset (ids, numbers, simple names). Anything else is refused, so a task value cannot
reach the script unquoted by accident.

:func:`jinja_problems` reads the template's shell text the way ``analysis.py`` reads a
``*.template`` (each ``{{ ... }}`` as a plain word, ``{% %}``/``{# #}`` as nothing): an
expression where no quoting protects a value (a here-document, arithmetic, ``bash -c`` ...)
needs ``|int`` or ``|slug``, ``|shquote`` inside ``"..."`` or ``'...'`` is refused (its
quotes would be literal there, and ``$(...)`` in the value would run), and
``|sbatch_quote`` (free text quoted the way sbatch reads ``#SBATCH`` lines) belongs in an
unquoted value of an ``#SBATCH`` line only.
"""

from __future__ import annotations

import re
import shlex
import traceback
from typing import Any

import jinja2

from hpcagent.errors import TemplateError
from hpcagent.templating.context import BLOCK_NAMES, RenderContext
from hpcagent.templating.directives import Spot, locate, place
from hpcagent.templating.shell_context import ShellContextTracker
from hpcagent.templating.values import (
    DIRECTIVE_SAFE,
    UnsafeValue,
    check_directive,
    check_no_control,
    slug,
    to_int,
    to_text,
)

_TAG = re.compile(r"\{\{(?P<expr>.*?)\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


class _Safe(str):
    """Text that was quoted or validated by a filter, or a trusted block."""

    __slots__ = ()


def _shquote(value: Any) -> _Safe:
    text = to_text(value)
    check_no_control(text)
    return _Safe(shlex.quote(text))


def _sbatch_value(value: Any) -> _Safe:
    return _Safe(check_directive(to_text(value)))


def _slug(value: Any) -> _Safe:
    return _Safe(slug(to_text(value)))


def _sbatch_quote(value: Any) -> _Safe:
    text = to_text(value)
    check_no_control(text)
    return _Safe(place(text, Spot("word", "--comment")))


def _int(value: Any) -> _Safe:
    return _Safe(to_int(to_text(value)))


def _finalize(value: Any) -> Any:
    if isinstance(value, _Safe):
        return value
    if isinstance(value, _ConfigProxy):
        raise jinja2.UndefinedError(f"CONFIG.{value.path} is undefined (or not a single value)")
    if value is None:
        raise UnsafeValue("value is None")
    text = to_text(value)
    if text == "" or (DIRECTIVE_SAFE.fullmatch(text) and not text.startswith("-")):
        return text
    raise UnsafeValue(
        f"value {text!r} needs an explicit filter: |shquote (shell) or |sbatch_value / |slug "
        f"(#SBATCH lines)"
    )


def _line_from_traceback(exc: BaseException, name: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == name and frame.lineno is not None:
            line = frame.lineno
    return line


def render_jinja(text: str, ctx: RenderContext, template_name: str = "<template>") -> str:
    """Render a Jinja2 template; errors become :class:`TemplateError` with the line."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda _name: (text, template_name, lambda: True)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - the output is a shell script, not HTML
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["shquote"] = _shquote
    env.filters["sbatch_value"] = _sbatch_value
    env.filters["slug"] = _slug
    env.filters["int"] = _int
    env.filters["sbatch_quote"] = _sbatch_quote
    variables = ctx.jinja_vars()
    for key in ("CLEARML_PRE_SETUP", "CLEARML_AGENT_EXECUTE", "CLEARML_POST_SETUP"):
        variables[key] = _Safe(variables[key])
    variables["CONFIG"] = _ConfigProxy(ctx)
    found = jinja_problems(text, template_name)
    if found:
        raise found[0]
    try:
        template = env.get_template(template_name)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"syntax error: {exc.message}", template=template_name, line=exc.lineno
        ) from None
    try:
        return template.render(variables)
    except (jinja2.UndefinedError, UnsafeValue, jinja2.TemplateError) as exc:
        line = _line_from_traceback(exc, template_name)
        raise TemplateError(str(exc), template=template_name, line=line) from None


def jinja_problems(text: str, template_name: str) -> list[TemplateError]:
    """Syntax errors and unsafe placements of a Jinja2 template (see the module docstring)."""
    try:
        jinja2.Environment(autoescape=False).parse(text, template_name)  # noqa: S701
    except jinja2.TemplateSyntaxError as exc:
        return [
            TemplateError(f"syntax error: {exc.message}", template=template_name, line=exc.lineno)
        ]
    tracker = ShellContextTracker()
    found: list[TemplateError] = []
    pos = 0
    for m in _TAG.finditer(text):
        tracker.feed(text[pos : m.start()])
        pos = m.end()
        expr = m.group("expr")
        if expr is None:
            continue
        mark = tracker.mark()
        tracker.feed("x")
        filters = set(re.findall(r"\|\s*([A-Za-z_]+)", expr))
        line = text.count("\n", 0, m.start()) + 1
        column = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        why = ""
        if any(b in expr for b in BLOCK_NAMES):
            why = (
                ""
                if mark.context == "normal"
                else "block placeholders must stand in plain shell text"
            )
        elif mark.refused and not filters & {"int", "slug"}:
            why = f"sits in {mark.refused}; no quoting protects a task value there: |int or |slug"
        elif "sbatch_quote" in filters and (
            mark.context != "directive" or locate(mark.line_text, "").state not in ("word", "start")
        ):
            why = "|sbatch_quote belongs in an unquoted value of an #SBATCH line"
        elif "shquote" in filters and mark.context in ("single", "double"):
            why = (
                "|shquote inside quotes: its quotes would be literal there; put it in a plain word"
            )
        if why:
            found.append(
                TemplateError(
                    f"{{{{{expr}}}}}: {why}",
                    template=template_name,
                    line=line,
                    column=column,
                    placeholder=m.group(0),
                )
            )
    return found


class _ConfigProxy:
    """``CONFIG.agent.x`` / ``CONFIG['agent.x']`` in Jinja2 (StrictUndefined when missing)."""

    def __init__(self, ctx: RenderContext, prefix: str = "") -> None:
        self._ctx = ctx
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return self[name]

    def __getitem__(self, name: str) -> Any:
        path = f"{self._prefix}.{name}" if self._prefix else name
        value = self._ctx.config(path, None)
        if value is None or isinstance(value, dict):
            # a sub-tree, or a leaf that may not exist: decided when it is printed
            return _ConfigProxy(self._ctx, path)
        return value

    @property
    def path(self) -> str:
        return self._prefix
