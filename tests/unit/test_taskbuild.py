"""hpcagent.taskbuild: a new task's ClearML fields from a TaskSpec (shared by ``task create``
and other front ends), checked against the real embedded server and the executor's reading."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hpcagent.api import ApiClient
from hpcagent.errors import UsageError
from hpcagent.executor.arguments import args_on_argv, args_to_argv
from hpcagent.executor.task_info import TaskInfo
from hpcagent.taskbuild import (
    ARGS_ON_ARGV_PROPERTY,
    TaskSpec,
    create_task,
    hyperparams,
    merge_params,
    parse_pairs,
    task_fields,
)

SCRIPT = "import sys\nprint('größe', sys.argv[1:])\n"


def _script_spec(**over: Any) -> TaskSpec:
    base: dict[str, Any] = {
        "project": "proj with spaces/ünï",
        "name": 'it\'s "quoted" ünïcode',
        "script_text": SCRIPT,
        "script_name": "train me.py",
    }
    return TaskSpec(**{**base, **over})


def test_script_spec_fields() -> None:
    spec = _script_spec(
        packages=("numpy==2.0", "pandas"),
        args={"lr": "0.1", "name": "a b; rm -rf /"},
        user_properties={"partition": "gpu"},
        container_image="python:3.11",
        container_args="--nv",
    )
    spec.check()
    fields = task_fields(spec)
    assert fields["script"] == {
        "binary": "python3",
        "working_dir": ".",
        "repository": "",
        "entry_point": "train me.py",
        "diff": SCRIPT,
        "requirements": {"pip": "numpy==2.0\npandas\n"},
    }
    args = fields["hyperparams"]["Args"]
    assert args["name"] == {
        "section": "Args",
        "name": "name",
        "value": "a b; rm -rf /",
        "type": "str",
        "description": "",
    }
    props = {k: v["value"] for k, v in fields["hyperparams"]["properties"].items()}
    assert props == {"partition": "gpu", ARGS_ON_ARGV_PROPERTY: "true"}
    assert fields["container"] == {
        "image": "python:3.11",
        "arguments": "--nv",
        "setup_shell_script": "",
    }


def test_repo_spec_fields_and_nothing_extra() -> None:
    spec = TaskSpec(
        project="p",
        name="repo task",
        repo="https://example.invalid/r.git",
        commit="abc123",
        entry_point="src/train.py",
        requirements="torch\n",
    )
    spec.check()
    fields = task_fields(spec)
    assert fields == {
        "script": {
            "binary": "python3",
            "working_dir": ".",
            "repository": "https://example.invalid/r.git",
            "branch": "",
            "version_num": "abc123",
            "entry_point": "src/train.py",
            "requirements": {"pip": "torch\n"},
        }
    }
    assert hyperparams(spec) == {}


def test_an_explicit_args_on_argv_property_is_kept() -> None:
    spec = _script_spec(args={"x": "1"}, user_properties={ARGS_ON_ARGV_PROPERTY: "false"})
    props = hyperparams(spec)["properties"]
    assert props[ARGS_ON_ARGV_PROPERTY]["value"] == "false"


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"script_text": None}, "exactly one of --script"),
        ({"repo": "r"}, "exactly one of --script"),
        ({"branch": "b", "commit": "c"}, "--branch or --commit"),
        ({"requirements": "x\n", "packages": ("y",)}, "--requirements or --packages"),
        ({"name": "ab"}, "at least 3 characters"),
        ({"branch": "main"}, "--branch/--commit need --repo"),
        ({"script_text": None, "repo": "r"}, "--repo needs --entry-point"),
        ({"script_name": ""}, "a script needs a name"),
    ],
)
def test_check_names_what_is_wrong(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        _script_spec(**over).check()


def test_parse_pairs_and_merge_params() -> None:
    assert parse_pairs(["a=1", " b =x=y", "c="], "--args") == {"a": "1", "b": "x=y", "c": ""}
    for bad in (["novalue"], ["=v"]):
        with pytest.raises(UsageError, match="--args expects key=value"):
            parse_pairs(bad, "--args")
    old = {
        "Args": {"keep": {"section": "Args", "name": "keep", "value": "1"}},
        "General": {"g": {"value": "2"}},
    }
    merged = merge_params(old, "Args", {"new": "3"})
    assert set(merged["Args"]) == {"keep", "new"}
    assert merged["General"] == old["General"]
    assert set(old["Args"]) == {"keep"}  # the input is not changed


@pytest.fixture
def api(embedded_server: Any) -> Iterator[ApiClient]:
    c = ApiClient(embedded_server.url, embedded_server.access_key, embedded_server.secret_key)
    yield c
    c.close()


def test_create_task_round_trip_as_the_executor_reads_it(api: ApiClient) -> None:
    spec = _script_spec(
        args={"lr": "0.1", "tag": "it's"}, user_properties={"mem": "4G"}, container_image="img"
    )
    task_id, project_id = create_task(api, spec)
    task = api.send("tasks.get_by_id", {"task": task_id})["task"]
    assert task["name"] == spec.name
    assert task["project"] == project_id
    assert task["status"] == "created"
    projects = api.send("projects.get_all", {"id": [project_id]})["projects"]
    assert projects[0]["name"] == spec.project
    info = TaskInfo.from_task(task)
    assert info.script.is_literal
    assert info.script.diff == SCRIPT
    assert info.script.entry_point == "train me.py"
    assert info.container_image == "img"
    assert info.properties["mem"] == "4G"
    assert args_on_argv(info.properties, configured=False)
    assert args_to_argv(info.args) == ["--lr", "0.1", "--tag", "it's"]
    again, same_project = create_task(api, _script_spec(name="second one"))
    assert same_project == project_id  # the project is found, not created twice
    assert again != task_id


def test_create_task_creates_nothing_on_a_bad_spec(api: ApiClient) -> None:
    before = len(api.send("tasks.get_all", {})["tasks"])
    with pytest.raises(UsageError):
        create_task(api, _script_spec(name="x"))
    assert len(api.send("tasks.get_all", {})["tasks"]) == before
