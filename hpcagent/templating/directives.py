"""Values in ``#SBATCH`` lines, placed the way sbatch itself reads them.

sbatch (``src/sbatch/opt.c``: ``_opt_batch_script`` and ``get_argument``) reads the lines
that start with ``#SBATCH`` or ``#SLURM`` at column 0, until the first line that is not a
comment, and splits each into arguments:

* whitespace separates arguments, except inside ``"..."`` or ``'...'`` (either quote
  groups characters, and the quotes are dropped);
* a backslash makes the next character literal, inside quotes too (``\\"``, ``\\\\``);
* an unquoted, unescaped ``#`` ends the line (a comment);
* an argument that starts with ``hetjob``/``packjob`` (then a space or the end) is a
  het-job separator, one that starts with ``:`` is fatal, an unmatched quote is fatal.

So a value that is free text (a job name, a comment, part of a file name) is written in
double quotes with ``\\`` and ``"`` escaped; inside the template's own quotes only the
escapes are added. sbatch then hands the exact value to the option. A value that stands
as an argument of its own (not the value of an option) could add an option: it must be
plain (:data:`PLAIN`) and not start with ``-``. Options that take a number or a duration
(:data:`NUMERIC`) must get one: a wrong value fails the task before sbatch is called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcagent.templating.values import DIRECTIVE_SAFE, UnsafeValue

#: The line starts sbatch reads as directives (at column 0).
SBATCH_MAGIC = ("#SBATCH", "#SLURM")
PLAIN = DIRECTIVE_SAFE
_SEPARATOR = re.compile(r"(?i)(hetjob|packjob)(\s|$)")

_COUNT = (re.compile(r"\d+"), "a whole number")
_TIME = (
    re.compile(r"(?i)\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}|unlimited|infinite"),
    "a time limit (minutes, [HH:]MM:SS or D-HH[:MM[:SS]])",
)
_MEM = (re.compile(r"\d+[KMGTkmgt]?"), "a size such as 4096, 16G or 512M")
_GPUS = (re.compile(r"([A-Za-z0-9_.-]+:)?\d+"), "a GPU count, optionally type:count")
#: Options with a numeric value → (whole-value grammar, how it is described).
NUMERIC: dict[str, tuple[re.Pattern[str], str]] = {
    "--nodes": (re.compile(r"\d+(-\d+)?"), "a number of nodes or a range such as 2-4"),
    "-N": (re.compile(r"\d+(-\d+)?"), "a number of nodes or a range such as 2-4"),
    "--ntasks": _COUNT,
    "-n": _COUNT,
    "--ntasks-per-node": _COUNT,
    "--cpus-per-task": _COUNT,
    "-c": _COUNT,
    "--cpus-per-gpu": _COUNT,
    "--gpus": _GPUS,
    "-G": _GPUS,
    "--gpus-per-node": _GPUS,
    "--gpus-per-task": _GPUS,
    "--gpus-per-socket": _GPUS,
    "--time": _TIME,
    "-t": _TIME,
    "--time-min": _TIME,
    "--mem": _MEM,
    "--mem-per-cpu": _MEM,
    "--mem-per-gpu": _MEM,
}


#: Options whose value may be the next argument (``-J NAME``), so it may start with ``-``.
TAKES_VALUE = frozenset(
    {*NUMERIC, "-J", "--job-name", "--comment", "-o", "--output", "-e", "--error", "-i",
     "--input", "-p", "--partition", "-A", "--account", "-q", "--qos", "--gres", "-D",
     "--chdir", "-C", "--constraint", "-w", "--nodelist", "-x", "--exclude", "-a", "--array",
     "-d", "--dependency", "--begin", "--mail-user", "--mail-type", "--export", "-L",
     "--licenses", "--reservation", "--wckey", "--signal"}
)  # fmt: skip


@dataclass(frozen=True)
class Spot:
    """Where a placeholder sits in a directive line (computed once per template)."""

    state: str  # start | word | dq | sq | comment | escape | strict
    option: str = ""  # the option whose value this is ("" when none)
    whole: bool = False  # the placeholder is the option's whole value


def locate(prefix: str, suffix: str) -> Spot:
    """The :class:`Spot` of a placeholder between ``prefix`` and ``suffix`` of its line.

    ``prefix`` starts with the magic word (``#SBATCH``); other placeholders in it have been
    replaced by a plain word, which leaves the parser's state as their quoted values do.
    """
    if not prefix.startswith(SBATCH_MAGIC):
        return Spot("strict")  # another scheduler's directive: plain values only
    arg, args, quote, escape = "", [], "", False
    i = len(next(m for m in SBATCH_MAGIC if prefix.startswith(m)))
    while i < len(prefix):
        c = prefix[i]
        i += 1
        if escape:
            escape = False
            arg += c
            continue
        if c == "\\":
            escape = True
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                arg += c
            continue
        if c in "\"'":
            quote = c
            continue
        if c == "#":
            return Spot("comment")
        if c.isspace():
            if arg:
                args.append(arg)
            arg = ""
            continue
        arg += c
    if escape:
        return Spot("escape")
    state = "dq" if quote == '"' else "sq" if quote == "'" else ("word" if arg else "start")
    option = ""
    if "=" in arg and arg.startswith("-"):
        option = arg.split("=", 1)[0]
        whole = arg.endswith("=") and arg.count("=") == 1
    elif not arg and args and args[-1].startswith("-") and "=" not in args[-1]:
        option, whole = args[-1], True  # "-N ${X}" / "--nodes ${X}"
    else:
        whole = False
    if option.startswith("-") and not option.startswith("--") and len(option) > 2:
        option, whole = option[:2], False  # "-N2": a short option glued to its value
    tail = re.match(r"[^\s#]*", suffix)
    whole = whole and quote == "" and tail is not None and tail.group(0) == ""
    return Spot(state, option, whole)


def place(value: str, spot: Spot) -> str:
    """``value`` written at ``spot`` so that sbatch reads exactly ``value``.

    Raises :class:`UnsafeValue` when that cannot be done (see the module docstring).
    """
    if spot.state == "escape":
        raise UnsafeValue("placeholder right after a backslash in a directive line")
    if spot.state == "strict":
        if not value or value.startswith("-") or not PLAIN.fullmatch(value):
            raise UnsafeValue(
                f"value {value!r} is not plain (letters, digits and _.,:=@%+/-, not starting "
                "with -) in a directive line; try |slug"
            )
        return value
    numeric = NUMERIC.get(spot.option)
    if numeric is not None and spot.state in ("start", "word"):
        grammar, what = numeric if spot.whole else (re.compile(r"\d*"), "digits")
        if not grammar.fullmatch(value):
            raise UnsafeValue(f"value {value!r} is not valid for {spot.option}: expected {what}")
        return value
    if spot.state == "dq":
        return _double_quoted(value)[1:-1]
    if spot.state == "sq":
        return value.replace("\\", "\\\\").replace("'", "\\'")
    if spot.state == "start" and not spot.option:
        if not value:
            raise UnsafeValue("empty value where sbatch expects an argument")
        if value.startswith("-") or not PLAIN.fullmatch(value) or _SEPARATOR.match(value):
            raise UnsafeValue(
                f"value {value!r} stands as an argument of its own in a directive line, where "
                "it could add an option: put it after an option (--comment=...) or use |slug"
            )
        return value
    if spot.state == "start":
        if not value:
            raise UnsafeValue(f"empty value for {spot.option}")
        if value.startswith("-") and spot.option not in TAKES_VALUE:
            raise UnsafeValue(
                f"value {value!r} starts with '-' after {spot.option}, which may take no "
                "value: write --option=value"
            )
        if _SEPARATOR.match(value) or value.startswith(":"):
            return _double_quoted(value)  # else a het-job separator / fatal for sbatch
    if PLAIN.fullmatch(value):
        return value
    return _double_quoted(value)


def _double_quoted(value: str) -> str:
    """``"value"`` with ``\\`` and ``"`` escaped, as sbatch's splitter reads it back."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
