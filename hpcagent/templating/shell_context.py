"""A small incremental lexer that tells in which shell context a placeholder sits.

The renderer feeds the template's literal text (and every value it inserts) into
:class:`ShellContextTracker` and asks :meth:`ShellContextTracker.context` at each
placeholder. The answer decides how the value is made safe (see ``values.py``):

``directive``
    an ``#SBATCH`` line or the ``#!`` line: the value must match a strict charset.
``comment``
    a trailing comment after a command (``echo hi  # ...``): inserted as it is.
``normal``
    unquoted shell text (also inside ``$(...)`` and subshells): ``shlex.quote``.
``single`` / ``double``
    inside ``'...'`` / ``"..."``: escaped for that quoting.
``heredoc_literal`` / ``heredoc_expand``
    the body of ``<<'EOF'`` / ``<<EOF``.
``unsupported``
    anywhere else (backticks, ``$'...'``, ``${...}`` shell expansions, ``$((...))``):
    the renderer refuses, because no escaping is both safe and faithful there.

A full-line comment (a line whose first non-blank character is ``#``) counts as
``directive`` too: sbatch scans such lines, so a value there must never be able to
turn the line into ``#SBATCH ...``.

The lexer is deliberately conservative: it understands the constructs sbatch
templates use (quotes, comments, command substitution, here-documents, line
continuations) and reports ``unsupported`` rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

_WORD_BREAKS = frozenset(" \t\n;&|()<>")


@dataclass
class _Heredoc:
    delimiter: str
    strip_tabs: bool
    quoted: bool


class ShellContextTracker:
    """Follows the quoting state of a bash script fed to it piece by piece."""

    def __init__(self) -> None:
        # Bottom of the stack is always "normal". Other entries: single, double,
        # ansi, backtick, cmdsub, paren, param, arith, heredoc (a body being read).
        self._stack: list[str] = ["normal"]
        self._comment = False
        self._comment_full_line = False
        self._pending: list[_Heredoc] = []
        self._heredoc: _Heredoc | None = None
        self._line = ""  # text of the current physical line so far
        self._prev = "\n"  # previous character (for word-start detection)
        self._skip_next = False

    # -- public -----------------------------------------------------------------
    def context(self) -> str:
        """The context a value inserted at the current position would land in."""
        top = self._stack[-1]
        if self._heredoc is not None and top == "heredoc":
            return "heredoc_literal" if self._heredoc.quoted else "heredoc_expand"
        if self._line.startswith("#!"):
            return "directive"
        if self._comment:
            return "directive" if self._comment_full_line else "comment"
        if top in ("normal", "cmdsub", "paren"):
            return "normal"
        if top in ("single", "double"):
            return top
        return "unsupported"

    @property
    def heredoc_delimiter(self) -> str | None:
        """Delimiter of the here-document whose body is being read, if any."""
        return self._heredoc.delimiter if self._heredoc is not None else None

    def feed(self, text: str) -> None:
        """Advance the state over ``text``."""
        i = 0
        n = len(text)
        while i < n:
            i = self._step(text, i)

    # -- internals ---------------------------------------------------------------
    def _newline(self) -> None:
        line = self._line
        self._line = ""
        self._comment = False
        self._comment_full_line = False
        if self._heredoc is not None and self._stack[-1] == "heredoc":
            body_line = line.lstrip("\t") if self._heredoc.strip_tabs else line
            if body_line == self._heredoc.delimiter:
                self._stack.pop()
                self._heredoc = None
        if self._heredoc is None and self._pending and self._stack[-1] in ("normal", "paren"):
            self._heredoc = self._pending.pop(0)
            self._stack.append("heredoc")

    def _step(self, text: str, i: int) -> int:
        c = text[i]
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if self._skip_next:
            self._skip_next = False
            if c == "\n":
                self._line = ""
            else:
                self._line += c
            self._prev = c
            return i + 1
        if c == "\n":
            self._newline()
            self._prev = c
            return i + 1
        self._line += c
        top = self._stack[-1]
        consumed = 1
        if self._comment or top == "single":
            if top == "single" and c == "'" and not self._comment:
                self._stack.pop()
        elif top == "heredoc":
            if self._heredoc is not None and not self._heredoc.quoted:
                consumed = self._expansions(text, i, c, nxt, allow_quotes=False)
        elif top == "ansi":
            if c == "\\":
                self._skip_next = True
            elif c == "'":
                self._stack.pop()
        elif top == "backtick":
            if c == "\\":
                self._skip_next = True
            elif c == "`":
                self._stack.pop()
        elif top == "double":
            if c == '"':
                self._stack.pop()
            else:
                consumed = self._expansions(text, i, c, nxt, allow_quotes=False)
        elif top == "param":
            if c == "}":
                self._stack.pop()
            else:
                consumed = self._expansions(text, i, c, nxt, allow_quotes=True)
        elif top == "arith":
            if c == ")" and nxt == ")":
                self._stack.pop()
                self._line += nxt
                consumed = 2
        else:  # normal, cmdsub, paren
            consumed = self._normal(text, i, c, nxt)
        self._prev = text[i + consumed - 1]
        return i + consumed

    def _expansions(self, text: str, i: int, c: str, nxt: str, *, allow_quotes: bool) -> int:
        """Handle ``\\``, ``$(``, ``${``, ``$((`` and backticks; quotes when allowed."""
        if c == "\\":
            self._skip_next = True
        elif c == "$" and nxt == "(":
            if text[i + 2 : i + 3] == "(":
                self._stack.append("arith")
                self._line += "(("
                return 3
            self._stack.append("cmdsub")
            self._line += "("
            return 2
        elif c == "$" and nxt == "{":
            self._stack.append("param")
            self._line += "{"
            return 2
        elif c == "`":
            self._stack.append("backtick")
        elif allow_quotes and c == "'":
            self._stack.append("single")
        elif allow_quotes and c == '"':
            self._stack.append("double")
        return 1

    def _normal(self, text: str, i: int, c: str, nxt: str) -> int:
        if c == "#" and self._prev in _WORD_BREAKS:
            self._comment = True
            self._comment_full_line = self._line.strip() == "#"
            return 1
        if c == "$" and nxt == "'":
            self._stack.append("ansi")
            self._line += "'"
            return 2
        if c == "(":
            self._stack.append("paren")
            return 1
        if c == ")":
            if self._stack[-1] in ("paren", "cmdsub"):
                self._stack.pop()
            return 1
        if c == "<" and nxt == "<":
            if text[i + 2 : i + 3] == "<":  # here-string: an ordinary word follows
                self._line += "<<"
                return 3
            return self._heredoc_start(text, i)
        return self._expansions(text, i, c, nxt, allow_quotes=True)

    def _heredoc_start(self, text: str, i: int) -> int:
        j = i + 2
        strip_tabs = False
        if text[j : j + 1] == "-":
            strip_tabs = True
            j += 1
        while j < len(text) and text[j] in " \t":
            j += 1
        k = j
        while k < len(text) and text[k] not in _WORD_BREAKS:
            k += 1
        word = text[j:k]
        quoted = any(q in word for q in "'\"\\")
        delimiter = word.replace("'", "").replace('"', "").replace("\\", "")
        if delimiter:
            self._pending.append(_Heredoc(delimiter, strip_tabs, quoted))
        self._line += text[i + 1 : k]
        return max(k - i, 2)
