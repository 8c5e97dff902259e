"""Reading a ``${CLEARML_...}`` template once: its placeholders and where each one sits.

Grammar of a placeholder (anything else is left to the shell)::

    ${NAME[.dotted.path][|filter[(args)]]...[:default]}

``NAME`` is ``CLEARML_<UPPER_NAME>``, ``CLEARML_TASK``, ``CONFIG`` or ``CLEARML_CONFIG``.
``$${CLEARML_...}`` produces the literal text ``${CLEARML_...}``. Unbraced ``$CLEARML_X``
and every other ``$VAR``/``${VAR}`` are shell text, untouched.

:func:`parse` splits the text into literal pieces and :class:`Slot` s, each with the shell
context it sits in (``shell_context.py``) and, in an ``#SBATCH`` line, its spot in sbatch's
parse (``directives.py``). Everything that does not depend on a task is found here, so
:func:`problems` can check a template before any task is taken (``hpcagent-slurm`` does at
start) and rendering (``clearml.py``) only looks values up and places them.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hpcagent.errors import TemplateError
from hpcagent.templating.context import BLOCK_NAMES, SCALAR_NAMES
from hpcagent.templating.directives import Spot, locate
from hpcagent.templating.shell_context import FIRST_WORD, Mark, ShellContextTracker
from hpcagent.templating.values import FILTERS, SAFE_FILTERS

PLACEHOLDER = re.compile(
    r"(?P<escape>\$\$(?=\{(?:CLEARML_|CONFIG\.)))"
    r"|\$\{(?P<key>(?:CLEARML_[A-Za-z0-9_]+|CONFIG)(?:\.[^{}|:\s()]+)?)"
    r"(?P<filters>(?:\|[A-Za-z_]+(?:\([^(){}\n]*\))?)*)"
    r"(?::(?P<default>[^{}\n]*))?\}"
)
_FILTER = re.compile(r"\|([A-Za-z_]+)(?:\(([^()]*)\))?")
_MALFORMED = re.compile(r"\$\{(?:CLEARML_|CONFIG\.)[^}\n]*\}?")
NEUTRAL = "x"  # fed to the lexer in place of a value: a plain word, like a quoted value


@dataclass
class Slot:
    """One placeholder of a template and where it sits."""

    placeholder: str
    key: str
    filters: list[tuple[str, list[str]]]
    default: str | None
    line: int
    column: int
    mark: Mark
    spot: Spot | None = None  # in an #SBATCH line

    @property
    def block(self) -> bool:
        return self.key in BLOCK_NAMES

    @property
    def safe_filtered(self) -> bool:
        """A filter limits the value to characters without meaning to the shell."""
        names = {f for f, _ in self.filters}
        return "int" in names if self.mark.refused == FIRST_WORD else bool(names & SAFE_FILTERS)

    @property
    def in_comment(self) -> bool:
        """The value lands in a comment (a missing value renders empty there)."""
        return self.mark.context in ("comment", "comment_line") or (
            self.spot is not None and self.spot.state == "comment"
        )

    def error(self, template: str, message: str) -> TemplateError:
        return TemplateError(
            f"placeholder {self.placeholder}: {message}",
            template=template,
            line=self.line,
            column=self.column,
            placeholder=self.placeholder,
        )


@dataclass(frozen=True)
class Parsed:
    """A template read by :func:`parse`: literal text and slots, plus static problems."""

    name: str
    parts: tuple[str | Slot, ...]
    errors: tuple[TemplateError, ...]

    @property
    def slots(self) -> list[Slot]:
        return [p for p in self.parts if isinstance(p, Slot)]


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


@functools.lru_cache(maxsize=64)
def parse(text: str, name: str = "<template>") -> Parsed:
    """Split ``text`` into literal pieces and slots; see the module docstring."""
    tracker = ShellContextTracker()
    parts: list[str | Slot] = []
    errors: list[TemplateError] = []
    pos = 0

    def literal(chunk: str, start: int) -> None:
        for bad in _MALFORMED.finditer(chunk):
            line, col = _position(text, start + bad.start())
            errors.append(
                TemplateError(
                    f"placeholder {bad.group(0)}: malformed placeholder",
                    template=name,
                    line=line,
                    column=col,
                    placeholder=bad.group(0),
                )
            )
        parts.append(chunk)
        tracker.feed(chunk)

    for m in PLACEHOLDER.finditer(text):
        literal(text[pos : m.start()], pos)
        pos = m.end()
        if m.group("escape"):
            parts.append("$")
            tracker.feed("$")
            continue
        line, col = _position(text, m.start())
        filters = [
            (f, [a.strip() for a in args.split(",")] if args else [])
            for f, args in _FILTER.findall(m.group("filters") or "")
        ]
        mark = tracker.mark()
        slot = Slot(m.group(0), m.group("key"), filters, m.group("default"), line, col, mark)
        if mark.context == "directive":
            eol = text.find("\n", m.end())
            slot.spot = locate(mark.line_text, text[m.end() : eol if eol >= 0 else len(text)])
        parts.append(slot)
        tracker.feed(":" if slot.block else NEUTRAL)
    literal(text[pos:], pos)
    for slot in (p for p in parts if isinstance(p, Slot)):
        errors.extend(_slot_errors(slot, name))
    errors.sort(key=lambda e: (e.line or 0, e.column or 0))
    return Parsed(name, tuple(parts), tuple(errors))


def _slot_errors(slot: Slot, name: str) -> Iterable[TemplateError]:
    for fname, _args in slot.filters:
        if fname not in FILTERS:
            yield slot.error(name, f"unknown filter {fname!r}")
    if slot.block:
        if slot.filters or slot.default is not None:
            yield slot.error(name, "block placeholders take no filter or default")
        elif slot.mark.context != "normal":
            yield slot.error(name, "block placeholders must stand in plain shell text")
        return
    if slot.mark.refused and not slot.safe_filtered:
        fix = "|int" if slot.mark.refused == FIRST_WORD else "|int or |slug"
        yield slot.error(
            name,
            f"sits in {slot.mark.refused}; no quoting can protect a task value there: "
            f"move it to a plain or quoted word, or limit it with {fix}",
        )
    if slot.spot is not None and slot.spot.state == "escape":
        yield slot.error(name, "sits right after a backslash in a directive line")


def problems(
    text: str, name: str, extra_names: Iterable[str] = (), require_execute: bool = True
) -> list[TemplateError]:
    """Everything wrong with a template before any task is rendered with it.

    Static errors of :func:`parse`, unknown names (besides the built-in ones and
    ``extra_names``), and a missing ``${CLEARML_AGENT_EXECUTE}`` when ``require_execute``.
    """
    parsed = parse(text, name)
    found = list(parsed.errors)
    known = {*SCALAR_NAMES, *BLOCK_NAMES, *extra_names}
    for slot in parsed.slots:
        root = slot.key.partition(".")[0]
        if root in ("CLEARML_TASK", "CONFIG", "CLEARML_CONFIG"):
            if "." not in slot.key:
                found.append(slot.error(name, f"{root} needs a path ({root}.<field>)"))
        elif slot.key not in known:
            close = difflib.get_close_matches(slot.key, sorted(known), n=1)
            hint = f" (did you mean ${{{close[0]}}}?)" if close else ""
            found.append(slot.error(name, f"unknown name{hint}"))
    if require_execute and not any(s.key == "CLEARML_AGENT_EXECUTE" for s in parsed.slots):
        found.append(
            TemplateError(
                "no ${CLEARML_AGENT_EXECUTE}: the job would never run the task", template=name
            )
        )
    found.sort(key=lambda e: (e.line is None, e.line or 0, e.column or 0))
    return found
