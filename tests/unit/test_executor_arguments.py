"""The argument contract (executor/arguments.py): nothing on argv unless the task asks, the
rendering of Args that do go on argv, and the SDK environment of the child."""

from __future__ import annotations

import pytest

from hpcagent.executor.arguments import args_on_argv, args_to_argv, sdk_env


@pytest.mark.parametrize(
    ("props", "configured", "expected"),
    [
        ({}, False, False),  # the agent's contract: SDK scripts read Args through Task.init()
        ({}, True, True),
        ({"args-on-argv": "true"}, False, True),  # hpcagent task create --args
        ({"args-on-argv": "False"}, True, False),  # a task opts out of a cluster-wide true
        ({"args-on-argv": "maybe"}, False, False),  # unreadable: the configured value
    ],
)
def test_args_on_argv_task_property_wins(
    props: dict[str, str], configured: bool, expected: bool
) -> None:
    assert args_on_argv(props, configured) is expected


def test_options_flags_and_unsafe_values() -> None:
    argv = args_to_argv(
        (
            ("lr", "0.01"),
            ("flag", "True"),
            ("off", "false"),
            ("empty", ""),
            ("none", "None"),
            ("--already", "x y; rm -rf /"),
            ("bad name", "1"),
        )
    )
    assert argv == ["--lr", "0.01", "--flag", "--already", "x y; rm -rf /"]


def test_option_strings_kept_as_typed() -> None:
    assert args_to_argv((("--batch-size", "32"), ("-v", "true"), ("no-cache", "true"))) == [
        "--batch-size",
        "32",
        "-v",
        "--no-cache",
    ]


def test_positionals_first_in_numeric_order_and_nargs_lists() -> None:
    argv = args_to_argv(
        (
            ("--sizes", "[3, 4]"),
            ("2", "out.csv"),
            ("--names", "['a b', 'c']"),
            ("1", "in.csv"),
            ("--empty", "[]"),
            ("--not-a-list", "[oops"),
        )
    )
    assert argv == [
        "in.csv",
        "out.csv",
        "--sizes",
        "3",
        "4",
        "--names",
        "a b",
        "c",
        "--not-a-list",
        "[oops",
    ]


def test_positional_list_value_spreads() -> None:
    assert args_to_argv((("1", "[1, 2]"),)) == ["1", "2"]


def test_sdk_env_attaches_to_the_task_and_drops_inherited_masters() -> None:
    inherited = {
        "PATH": "/bin",
        "CLEARML_PROC_MASTER_ID": "123:othertask",
        "TRAINS_PROC_MASTER_ID": "123:othertask",
        "CLEARML_TASK_ID": "othertask",
        "CLEARML_SIMULATE_REMOTE_TASK": "1",
        "CLEARML_LOG_LEVEL": "DEBUG",
    }
    env = sdk_env(inherited, task_id="t1", config_file="/w/clearml.conf", worker="h:1")
    assert "CLEARML_PROC_MASTER_ID" not in env
    assert "TRAINS_PROC_MASTER_ID" not in env
    assert "CLEARML_SIMULATE_REMOTE_TASK" not in env
    for prefix in ("CLEARML", "TRAINS"):
        assert env[f"{prefix}_TASK_ID"] == "t1"
        assert env[f"{prefix}_CONFIG_FILE"] == "/w/clearml.conf"
        assert env[f"{prefix}_LOG_TASK_TO_BACKEND"] == "0"
        assert env[f"{prefix}_LOG_LEVEL"] == "DEBUG"  # the user's level is kept
    assert env["CLEARML_WORKER_ID"] == "h:1"
    assert env["PATH"] == "/bin"
    assert sdk_env({}, task_id="t", config_file="c", worker="w")["CLEARML_LOG_LEVEL"] == "INFO"
