"""The bounded regular-expression engine of the server's name and pattern filters.

ClearML's ``*.get_all`` take regular expressions from any client (``name``, ``_any_``/``_all_``
patterns). Python's ``re`` backtracks: ``^(a+)+$`` over a 28-character name takes half a
minute, during which the whole server waits. These filters therefore run on RE2 (the
``google-re2`` bindings), whose matching time is linear in the text and whose compiled program is
capped at :data:`MAX_PROGRAM_BYTES`. What RE2 refuses (back-references, look-around, a repetition
over 1000, a program over the cap, a pattern over :data:`MAX_PATTERN_CHARS`) raises
:class:`RegexRefused`, which ``fields`` answers as a ``400/12`` naming the field, never a wait.
"""

from __future__ import annotations

from typing import Protocol

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

#: Memory RE2 may use for one compiled filter (its DFA and program); past it, compile fails.
MAX_PROGRAM_BYTES = 8 << 20
#: The longest filter pattern accepted (ClearML's own names are at most 1024 characters).
MAX_PATTERN_CHARS = 4096


class Matcher(Protocol):
    """A compiled filter: ``search(text)`` is truthy when ``text`` contains a match."""

    def search(self, text: str) -> object | None: ...


def _options() -> object:
    options = re2.Options()
    options.case_sensitive = False  # ClearML's name filters ignore case (Mongo's $options "i")
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False  # a refused pattern is the client's 400, not a line on stderr
    return options


_OPTIONS = _options()


class RegexRefused(ValueError):
    """A pattern the bounded engine does not run; the message says why."""


def compile_filter(pattern: str) -> Matcher:
    """``pattern`` compiled for case-insensitive searching; :class:`RegexRefused` when it is too
    long or RE2 refuses it (not valid, or a construct without a linear-time match)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexRefused(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        matcher: Matcher = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexRefused(f"{reason} (RE2 syntax: no back-references or look-around)") from exc
    return matcher
