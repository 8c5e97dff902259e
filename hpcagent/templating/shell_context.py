"""A small incremental lexer that tells in which shell context a placeholder sits.

The analysis (``analysis.py``) feeds the template's literal text into
:class:`ShellContextTracker`, with a neutral word in place of each placeholder, and asks
:meth:`ShellContextTracker.mark` at each placeholder. Quoting a value never changes the
shell state around it, so the contexts found this way hold for every task, and a template
can be checked once, when the submitter starts. The contexts:

``shebang``
    the ``#!`` line: the value must match a strict charset.
``directive``
    a scheduler directive line (``#SBATCH``, ``#SLURM``, ``#$``, ``#PBS``, ``#BSUB`` at the
    start of the line): placed by ``directives.py`` the way sbatch reads it.
``comment_line`` / ``comment``
    any other full-line comment / a comment after a command: control characters removed.
``normal``
    unquoted shell text (also inside ``$(...)`` and subshells): ``shlex.quote``.
``single`` / ``double``
    inside ``'...'`` / ``"..."``: escaped for that quoting.

A placeholder where no quoting can protect the value gets a *refusal* instead (the
template is refused at start unless the placeholder has a filter that limits it to safe
characters): a here-document body, arithmetic (``(( ))``, ``$(( ))``, ``let``,
``declare -i``, an array subscript, ``[[ ... -gt ... ]]``), a variable name or the value of
``declare -a/-A/-n`` (``declare``, ``local``, ``read``, ``printf -v``, ``test -v`` ...: bash
evaluates subscripts there), the argument of a command that runs its argument as code
(``eval``, ``bash -c``, ``srun bash -c``, ``ssh``, ``trap``, ``python -c`` ...), a pipeline,
here-string or process substitution read by a shell or an interpreter
(``echo ${X} | bash``, ``bash <<< ${X}``), right after a backslash, inside
backticks, ``$'...'`` or a shell ``${...}`` expansion, and the first word of a comment line
(it could become ``#SBATCH``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD_BREAKS = frozenset(" \t\n;&|()<>")
#: Line prefixes of scheduler directives (sbatch reads ``#SBATCH``/``#SLURM`` at column 0).
DIRECTIVE_PREFIXES = ("#SBATCH", "#SLURM", "#$", "#PBS", "#BSUB")
_SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh"})
_CODE_FLAG = {
    **dict.fromkeys(_SHELLS, "c"),
    "su": "c",
    "runuser": "c",
    "flock": "c",
    "script": "c",
    "perl": "eE",
    "ruby": "e",
    "node": "e",
    "Rscript": "e",
}
_ALWAYS_CODE = frozenset({"eval", "trap", "ssh", "watch", "xargs", "parallel", "alias"})
_ARITH_OPS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
_ASSIGN_SUBSCRIPT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\[[^\]]*$")

HEREDOC = "a here-document body (its text may be read by a shell or a program as code)"
ARITH = "arithmetic (bash evaluates $(...) inside array subscripts of the value)"
NAME = "a variable name (bash evaluates $(...) in array subscripts of names)"
BACKSLASH = "right after a backslash (it would unquote the value's first character)"
CONSTRUCT = "a backtick, $'...' or ${...} expansion, where no quoting is both safe and exact"
FIRST_WORD = "the first word of a comment line (the value could turn it into a directive)"


@dataclass
class Mark:
    """The context of one placeholder; ``refused`` says why no quoting protects it there."""

    context: str
    refused: str | None = None
    line_text: str = ""  # the physical line up to the placeholder (for directives)
    words: list[str] = field(default_factory=list)


@dataclass
class _Heredoc:
    delimiter: str
    strip_tabs: bool
    quoted: bool


_SCAN_ALL = frozenset({"su", "runuser", "flock", "script"})  # their -c may follow other words
_TAKES_WORD = frozenset({"-o", "+o", "-O", "+O", "-W", "-X", "-I", "-M"})


def _options(words: list[str], scan_all: bool) -> list[str]:
    """The option words of a command: up to its first operand (``bash x.sh -c`` passes
    ``-c`` to the script), or all of them for ``scan_all`` commands."""
    if scan_all:
        return words
    out: list[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("-m", "--") or not w.startswith(("-", "+")):
            break
        out.append(w)
        skip = w in _TAKES_WORD
    return out


def _runs_code(word: str) -> bool:
    """``word`` is a command that runs the text it reads as code (a shell, an interpreter)."""
    base = word.rsplit("/", 1)[-1]
    return (
        base in _SHELLS
        or base in ("eval", "source", ".", "xargs", "parallel", "perl", "ruby", "node", "php")
        or re.fullmatch(r"python[0-9.]*", base) is not None
    )


def _unquote(word: str) -> str:
    return word.replace("'", "").replace('"', "").replace("\\", "")


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
        self._lineno = 1
        self._prev = "\n"  # previous character (for word-start detection)
        self._skip_next = False
        self._word = ""  # the word being read at command level
        self._words: list[str] = []  # completed words of the current simple command
        self._saved: list[tuple[str, list[str]]] = []  # words outside each $( / (
        self._dbrack: list[Mark] | None = None  # marks inside an open [[ ... ]]
        self._dbrack_arith = False
        self._pipeline: list[Mark] = []  # marks of the pipeline read so far
        self._after_pipe = False  # the next first word reads the pipeline's output
        self._procsub_of: list[str] = []  # first word of the command around each <( ... )

    # -- public -----------------------------------------------------------------
    def context(self) -> str:
        """The context a value inserted at the current position would land in."""
        top = self._stack[-1]
        if self._heredoc is not None and top == "heredoc":
            return "heredoc"
        if self._lineno == 1 and self._line.startswith("#!"):
            return "shebang"
        if self._comment and self._comment_full_line:
            if self._line.startswith(DIRECTIVE_PREFIXES):
                return "directive"
            return "comment_line"
        if self._comment:
            return "comment"
        if top in ("normal", "cmdsub", "paren"):
            return "normal"
        if top in ("single", "double"):
            return top
        if top == "arith":
            return "arith"
        return "construct"

    def mark(self) -> Mark:
        """The :class:`Mark` of a placeholder at the current position."""
        ctx = self.context()
        mark = Mark(ctx, self._refusal(ctx), self._line, [_unquote(w) for w in self._words])
        if ctx in ("normal", "single", "double"):
            if self._dbrack is not None:
                self._dbrack.append(mark)
            self._pipeline.append(mark)
        return mark

    def feed(self, text: str) -> None:
        """Advance the state over ``text``."""
        i = 0
        n = len(text)
        while i < n:
            i = self._step(text, i)

    # -- refusals ----------------------------------------------------------------
    def _refusal(self, ctx: str) -> str | None:
        if ctx == "heredoc":
            return HEREDOC
        if ctx == "arith":
            return ARITH
        if ctx == "construct":
            return CONSTRUCT
        if ctx == "comment_line":
            head = self._line.lstrip()[1:]
            return FIRST_WORD if not any(c in head for c in " \t") else None
        if ctx not in ("normal", "single", "double"):
            return None
        if self._skip_next:
            return BACKSLASH
        if self._stack[-1] == "normal" and _ASSIGN_SUBSCRIPT.match(self._word):
            return ARITH
        return self._command_refusal()

    def _command_refusal(self) -> str | None:
        words = [_unquote(w) for w in self._words]
        if words and "<<<" in words and _runs_code(words[0]):
            return f"a here-string read by '{words[0]}', which runs it as code"
        outer = next((w for w in reversed(self._procsub_of) if w), "")
        if _runs_code(outer):
            return f"a process substitution read by '{outer}', which runs it as code"
        if (
            words
            and words[-1] in ("-v", "-R")
            and any(w in ("test", "[", "[[", "printf") for w in words)
        ):
            return NAME
        for i, word in enumerate(words):
            base = word.rsplit("/", 1)[-1]
            rest = words[i + 1 :]
            if base in ("unset", "read", "mapfile", "readarray"):
                return NAME
            if base in ("declare", "typeset", "local", "readonly", "export") and (
                "=" not in self._word  # the name itself, or the value of a ref/array:
                or any(re.fullmatch(r"-[A-Za-z]*[naA][A-Za-z]*", w) for w in rest)
            ):
                return NAME
            if base in _ALWAYS_CODE:
                return f"an argument of '{base}', which runs it as shell code"
            if base == "let":
                return ARITH
            if base in ("declare", "typeset", "local") and any(
                re.fullmatch(r"-[A-Za-z]*i[A-Za-z]*", w) for w in rest
            ):
                return ARITH
            if word.startswith("--wrap"):
                return "the --wrap command of sbatch, which runs it as shell code"
            flags = _CODE_FLAG.get(base) or ("c" if re.fullmatch(r"python[0-9.]*", base) else "")
            for w in _options(rest, scan_all=base in _SCAN_ALL) if flags else []:
                if re.fullmatch(rf"-[A-Za-z]*[{flags}][A-Za-z]*", w):
                    return f"the code argument of '{base} {w}', which runs it as code"
        return None

    # -- internals ---------------------------------------------------------------
    def _end_word(self) -> None:
        if not self._word:
            return
        word = _unquote(self._word)
        self._word = ""
        if self._after_pipe and not self._words:
            self._after_pipe = False
            if _runs_code(word):
                for mark in self._pipeline:
                    mark.refused = (
                        mark.refused or f"a pipeline into '{word}', which runs it as code"
                    )
        if word == "[[":
            self._dbrack, self._dbrack_arith = [], False
        elif word == "]]" and self._dbrack is not None:
            if self._dbrack_arith:
                for mark in self._dbrack:
                    mark.refused = mark.refused or ARITH
            self._dbrack = None
        elif self._dbrack is not None and word in _ARITH_OPS:
            self._dbrack_arith = True
        self._words.append(word)

    def _end_command(self, pipe: bool = False) -> None:
        self._end_word()
        self._words = []
        self._after_pipe = pipe
        if not pipe:
            self._pipeline = []

    def _newline(self) -> None:
        line = self._line
        self._line = ""
        self._lineno += 1
        self._comment = False
        self._comment_full_line = False
        if self._stack[-1] in ("normal", "cmdsub", "paren"):
            self._end_command()
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
        top = self._stack[-1]
        if self._skip_next:
            self._skip_next = False
            if c == "\n":  # a line continuation: the command goes on
                self._line = ""
                self._lineno += 1
            else:
                self._line += c
                self._word += c
            self._prev = c
            return i + 1
        if c == "\n":
            self._newline()
            self._prev = c
            return i + 1
        self._line += c
        consumed = 1
        if self._comment or top == "single":
            if top == "single" and c == "'" and not self._comment:
                self._stack.pop()
            if not self._comment:
                self._word += c
        elif top == "heredoc":
            pass  # a body is never read for placeholders' sake: every placeholder there is refused
        elif top in ("ansi", "backtick"):
            if c == "\\":
                self._skip_next = True
            elif c == ("'" if top == "ansi" else "`"):
                self._stack.pop()
        elif top == "double":
            if c == '"':
                self._stack.pop()
                self._word += c
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
            self._word += c
        elif c == "$" and nxt == "(":
            if text[i + 2 : i + 3] == "(":
                self._stack.append("arith")
                self._line += "(("
                return 3
            self._stack.append("cmdsub")
            self._saved.append((self._word, self._words))
            self._word, self._words = "", []
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
            self._word += c
        elif allow_quotes and c == '"':
            self._stack.append("double")
            self._word += c
        else:
            self._word += c
        return 1

    def _normal(self, text: str, i: int, c: str, nxt: str) -> int:
        if c == "#" and self._prev in _WORD_BREAKS:
            self._end_word()
            self._comment = True
            self._comment_full_line = self._line.strip() == "#"
            return 1
        if c in " \t":
            self._end_word()
            return 1
        if c in ";&|":
            single_pipe = c == "|" and nxt != "|" and self._prev != "|"
            self._end_command(pipe=single_pipe)
            return 1
        if c == "$" and nxt == "'":
            self._stack.append("ansi")
            self._line += "'"
            return 2
        if c == "(" and nxt == "(":
            self._end_word()
            self._stack.append("arith")
            self._line += "("
            return 2
        if c == "(":
            procsub = self._prev in "<>" and self._line[-2:-1] in ("<", ">")
            self._end_word()
            self._stack.append("paren")
            self._saved.append(("", self._words))
            self._procsub_of.append(_unquote(self._words[0]) if procsub and self._words else "")
            self._words = []
            return 1
        if c == ")":
            self._end_word()
            if self._stack[-1] in ("paren", "cmdsub"):
                if self._stack.pop() == "paren" and self._procsub_of:
                    self._procsub_of.pop()
                self._word, self._words = self._saved.pop() if self._saved else ("", [])
            return 1
        if c == "<" and nxt == "<":
            self._end_word()
            if text[i + 2 : i + 3] == "<":  # here-string: an ordinary word follows
                self._line += "<<"
                self._words.append("<<<")
                return 3
            return self._heredoc_start(text, i)
        if c in "<>":
            self._end_word()
            return 1
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
        delimiter = _unquote(word)
        if delimiter:
            self._pending.append(_Heredoc(delimiter, strip_tabs, quoted))
        self._line += text[i + 1 : k]
        return max(k - i, 2)
