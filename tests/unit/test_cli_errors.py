"""How the interactive commands fail: a dead or wrong server URL, missing credentials, unknown
names, usage errors, ``--json`` errors, a task created but not enqueued.

Attempts are counted at the client's network seam (``request`` of ``api.transport``'s two
transports, the real call underneath); the time bound follows from the policy's arithmetic,
never from a clock.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from cli_helpers import Invoke, ok, one_error_line, write_conf

from hpcagent.api import ApiClient, transport
from hpcagent.api.client import INTERACTIVE
from hpcagent.cli import main_group, run
from hpcagent.config import load_settings
from hpcagent.errors import ApiError


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs of every HTTP request sent, through the real call of either transport
    (``http.client`` for a plain http server, ``requests`` otherwise)."""
    sent: list[str] = []
    for cls in (transport.PlainHttp, transport.RequestsHttp):
        real = cls.request

        def counting(
            self: Any, method: str, url: str, *a: Any, _real: Any = real, **kw: Any
        ) -> Any:
            sent.append(url)
            return _real(self, method, url, *a, **kw)

        monkeypatch.setattr(cls, "request", counting)
    return sent


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``hpcagent ARGS`` with no server behind and no CLEARML_* variables."""
    for var in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CLEARML_CONFIG_FILE", raising=False)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = run(main_group, list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    return invoke


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def test_interactive_policy_fits_five_seconds() -> None:
    assert INTERACTIVE.worst_case_s() <= 5.0
    assert INTERACTIVE.retries >= 1  # one blip is still forgiven


@pytest.mark.parametrize("command", [["task", "list"], ["queue", "list"], ["workers", "list"]])
def test_closed_port_fails_fast_with_one_line(
    bare: Any,
    tmp_path: Path,
    attempts: list[str],
    caplog: pytest.LogCaptureFixture,
    command: list[str],
) -> None:
    port = closed_port()
    # the configured budget is the patient one (8 retries); interactive commands do not use it
    conf = write_conf(tmp_path / "dead.conf", f"http://127.0.0.1:{port}", "k", "s", retries=8)
    with caplog.at_level(logging.DEBUG):
        rc, out, err = bare("--config-file", str(conf), *command)
    assert (rc, out) == (5, "")
    assert err.splitlines() == [
        f"error: API server http://127.0.0.1:{port} unreachable after "
        f"{INTERACTIVE.retries + 1} attempts (auth.login: connection refused)"
    ]
    assert len(attempts) == INTERACTIVE.retries + 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_paused_server_fails_after_one_unanswered_request(
    bare: Any, tmp_path: Path, attempts: list[str], embedded_server: Any
) -> None:
    """A server that accepts the connection and never answers (SIGSTOP) is not waited for
    again: one request, one read timeout (INTERACTIVE.read_timeout_s), one line."""
    import os
    import signal

    conf = write_conf(
        tmp_path / "paused.conf",
        embedded_server.url,
        embedded_server.access_key,
        embedded_server.secret_key,
        retries=8,
    )
    assert embedded_server.proc is not None
    attempts.clear()  # the fixture's own start-up pings
    os.kill(embedded_server.proc.pid, signal.SIGSTOP)
    try:
        rc, out, err = bare("--config-file", str(conf), "queue", "list")
    finally:
        os.kill(embedded_server.proc.pid, signal.SIGCONT)
    assert (rc, out) == (5, "")
    assert err.splitlines() == [
        f"error: API server {embedded_server.url} took the request but did not answer "
        f"(auth.login: no answer within {INTERACTIVE.read_timeout_s:g} s); "
        "is it paused or overloaded?"
    ]
    assert len(attempts) == 1


def test_unresolvable_host_says_so(bare: Any, tmp_path: Path, attempts: list[str]) -> None:
    conf = write_conf(tmp_path / "dns.conf", "http://nosuch.invalid:8008", "k", "s", retries=8)
    rc, _, err = bare("--config-file", str(conf), "task", "list")
    assert rc == 5
    assert err.splitlines() == [
        "error: API server http://nosuch.invalid:8008 unreachable after "
        f"{INTERACTIVE.retries + 1} attempts (auth.login: cannot resolve the host name)"
    ]
    assert len(attempts) == INTERACTIVE.retries + 1


def test_long_running_parts_keep_the_configured_budget(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "c.conf", "http://127.0.0.1:1", "k", "s", retries=8)
    settings = load_settings(config_file=str(conf))
    assert ApiClient.from_settings(settings).retries == 8
    quick = ApiClient.interactive(settings)
    assert (quick.retries, quick.timeout[0]) == (INTERACTIVE.retries, INTERACTIVE.connect_timeout_s)


def test_no_credentials_is_a_configuration_error(bare: Any, attempts: list[str]) -> None:
    rc, out, err = bare("task", "list")  # no ~/clearml.conf, no variables
    assert (rc, out) == (3, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("error: no credentials for http://127.0.0.1:8008")
    assert "401" not in err
    assert attempts == []


def test_json_errors_are_json(bare: Any, tmp_path: Path) -> None:
    port = closed_port()
    conf = write_conf(tmp_path / "dead.conf", f"http://127.0.0.1:{port}", "k", "s")
    rc, out, err = bare("--config-file", str(conf), "queue", "list", "--json")
    assert (rc, out) == (5, "")
    doc = json.loads(err)
    assert doc["error"]["exit_code"] == 5
    assert doc["error"]["kind"] == "ServerUnreachable"
    assert f"127.0.0.1:{port}" in doc["error"]["message"]
    rc, _, err = bare("task", "list", "--json", "--nosuch")
    assert rc == 2
    assert json.loads(err)["error"]["kind"] == "NoSuchOption"


def test_click_usage_errors_have_the_same_prefix(bare: Any) -> None:
    rc, out, err = bare("task", "list", "--nosuch")
    assert (rc, out) == (2, "")
    assert err.splitlines() == [
        "error: No such option '--nosuch' (see 'hpcagent task list --help')"
    ]


def test_version(bare: Any) -> None:
    from hpcagent import __version__

    rc, out, _ = bare("--version")
    assert rc == 0
    assert out.strip() == f"hpcagent, version {__version__}"


def test_unknown_names_are_the_same_error(cli: Invoke) -> None:
    project = one_error_line(cli("task", "list", "--project", "nosuch"), 4)
    queue = one_error_line(cli("task", "list", "-q", "nosuch"), 4)
    assert project == "error: no project named 'nosuch'"
    assert queue == "error: no queue named 'nosuch'"


def test_create_with_unknown_queue_creates_nothing(cli: Invoke, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    line = one_error_line(
        cli("task", "create", "--project", "proj", "--name", "n q", "--script", str(script),
            "--enqueue", "nosuch"),
        4,
    )  # fmt: skip
    assert line == "error: no queue named 'nosuch'"
    assert json.loads(ok(cli("task", "list", "--json"))) == []


def test_create_then_enqueue_refused_prints_the_id(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "qq1"))

    def refuse(*_: Any, **__: Any) -> Any:
        raise ApiError("tasks.enqueue", 400, 110, "Invalid task status")

    monkeypatch.setattr("hpcagent.api.tasks.TasksService.enqueue", refuse)
    rc, out, err = cli(
        "task", "create", "--project", "proj", "--name", "n q", "--script", str(script),
        "--enqueue", "qq1",
    )  # fmt: skip
    assert rc == 4
    task_id = out.strip()
    assert len(task_id) == 32
    assert err.splitlines() == [
        f"error: tasks.enqueue: 400/110 task {task_id} was created but not enqueued: "
        "Invalid task status"
    ]
    listed = json.loads(ok(cli("task", "list", "--json")))
    assert [t["id"] for t in listed] == [task_id]


def test_global_options_may_follow_the_sub_command(
    bare: Any, tmp_path: Path, embedded_server: Any
) -> None:
    from hpcagent.cli import hoist_global_options

    args = ["task", "list", "--config-file", "c", "--debug", "--", "--debug"]
    assert hoist_global_options(args) == [
        "--config-file", "c", "--debug", "task", "list", "--", "--debug",
    ]  # fmt: skip
    conf = write_conf(
        tmp_path / "c.conf",
        embedded_server.url,
        embedded_server.access_key,
        embedded_server.secret_key,
    )
    qid = ok(bare("queue", "create", "after", f"--config-file={conf}")).strip()
    listed = json.loads(ok(bare("queue", "list", "--json", "--config-file", str(conf))))
    assert [q["id"] for q in listed] == [qid]


def test_server_log_level_debug_shows_debug_lines(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    port = closed_port()
    env = {
        **os.environ,
        "HPCAGENT_SERVER_ACCESS_KEY": "AKAKAKAKAKAKAKAKAKAK",
        "HPCAGENT_SERVER_SECRET_KEY": "s" * 40,
    }
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "hpcagent", "server", "--port", str(port), "--data-dir",
            str(tmp_path / "d"), "--log-level", "debug"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{port}/no/such/path", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "DEBUG hpcagent.server: unknown path /no/such/path" in log.read_text()


def test_a_prompt_at_end_of_input_is_a_usage_error(
    bare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # stdin at its end, as `</dev/null`
    rc, _, err = bare("init", "--output", str(tmp_path / "c.conf"))
    assert rc == 2
    assert err.splitlines() == [
        "error: no input: stdin ended at a prompt (give the value as an option)"
    ]
    assert not (tmp_path / "c.conf").exists()


def test_hpcagent_slurm_version(capsys: pytest.CaptureFixture[str]) -> None:
    from hpcagent import __version__
    from hpcagent.commands.slurm import slurm_cmd

    assert run(slurm_cmd, ["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hpcagent-slurm, version {__version__}"


def test_help_lists_the_lazily_loaded_commands(bare: Any) -> None:
    from hpcagent.cli import COMMANDS

    rc, out, _ = bare("--help")
    assert rc == 0
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == {name for name, _, _ in COMMANDS}


def _click_reads(argv: list[str]) -> dict[str, Any]:
    """What click makes of ``hpcagent ARGV`` for the group and the execute command."""
    import warnings

    import click

    from hpcagent.cli import JOB_FLAGS, JOB_VALUES

    ctx = main_group.make_context("hpcagent", list(argv))
    with warnings.catch_warnings():  # protected_args: deprecated in click 8.2, the only way in 8.1
        warnings.simplefilter("ignore", DeprecationWarning)
        words = [*ctx.protected_args, *ctx.args]
    _, command, rest = main_group.resolve_command(ctx, words)
    assert isinstance(command, click.Command)
    sub = command.make_context("execute", rest, parent=ctx)
    params = {**ctx.params, **sub.params}
    return {key: params[key] for key in {*JOB_FLAGS.values(), *JOB_VALUES.values()}}


@pytest.mark.parametrize(
    "argv",
    [
        ["execute", "--id", "t1"],
        ["execute", "--id=t 1 ü"],
        ["--debug", "execute", "--force", "--id", "t1", "--clone", "--disable-monitoring"],
        ["execute", "--id", "t1", "--config-file", "c.conf"],
        ["--config-file=c.conf", "execute", "--disable-monitoring", "--id=t1", "--debug"],
    ],
)
def test_a_jobs_execute_line_is_read_without_click_as_click_reads_it(argv: list[str]) -> None:
    from hpcagent.cli import job_execute_args

    assert job_execute_args(argv) == _click_reads(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["execute"],  # click: --id is required
        ["execute", "--id"],
        ["execute", "--id", ""],
        ["execute", "--id", "--force"],  # click would take "--force" as the id
        ["execute", "--id", "a", "--id", "b"],
        ["execute", "--id", "t1", "--force=1"],
        ["execute", "--id", "t1", "--help"],
        ["--help", "execute", "--id", "t1"],
        ["execute", "--id", "t1", "--docker"],
        ["execute", "--id", "t1", "--container", "img.sif"],
        ["execute", "--id", "t1", "--log-file", "x.log"],
        ["execute", "--id", "t1", "--json"],
        ["execute", "--id", "t1", "extra"],
        ["execute", "--id", "t1", "--config-file", "."],  # a directory: click's usage error
        ["--config-file", "execute", "execute", "--id", "t1"],
        ["task", "list"],
        ["--version"],
        [],
    ],
)
def test_any_other_command_line_goes_to_click(argv: list[str]) -> None:
    from hpcagent.cli import job_execute_args

    assert job_execute_args(argv) is None


def test_a_jobs_execute_fails_alike_with_and_without_click(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    conf = tmp_path / "clearml.conf"
    conf.write_text(f'api {{ api_server: "http://127.0.0.1:{closed_port()}" }}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    env.update(HOME=str(tmp_path), CLEARML_CONFIG_FILE=str(conf))
    fast = subprocess.run(
        [sys.executable, "-c", "from hpcagent.cli import main; main()", "execute", "--id", "t1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    slow = subprocess.run(
        [sys.executable, "-c", "import sys; from hpcagent.cli import run, main_group\n"
         "sys.exit(run(main_group, sys.argv[1:]))", "execute", "--id", "t1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert fast.returncode == slow.returncode == 3, (fast.stderr, slow.stderr)  # ConfigError
    assert fast.stderr == slow.stderr
    assert fast.stderr.startswith("error: no credentials for http://127.0.0.1:")
