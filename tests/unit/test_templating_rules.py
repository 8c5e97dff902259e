"""The template language: placeholders, defaults, filters, errors, contexts, Jinja2."""

from __future__ import annotations

from typing import Any

import pytest

from hpcagent.errors import TemplateError
from hpcagent.templating import RenderContext, render_string

TASK: dict[str, Any] = {
    "id": "abc123",
    "name": "  My Task  ",
    "project": "p1",
    "container": {"image": "docker://python:3.11", "arguments": ["-e", "A=1"]},
    "hyperparams": {
        "properties": {"num_nodes": {"value": "2"}, "empty": {"value": ""}},
        "Args": {"my.dotted": {"value": "x"}, "flag": {"value": True}},
    },
    "script": {"requirements": None},
}
CONFIG = {"agent.default_docker.image": "docker://ubuntu", "slurm.partition": "gpu"}


def ctx(**kw: Any) -> RenderContext:
    base: dict[str, Any] = {
        "task": TASK,
        "queue_name": "q-name",
        "queue_id": "q-id",
        "worker_id": "w-1",
        "config": lambda p, d=None: CONFIG.get(p, d),
        "pre_setup": "echo pre",
        "agent_execute": "run-agent --id abc123",
        "post_setup": "echo post",
    }
    base.update(kw)
    return RenderContext(**base)


def r(text: str, name: str = "t.template", **kw: Any) -> str:
    return render_string(text, ctx(**kw), name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#SBATCH -J ${CLEARML_TASK.id}\n", "#SBATCH -J abc123\n"),
        (
            "echo ${CLEARML_QUEUE_NAME} ${CLEARML_QUEUE_ID} ${CLEARML_WORKER_ID}",
            "echo q-name q-id w-1",
        ),
        (
            "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}",
            "#SBATCH --nodes=2",
        ),
        (
            "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.nope.value:1}",
            "#SBATCH --nodes=1",
        ),
        ("#SBATCH --x=${CLEARML_TASK.hyperparams.properties.empty.value:7}", "#SBATCH --x=7"),
        ("echo ${CLEARML_TASK.hyperparams.Args.my.dotted.value}", "echo x"),
        ("echo ${CLEARML_TASK.hyperparams.Args.flag.value}", "echo true"),
        ("echo ${CLEARML_TASK.container.image}", "echo docker://python:3.11"),
        ("echo ${CLEARML_TASK.container.arguments.1}", "echo A=1"),
        ("echo ${CLEARML_TASK.name|strip|lower}", "echo 'my task'"),
        ("echo ${CLEARML_TASK.name|strip|upper}", "echo 'MY TASK'"),
        ("#SBATCH --comment=${CLEARML_TASK.name|strip|slug}", "#SBATCH --comment=My_Task"),
        ("echo ${CLEARML_TASK.name|raw}", "echo '  My Task  '"),
        ("echo ${CONFIG.slurm.partition} ${CLEARML_CONFIG.slurm.partition}", "echo gpu gpu"),
        ("echo ${CONFIG.nope:dflt}", "echo dflt"),
        (
            "echo $HOME ${HOME} ${HOME:-x} $CLEARML_TASK_ID $$",
            "echo $HOME ${HOME} ${HOME:-x} $CLEARML_TASK_ID $$",
        ),
        ("echo $${CLEARML_TASK.id}", "echo ${CLEARML_TASK.id}"),
        (
            "${CLEARML_PRE_SETUP}\n${CLEARML_AGENT_EXECUTE}\n${CLEARML_POST_SETUP}\n",
            "echo pre\nrun-agent --id abc123\necho post\n",
        ),
        ("srun ${CLEARML_AGENT_EXECUTE}", "srun run-agent --id abc123"),
    ],
)
def test_placeholders(text: str, expected: str) -> None:
    assert r(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment", "line", "column"),
    [
        ("a\nb\necho ${CLEARML_TASK.hyperparams.x.y.value}\n", "no value and no default", 3, 6),
        ("echo ${CLEARML_NOPE}\n", "unknown name", 1, 6),
        ("echo ${CLEARML_TASK.id|shout}\n", "unknown filter", 1, 6),
        ("\n#SBATCH --nodes=${CLEARML_TASK.name}\n", "is not valid for --nodes", 2, 17),
        ("#SBATCH -J ${CLEARML_TASK.hyperparams.properties.empty.value}\n", "empty value", 1, 12),
        ("echo `${CLEARML_TASK.id}`\n", "no quoting can protect", 1, 7),
        ("echo ${X:-${CLEARML_TASK.id}}\n", "no quoting can protect", 1, 11),
        ('echo "${CLEARML_AGENT_EXECUTE}"\n', "block placeholders must stand", 1, 7),
        ("echo ${CLEARML_PRE_SETUP:x}\n", "take no filter or default", 1, 6),
        ("echo ${CLEARML_TASK.bad key}\n", "malformed placeholder", 1, 6),
    ],
)
def test_errors_name_template_line_placeholder(
    text: str, fragment: str, line: int, column: int
) -> None:
    with pytest.raises(TemplateError) as info:
        r(text, "site.template")
    err = info.value
    assert fragment in str(err)
    assert err.template == "site.template"
    assert (err.line, err.column) == (line, column)
    assert str(err).startswith(f"site.template:{line}:{column}: placeholder ${{")


def test_control_characters_rejected_in_code() -> None:
    task = {**TASK, "name": "a\rb"}
    for text in ("echo ${CLEARML_TASK.name}", "echo '${CLEARML_TASK.name}'"):
        with pytest.raises(TemplateError, match="control character"):
            r(text, task=task)


def test_values_standing_as_arguments_in_sbatch_lines() -> None:
    def name(v: str) -> dict[str, Any]:
        return {**TASK, "name": v}

    assert r("#SBATCH -J ${CLEARML_TASK.name}", task=name("hetjob")) == '#SBATCH -J "hetjob"'
    assert r("#SBATCH -J ${CLEARML_TASK.name}", task=name("-x")) == "#SBATCH -J -x"
    with pytest.raises(TemplateError, match="may take no value"):
        r("#SBATCH --exclusive ${CLEARML_TASK.name}", task=name("--wrap=touch x"))
    with pytest.raises(TemplateError, match="could add an option"):
        r("#SBATCH ${CLEARML_TASK.name}", task=name("--wrap=x"))


def test_newlines_removed_by_default_as_in_clearml() -> None:
    task = {**TASK, "name": "a\nb; c"}
    assert r("echo ${CLEARML_TASK.name}", task=task) == "echo 'ab; c'"
    assert r("#SBATCH --comment=${CLEARML_TASK.name}", task=task) == '#SBATCH --comment="ab; c"'
    with pytest.raises(TemplateError, match="control character"):  # |raw keeps them: refused
        r("echo ${CLEARML_TASK.name|raw}", task=task)
    assert r("# ${CLEARML_TASK.name|raw}", task=task) == "# ab; c"  # a comment never fails


def test_full_line_comment_cannot_become_directive() -> None:
    """A placeholder in the first word of a comment line is refused whatever the task."""
    task = {**TASK, "name": "SBATCH --wrap=x"}
    for text in ("#${CLEARML_TASK.name}\n", "#S${CLEARML_TASK.name}\n"):
        with pytest.raises(TemplateError, match="first word of a comment line"):
            r(text, task=task)
    assert r("#${CLEARML_TASK.hyperparams.properties.num_nodes.value|int}\n") == "#2\n"


def test_jinja_context_and_filters() -> None:
    text = (
        "#SBATCH --nodes={{ CLEARML_TASK.hyperparams.properties.num_nodes.value | sbatch_value }}\n"
        "echo {{ CLEARML_TASK.name | shquote }} {{ CLEARML_QUEUE_NAME }}"
        " {{ CONFIG.slurm.partition }}\n"
        "{{ CLEARML_AGENT_EXECUTE }}\n"
    )
    assert (
        r(text, "t.j2")
        == "#SBATCH --nodes=2\necho '  My Task  ' q-name gpu\nrun-agent --id abc123\n"
    )


def test_jinja_undefined_names_line() -> None:
    with pytest.raises(TemplateError) as info:
        r("#!/bin/bash\n\necho {{ CLEARML_TASK.nope | shquote }}\n", "x.j2")
    assert info.value.line == 3
    assert "nope" in str(info.value)


def test_jinja_missing_config_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"CONFIG\.slurm\.nope is undefined"):
        r("echo {{ CONFIG.slurm.nope }}\n", "x.j2")


def test_jinja_syntax_error_line() -> None:
    with pytest.raises(TemplateError) as info:
        r("a\n{% if %}\n", "x.j2")
    assert info.value.line == 2
