"""Custom-template patterns: each one renders safe under real bash or is refused at start.

Shell contexts that quoting cannot protect (a string run by ``bash -c``/``eval``, a
here-document, arithmetic, right after a backslash ...) are refused by the template check
that ``hpcagent-slurm`` runs before it takes any task, naming the rule, the line and the
column. With a filter that limits the value to safe characters (``|slug``, ``|int``) the
same pattern is accepted, and then no payload runs under real bash.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcagent.errors import TemplateError
from hpcagent.templating import RenderContext, check_string, render_string

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")

V = "${CLEARML_TASK.name}"
PRELUDE = '#!/bin/bash\nsrun() { "$@"; }\n'  # srun as on a node: runs its command

# (pattern, words of the rule it breaks, the filter that makes it acceptable)
REFUSED = [
    ('bash -c "echo {v}"', "'bash -c'", "slug"),
    ("srun bash -c 'echo {v}'", "'bash -c'", "slug"),
    ("sh -ec {v}", "'sh -ec'", "slug"),
    ("bash -o pipefail -c 'echo {v}'", "'bash -c'", "slug"),
    ("eval echo {v}", "'eval'", "slug"),
    ('trap "echo {v}" EXIT', "'trap'", "slug"),
    ("python3 -c \"print('{v}')\"", "'python3 -c'", "slug"),
    ("cat <<EOF\n{v}\nEOF", "here-document", "slug"),
    ("bash <<'EOF'\necho {v}\nEOF", "here-document", "slug"),
    ("(( n = {v} ))", "arithmetic", "int"),
    ("echo $(( {v} + 1 ))", "arithmetic", "int"),
    ("let n={v}", "arithmetic", "int"),
    ("[[ {v} -gt 1 ]] && echo big", "arithmetic", "int"),
    ("declare -i n={v}", "arithmetic", "int"),
    ("a[{v}]=1", "arithmetic", "int"),
    ('echo "\\{v}"', "backslash", "slug"),
    ("echo \\{v}", "backslash", "slug"),
    ("echo `echo {v}`", "backtick", "slug"),
    ("echo ${{X:-{v}}}", "backtick", "slug"),
    ("#{v}", "first word of a comment line", "int"),
    ("declare {v}=1", "variable name", "slug"),
    ("declare -a arr={v}", "variable name", "slug"),
    ("printf -v {v} x", "variable name", "slug"),
    ("read {v} <<< x", "variable name", "slug"),
    ("[[ -v {v} ]] || true", "variable name", "slug"),
    ("echo {v} | bash", "pipeline into 'bash'", "slug"),
    ("printf '%s' {v} | sort | python3", "pipeline into 'python3'", "slug"),
    ("bash <<< {v}", "here-string read by 'bash'", "slug"),
    ("bash <(echo {v})", "process substitution read by 'bash'", "slug"),
]

ACCEPTED = [
    "echo {v}",
    'echo "{v}"',
    "echo '{v}'",
    'x={v}; echo "$x"',
    "echo $(printf '%s' {v})",
    "srun echo {v}",
    '[[ {v} == "x" ]] || echo no',
    "echo hi  # {v}",
    "echo {v} | cat",
    "bash /dev/null -c {v}",  # -c after the script: an argument of the script
    "python3 -m json.tool -c {v} </dev/null 2>/dev/null || true",
    'export FOO={v}; echo "$FOO"',
    "declare -r X={v}",
    "[ -n {v} ] && echo set",
    "cat <<< {v}",
    "diff <(echo {v}) <(echo x) || true",
    "# task {v}",
    "bash -c 'echo \"$1\"' _ {v}",  # refused too: the check cannot tell $1 from code
]

PAYLOADS = [
    "$(touch {m})",
    "`touch {m}`",
    "'; touch {m}; '",
    '"; touch {m}; "',
    "a[$(touch {m})]",
    "x; touch {m}",
    "1 + a[$(touch {m})]",
    "$'\\x27'; touch {m}",
    "\\",
]
VALUES = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(alphabet="$`'\"\\;|&<>(){}[]*?!#~ \tabc0123456789-+", max_size=25),
    st.integers(-1000, 1000).map(str),
)
FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _template(pattern: str, v: str = V) -> str:
    return PRELUDE + pattern.format(v=v) + "\n${CLEARML_AGENT_EXECUTE}\n"


def _ctx(name: str) -> RenderContext:
    task: dict[str, Any] = {"id": "t1", "name": name}
    return RenderContext(task=task, agent_execute="echo DONE")


def _run_safe(tmp: Any, template: str, value: str) -> None:
    """Render for ``value`` (a failed render submits nothing) and run under bash."""
    marker = tmp / "INJECTED"
    value = value.replace("{m}", str(marker))
    try:
        script = render_string(template, _ctx(value), "custom.template")
    except TemplateError:
        return
    path = tmp / "job.sh"
    path.write_text(script, encoding="utf-8")
    subprocess.run(["bash", str(path)], capture_output=True, cwd=tmp, timeout=20, check=False)
    assert not marker.exists(), f"payload ran:\n{script}"


@pytest.mark.parametrize(("pattern", "rule", "fix"), REFUSED)
def test_refused_at_start_with_its_rule(pattern: str, rule: str, fix: str) -> None:
    text = _template(pattern)
    found = check_string(text, "custom.template")
    assert len(found) == 1, found
    before = pattern.format(v="\0").split("\0")[0]
    line = 3 + before.count("\n")
    column = len(before.rsplit("\n", 1)[-1]) + 1
    assert (found[0].line, found[0].column) == (line, column)
    message = str(found[0])
    assert message.startswith(f"custom.template:{line}:{column}: placeholder {V}")
    assert any(w in message for w in rule.split(" or ")), message
    with pytest.raises(TemplateError):  # rendering refuses it too, whatever the task
        render_string(text, _ctx("plain"), "custom.template")
    assert check_string(_template(pattern, "${CLEARML_TASK.name|" + fix + "}"), "c") == []


@pytest.mark.parametrize(("pattern", "fix"), [(p, f) for p, _r, f in REFUSED])
@FAST
@given(value=VALUES)
def test_refused_patterns_with_a_safe_filter_run_nothing(
    tmp_path_factory: pytest.TempPathFactory, pattern: str, fix: str, value: str
) -> None:
    template = _template(pattern, "${CLEARML_TASK.name|" + fix + "}")
    _run_safe(tmp_path_factory.mktemp("r"), template, value)


@pytest.mark.parametrize("pattern", ACCEPTED[:-1])
@FAST
@given(value=VALUES)
def test_accepted_patterns_run_nothing(
    tmp_path_factory: pytest.TempPathFactory, pattern: str, value: str
) -> None:
    assert check_string(_template(pattern), "c") == []
    _run_safe(tmp_path_factory.mktemp("a"), _template(pattern), value)


def test_positional_argument_of_bash_c_is_refused_conservatively() -> None:
    assert check_string(_template(ACCEPTED[-1]), "c") != []


def test_backslash_bug_fixed() -> None:
    """``echo "\\${...}"`` used to render ``"\\'...'"``: the value's quote was escaped."""
    for pattern in ('echo "\\{v}"', "echo \\{v}"):
        with pytest.raises(TemplateError, match="backslash"):
            render_string(_template(pattern), _ctx("a'; touch x; '"), "c.template")


def test_whole_template_problems_are_all_listed() -> None:
    text = "#!/bin/bash\necho ${CLEARML_NOPE}\neval ${CLEARML_TASK.id}\n${CLEARML_AGENT_EXECUT}\n"
    found = [str(e) for e in check_string(text, "t.template")]
    assert found[0].startswith("t.template:2:6: placeholder ${CLEARML_NOPE}: unknown name")
    assert found[1].startswith("t.template:3:6: placeholder ${CLEARML_TASK.id}: sits in")
    assert found[2].startswith("t.template:4:1: placeholder ${CLEARML_AGENT_EXECUT}: unknown")
    assert "no ${CLEARML_AGENT_EXECUTE}" in found[3]


def test_jinja_shquote_inside_double_quotes_refused() -> None:
    text = '#!/bin/bash\necho "{{ CLEARML_TASK.name | shquote }}"\n{{ CLEARML_AGENT_EXECUTE }}\n'
    found = check_string(text, "t.j2")
    assert len(found) == 1
    assert "t.j2:2:7" in str(found[0])
    assert "shquote inside quotes" in str(found[0])
    with pytest.raises(TemplateError, match="shquote inside quotes"):
        render_string(text, _ctx("$(touch x)"), "t.j2")
    text = "#!/bin/bash\nbash -c {{ CLEARML_TASK.name | shquote }}\n{{ CLEARML_AGENT_EXECUTE }}\n"
    assert "sits in" in str(check_string(text, "t.j2")[0])
    assert check_string("{% if %}\n", "s.j2")[0].line == 1


def test_jinja_sbatch_quote_free_text_and_its_place() -> None:
    text = (
        "#!/bin/bash\n#SBATCH --comment={{ CLEARML_TASK.name | sbatch_quote }}\n"
        "echo {{ CLEARML_TASK.project.name | shquote }} {{ CLEARML_TASK.execution.queue.name }}\n"
        "{{ CLEARML_AGENT_EXECUTE }}\n"
    )
    assert check_string(text, "t.j2") == []
    task = {"id": "t1", "name": 'it\'s "q" # x', "project": "p1", "execution": {"queue": "q1"}}
    names = {("project", "p1"): "My P", ("queue", "q1"): "gpu"}
    ctx = RenderContext(task=task, agent_execute="run", names=lambda k, i: names.get((k, i)))
    out = render_string(text, ctx, "t.j2").split("\n")
    assert out[1] == '#SBATCH --comment="it\'s \\"q\\" # x"'
    assert out[2] == "echo 'My P' gpu"
    bad = "#!/bin/bash\necho {{ CLEARML_TASK.name | sbatch_quote }}\n{{ CLEARML_AGENT_EXECUTE }}\n"
    assert "belongs in an unquoted value of an #SBATCH line" in str(check_string(bad, "b.j2")[0])
