"""Adversarial task values through rendering into real bash: nothing they carry runs.

Each example renders templates that place the same task value in every shell context
the renderer accepts, checks ``bash -n``, runs the script for real (with a harmless
``${CLEARML_AGENT_EXECUTE}``) and checks that no marker file appeared, that the script
has exactly the template's lines and directives, and that the value came through
byte for byte wherever it was printed. ``#SBATCH`` lines are read back with a port of
sbatch's own argument splitter (:func:`sbatch_args`); tests/slurm does it with sbatch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcagent.errors import TemplateError
from hpcagent.templating import RenderContext, render_string
from hpcagent.templating.values import slug

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")

SHELL_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}
set -u
printf '%s\\n' ${CLEARML_TASK.name}
printf '%s\\n' "${CLEARML_TASK.name}"
printf '%s\\n' 'before${CLEARML_TASK.name}after'
printf '%s\\n' "$(printf '%s' ${CLEARML_TASK.hyperparams.Args.lr.value})"
v=${CLEARML_TASK.name}; printf '%s\\n' "$v"  # trailing comment ${CLEARML_TASK.name}
cat <<END_OF_TEXT
${CLEARML_TASK.name|slug}
END_OF_TEXT
${CLEARML_AGENT_EXECUTE}
"""

DIRECTIVE_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --comment=${CLEARML_TASK.name}
# queue ${CLEARML_TASK.name}
#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}
#SBATCH -J ${CLEARML_TASK.name} --output="${CLEARML_TASK.name}" --error='${CLEARML_TASK.name}'
echo ok
"""

JINJA_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_{{ CLEARML_TASK.id }}
#SBATCH --comment={{ CLEARML_TASK.name | slug }}
printf '%s\\n' {{ CLEARML_TASK.name | shquote }}
{{ CLEARML_AGENT_EXECUTE }}
"""

PAYLOADS = [
    "$(touch {m})",
    "`touch {m}`",
    "'; touch {m}; '",
    '"; touch {m}; "',
    "\\'; touch {m} #",
    "a b; touch {m}",
    "x && touch {m}",
    "x | tee {m}",
    "> {m}",
    "$(touch {m})\n#SBATCH --wrap=touch {m}",
    "\n#SBATCH --output={m}",
    "EOF\ntouch {m}",
    "END_OF_TEXT",
    "${{IFS}}touch${{IFS}}{m}",
    "$'\\x27'; touch {m}",
    "-o{m}",
    "--wrap=touch {m}",
    "#SBATCH --output={m}",
    "SBATCH --output={m}",
    "hetjob",
    "packjob --wrap=touch {m}",
    ":x",
    "\\",
    "",
    "\t",
    "!!; touch {m}",
    "{{a,b}}; touch {m}",
    "a[$(touch {m})]",
]

text_values = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.text(alphabet="$`'\"\\;|&<>(){}[]*?!#~ \t\nabcEOF=-%", max_size=30),
    st.lists(st.sampled_from(PAYLOADS), min_size=2, max_size=3).map("".join),
)

FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _task(name: str, lr: str, nodes: str) -> dict[str, Any]:
    return {
        "id": "a" * 32,
        "name": name,
        "hyperparams": {
            "Args": {"lr": {"value": lr}},
            "properties": {"num_nodes": {"value": nodes}},
        },
    }


def _ctx(task: dict[str, Any]) -> RenderContext:
    return RenderContext(task=task, queue_name="q", agent_execute="echo AGENT_EXECUTE_RAN")


def _render(template: str, task: dict[str, Any], name: str) -> str | None:
    try:
        return render_string(template, _ctx(task), name)
    except TemplateError:
        return None  # refused: nothing is submitted


def _has_control(value: str) -> bool:
    return any((ord(c) < 32 and c != "\t") or c == "\x7f" for c in value)


def _flat(value: str) -> str:
    """What a ``*.template`` renders: newlines removed, as ClearML's default filter does."""
    return value.replace("\n", "")


def sbatch_args(line: str) -> list[str]:
    """The arguments sbatch reads from one ``#SBATCH`` line: a port of ``get_argument`` in
    Slurm's src/sbatch/opt.c (quotes group and are dropped, a backslash makes the next
    character literal, an unquoted ``#`` ends the line)."""
    assert line.startswith("#SBATCH")
    rest, args, i = line[len("#SBATCH") :], [], 0
    while True:
        while i < len(rest) and rest[i].isspace():
            i += 1
        head = rest[i:].lower()
        for word in ("hetjob", "packjob"):  # a het-job separator where an argument starts
            assert not (head.startswith(word) and head[len(word) : len(word) + 1].strip() == "")
        arg: list[str] | None = None
        quote, escape = "", False
        while i < len(rest) and (quote or not rest[i].isspace()):
            c = rest[i]
            if escape:
                escape = False
            elif c == "\\":
                i += 1
                escape = True
                continue
            elif quote:
                if c == quote:
                    quote = ""
                    i += 1
                    continue
            elif c in "\"'":
                quote = c
                i += 1
                continue
            elif c == "#":
                break
            arg = [*(arg or []), c]
            i += 1
        assert not quote, f"sbatch: unmatched quote in {line!r}"
        if arg is None:
            return args
        args.append("".join(arg))


def _directives(script: str) -> list[str]:
    """The ``#SBATCH`` lines sbatch reads: it stops at the first line that is not blank and
    not a comment (so a here-document body line ``#SBATCH`` is text, not a directive)."""
    out = []
    for line in script.split("\n")[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            break
        if line.startswith("#SBATCH"):
            args = sbatch_args(re.sub(r"\$\{[^}]*\}|\{\{.*?\}\}", "X", line))
            # each argument's option, or VALUE for the argument after a bare -J
            shape = [
                "VALUE" if i and args[i - 1] == "-J" else a.split("=")[0]
                for i, a in enumerate(args)
            ]
            out.append(" ".join(shape))
    return out


def _check_structure(template: str, script: str) -> None:
    assert script.count("\n") == template.count("\n"), "a value added a line"
    assert _directives(script) == _directives(template), "a value changed the directives"


def _nodes_refused(task: dict[str, Any]) -> bool:
    probe = "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}\n"
    return _render(probe, task, "n.template") is None


@FAST
@given(name=text_values, lr=text_values, nodes=text_values)
def test_shell_contexts(
    tmp_path_factory: pytest.TempPathFactory, name: str, lr: str, nodes: str
) -> None:
    work = tmp_path_factory.mktemp("run")
    marker = work / "INJECTED"
    name, lr, nodes = (v.replace("{m}", str(marker)) for v in (name, lr, nodes))
    task = _task(name, lr, nodes)
    script = _render(SHELL_TEMPLATE, task, "shell.template")
    name, lr = _flat(name), _flat(lr)
    if script is None:
        # Only control characters or a value that is not a number for --nodes refuse.
        assert _has_control(name + lr) or _nodes_refused(task)
        return
    assert not _has_control(name + lr)
    _check_structure(SHELL_TEMPLATE, script)
    path = work / "job.sh"
    path.write_text(script, encoding="utf-8")
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    run = subprocess.run(
        ["bash", str(path)], capture_output=True, text=True, cwd=work, timeout=20, check=False
    )
    assert not marker.exists(), f"injected command ran:\n{script}"
    assert run.returncode == 0, run.stderr
    # printf '%s\n' / cat of each printed value, in template order.
    expected = [name, name, f"before{name}after", lr, name, slug(name), "AGENT_EXECUTE_RAN", ""]
    assert run.stdout.split("\n") == expected


@FAST
@given(name=text_values)
def test_directive_values_read_back_exactly(name: str) -> None:
    """Free text in #SBATCH lines: sbatch's splitter reads every value back unchanged."""
    script = _render(DIRECTIVE_TEMPLATE, _task(name, "0.1", "1"), "directive.template")
    name = _flat(name)
    if script is None:  # control characters, or no value at all after -J
        assert _has_control(name) or name == ""
        return
    _check_structure(DIRECTIVE_TEMPLATE, script)
    lines = script.split("\n")
    assert sbatch_args(lines[2]) == [f"--comment={name}"]
    assert sbatch_args(lines[5]) == ["-J", name, f"--output={name}", f"--error={name}"]
    assert lines[3] == f"# queue {name}"


@FAST
@given(name=text_values)
def test_comment_lines_never_fail(name: str) -> None:
    """A comment line takes any value: control characters go, the line stays one line."""
    script = _render(
        "#!/bin/bash\n# name: ${CLEARML_TASK.name}\necho ok\n", _task(name, "", ""), "c"
    )
    assert script is not None
    clean = "".join(c for c in name if not _has_control(c))
    assert script == f"#!/bin/bash\n# name: {clean}\necho ok\n"


@FAST
@given(name=text_values)
def test_jinja_values(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    work = tmp_path_factory.mktemp("j")
    marker = work / "INJECTED"
    name = name.replace("{m}", str(marker))
    script = _render(JINJA_TEMPLATE, _task(name, "0.1", "1"), "t.j2")
    if script is None:
        assert _has_control(name)
        return
    _check_structure(JINJA_TEMPLATE, script)
    path = work / "job.sh"
    path.write_text(script, encoding="utf-8")
    run = subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=work, check=False)
    assert not marker.exists()
    assert run.stdout == f"{name}\nAGENT_EXECUTE_RAN\n"


def test_jinja_unquoted_value_refused() -> None:
    with pytest.raises(TemplateError, match="needs an explicit filter"):
        render_string("echo {{ CLEARML_TASK.name }}\n", _ctx(_task("a; b", "1", "1")), "x.j2")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_never_run(tmp_path: Path, payload: str) -> None:
    """Every listed payload, deterministically (the property tests sample them too)."""
    marker = tmp_path / "INJECTED"
    value = payload.replace("{m}", str(marker))
    script = _render(SHELL_TEMPLATE, _task(value, value, "1"), "shell.template")
    if _has_control(_flat(value)):
        assert script is None
        return
    assert script is not None  # refused only for control characters
    path = tmp_path / "job.sh"
    path.write_text(script, encoding="utf-8")
    run = subprocess.run(["bash", str(path)], capture_output=True, cwd=tmp_path, check=False)
    assert run.returncode == 0
    assert not marker.exists()
