"""Config precedence: defaults < file < env < CLI, dynamic overrides, error messages."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hpcagent.cli import main_group, run
from hpcagent.config import load_settings
from hpcagent.config.loader import parse_override_value
from hpcagent.errors import ConfigError

FILE_CONF = """
api {
  api_server: "http://file-host:8008"
  credentials { access_key: "FILEKEY", secret_key: "FILESECRET" }
}
agent {
  worker_id: "file-worker"
  venvs_cache { max_entries: 3 }
  package_manager { type: pip }
}
"""


@pytest.fixture
def conf_file(tmp_path: Path) -> Path:
    path = tmp_path / "clearml.conf"
    path.write_text(FILE_CONF)
    return path


def test_defaults_apply_without_file(tmp_path: Path) -> None:
    settings = load_settings(env={"HOME": str(tmp_path)})
    assert settings.api.api_server == "http://127.0.0.1:8008"
    assert settings.agent.venvs_cache_max_entries == 10
    assert settings.source_of("api.api_server") == "default"
    assert settings.layered.config_file is None


def test_file_overrides_defaults(conf_file: Path, tmp_path: Path) -> None:
    settings = load_settings(config_file=conf_file, env={"HOME": str(tmp_path)})
    assert settings.api.api_server == "http://file-host:8008"
    assert settings.api.access_key == "FILEKEY"
    assert settings.agent.venvs_cache_max_entries == 3
    assert settings.agent.package_manager_type == "pip"
    assert settings.source_of("agent.worker_id") == f"file:{conf_file}"
    # a default the file did not touch is still there
    assert settings.agent.venvs_cache_free_space_threshold_gb == 2.0


def test_file_found_through_env_and_home(conf_file: Path, tmp_path: Path) -> None:
    by_env = load_settings(env={"CLEARML_CONFIG_FILE": str(conf_file), "HOME": "/nonexistent"})
    assert by_env.agent.worker_id == "file-worker"
    home = tmp_path / "home"
    home.mkdir()
    (home / "clearml.conf").write_text('agent { worker_id: "home-worker" }')
    by_home = load_settings(env={"HOME": str(home)})
    assert by_home.agent.worker_id == "home-worker"


def test_env_overrides_file(conf_file: Path) -> None:
    env = {
        "CLEARML_CONFIG_FILE": str(conf_file),
        "CLEARML_API_HOST": "http://env-host:8008",
        "CLEARML_API_ACCESS_KEY": "ENVKEY",
        "CLEARML_API_SECRET_KEY": "ENVSECRET",
        "CLEARML_WORKER_ID": "env-worker",
        "CLEARML_WORKER_NAME": "env-name",
    }
    settings = load_settings(env=env)
    assert settings.api.api_server == "http://env-host:8008"
    assert settings.api.access_key == "ENVKEY"
    assert settings.api.secret_key == "ENVSECRET"
    assert settings.agent.worker_id == "env-worker"
    assert settings.agent.worker_name == "env-name"
    assert settings.source_of("api.api_server") == "env:CLEARML_API_HOST"


def test_cli_overrides_env(conf_file: Path) -> None:
    env = {"CLEARML_CONFIG_FILE": str(conf_file), "CLEARML_WORKER_ID": "env-worker"}
    settings = load_settings(
        cli_overrides={"agent.worker_id": "cli-worker", "api.api_server": None}, env=env
    )
    assert settings.agent.worker_id == "cli-worker"
    assert settings.source_of("agent.worker_id") == "cli"
    # None means "not given on the command line": the file's value stays
    assert settings.api.api_server == "http://file-host:8008"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5", 5),
        ("2.5", 2.5),
        ("true", True),
        ("false", False),
        ("[1, 2]", [1, 2]),
        ('["--nv", "-B /data"]', ["--nv", "-B /data"]),
        ("python:3.11", "python:3.11"),
        ("hello world", "hello world"),
        ('"quoted # text"', "quoted # text"),
    ],
)
def test_dynamic_override_parsing(raw: str, expected: object) -> None:
    assert parse_override_value(raw) == expected


def test_dynamic_env_override_types(conf_file: Path) -> None:
    env = {
        "CLEARML_CONFIG_FILE": str(conf_file),
        "CLEARML_AGENT__AGENT__VENVS_CACHE__MAX_ENTRIES": "7",
        "CLEARML_AGENT__AGENT__FORCE_GIT_SSH_PROTOCOL": "true",
        "CLEARML_AGENT__AGENT__DEFAULT_DOCKER__ARGUMENTS": '["--nv", "--bind", "/data"]',
        "CLEARML_AGENT__AGENT__DEFAULT_DOCKER__IMAGE": "python:3.11",
        "CLEARML_AGENT__AGENT__NEW_KEY": "some text",
    }
    settings = load_settings(env=env)
    assert settings.agent.venvs_cache_max_entries == 7
    assert settings.agent.force_git_ssh_protocol is True
    assert settings.agent.default_docker_arguments == ["--nv", "--bind", "/data"]
    assert settings.agent.default_docker_image == "python:3.11"
    assert settings.get("agent.new_key") == "some text"
    assert settings.source_of("agent.venvs_cache.max_entries") == (
        "env:CLEARML_AGENT__AGENT__VENVS_CACHE__MAX_ENTRIES"
    )


def test_malformed_file_names_file_line_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text('api {\n  api_server: "http://x:8008"\n  credentials {\n    access_key: "a"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=bad, env={})
    message = str(info.value)
    assert str(bad) in message
    assert ":5:" in message  # the line where the parser ran out of text
    assert "Expected '}'" in message


def test_wrong_type_names_key_and_source(conf_file: Path) -> None:
    env = {"CLEARML_AGENT__AGENT__VENVS_CACHE__MAX_ENTRIES": "many"}
    with pytest.raises(ConfigError, match=r"agent\.venvs_cache\.max_entries.*env:.*integer"):
        load_settings(config_file=conf_file, env=env)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.conf", env={})


def test_api_host_alias_and_derived_hosts(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text('api { host: "http://srv:8008" }')
    settings = load_settings(config_file=path, env={})
    assert settings.api.api_server == "http://srv:8008"
    assert settings.api.web_server == "http://srv:8080"
    assert settings.api.files_server == "http://srv:8081"


def test_config_show_masks_secrets_and_names_sources(conf_file: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main_group,
        ["--config-file", str(conf_file), "config", "show"],
        env={"CLEARML_WORKER_ID": "env-worker", "CLEARML_CONFIG_FILE": None},
    )
    assert result.exit_code == 0, result.output
    assert "FILESECRET" not in result.output
    assert "********" in result.output
    assert f"file:{conf_file}" in result.output
    assert "env:CLEARML_WORKER_ID" in result.output


def _init_args(target: Path, url: str, key: str = "AK", *extra: str) -> list[str]:
    return ["init", "--output", str(target), "--api-server", url, "--access-key", key,
            "--no-input", *extra]  # fmt: skip


def test_init_checks_the_server_and_writes_0600_never_overwriting(
    tmp_path: Path, embedded_server: Any
) -> None:
    srv = embedded_server
    target = tmp_path / "clearml.conf"
    runner = CliRunner()
    args = _init_args(target, srv.url, srv.access_key)
    result = runner.invoke(main_group, args, env={"CLEARML_API_SECRET_KEY": srv.secret_key})
    assert result.exit_code == 0, result.output
    assert "keys accepted (hpcagent embedded server" in result.output
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    settings = load_settings(config_file=target, env={})
    assert (settings.api.api_server, settings.api.access_key, settings.api.secret_key) == (
        srv.url,
        srv.access_key,
        srv.secret_key,
    )
    # web and files servers written out: the SDK cannot guess them on a random port
    flat = settings.flat()
    assert flat["api.web_server"] == srv.url
    assert flat["api.files_server"] == srv.url + "/files"
    before = target.read_text()
    again = runner.invoke(main_group, args, env={"CLEARML_API_SECRET_KEY": "OTHER"})
    assert again.exit_code != 0
    assert target.read_text() == before


def test_init_names_what_failed_and_writes_nothing(
    tmp_path: Path,
    embedded_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = embedded_server
    target = tmp_path / "clearml.conf"
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cases = [
        (dead, srv.access_key, srv.secret_key, "API server URL failed: nothing answers"),
        (srv.url + "/files", srv.access_key, srv.secret_key, "API server URL failed"),
        (srv.url, srv.access_key, "wrong-secret", "credentials failed"),
        (srv.url, "WRONGKEY", srv.secret_key, "credentials failed"),
    ]
    for url, key, secret, message in cases:
        monkeypatch.setenv("CLEARML_API_SECRET_KEY", secret)
        assert run(main_group, _init_args(target, url, key)) == 3, url
        err = capsys.readouterr().err
        assert message in err, err
        assert not target.exists()


def test_init_offline_derives_like_the_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = CliRunner()
    env = {"CLEARML_API_SECRET_KEY": "SK"}
    first = tmp_path / "a.conf"
    ok = runner.invoke(main_group, _init_args(first, "http://h:8008", "AK", "--no-check"), env=env)
    assert ok.exit_code == 0, ok.output
    flat = load_settings(config_file=first, env={}).flat()
    assert (flat["api.web_server"], flat["api.files_server"]) == ("http://h:8080", "http://h:8081")
    second = tmp_path / "b.conf"
    named = runner.invoke(
        main_group, _init_args(second, "https://api.example.org", "AK", "--no-check"), env=env
    )
    assert named.exit_code == 0, named.output
    flat = load_settings(config_file=second, env={}).flat()
    assert flat["api.files_server"] == "https://files.example.org"
    third = tmp_path / "c.conf"
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", "SK")
    assert run(main_group, _init_args(third, "http://h:9999", "AK", "--no-check")) == 3
    assert "--web-server and --files-server" in capsys.readouterr().err
    assert not third.exists()


def test_init_prompts_when_flags_missing(tmp_path: Path, embedded_server: Any) -> None:
    srv = embedded_server
    target = tmp_path / "clearml.conf"
    result = CliRunner().invoke(
        main_group,
        ["init", "--output", str(target)],
        input=f"{srv.url}\n{srv.access_key}\n{srv.secret_key}\n",
        env={"CLEARML_API_SECRET_KEY": None},
    )
    assert result.exit_code == 0, result.output
    assert load_settings(config_file=target, env={}).api.access_key == srv.access_key


def test_typed_fields_of_the_executor_submitter_and_daemon(tmp_path: Path) -> None:
    """Every key the executor, the submitter and the daemon read is a typed field (defaults
    from defaults.conf), so a string "false" is False and a bad value fails at load time."""
    defaults = load_settings(env={"HOME": str(tmp_path)})
    assert defaults.executor.kill_grace_s == 10.0
    assert defaults.executor.log_spool_max_mb == 256.0
    assert defaults.executor.args_to_cli is False
    assert defaults.agent.enable_task_env is True
    assert defaults.agent.system_site_packages is False
    assert defaults.slurm.pull_interval_s == 0.25
    assert defaults.slurm.hpcagent_command == ()
    assert defaults.slurm.cancel_job_on_abort is True
    assert defaults.daemon.state_dir == Path(os.path.expanduser("~/.hpcagent/daemon"))
    path = tmp_path / "c.conf"
    path.write_text(
        'executor { kill_grace_sec: 3, args_to_cli: "true", log_spool_max_mb: 0.5 }\n'
        'agent { polling_interval: 2.5, enable_task_env: "false" }\n'
        'slurm { cancel_job_on_abort: "false", hpcagent_command: "/opt/my env/py -m hpcagent" }\n'
        'daemon { state_dir: "/srv/daemons" }\n'
    )
    s = load_settings(config_file=path, env={})
    assert s.executor.kill_grace_s == 3.0
    assert s.executor.args_to_cli is True
    assert s.executor.log_spool_max_mb == 0.5
    assert s.agent.polling_interval_s == 2.5
    assert s.agent.enable_task_env is False
    assert s.slurm.cancel_job_on_abort is False
    assert s.slurm.hpcagent_command == ("/opt/my", "env/py", "-m", "hpcagent")
    assert s.daemon.state_dir == Path("/srv/daemons")
    path.write_text('slurm { hpcagent_command: ["/opt/my env/py", "-m", "hpcagent"] }\n')
    listed = load_settings(config_file=path, env={})
    assert listed.slurm.hpcagent_command == ("/opt/my env/py", "-m", "hpcagent")
    for bad, key in (
        ('executor { kill_grace_sec: "soon" }', r"executor\.kill_grace_sec"),
        ("slurm { cancel_job_on_abort: maybe }", r"slurm\.cancel_job_on_abort"),
        ('slurm { hpcagent_command: "py \'unclosed" }', r"slurm\.hpcagent_command"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=key):
            load_settings(config_file=path, env={})


def test_no_dotted_config_reads_outside_config() -> None:
    """hpcagent's own code reads typed fields; ``Settings.get("section.key", default)`` (a second
    place for a default, no type check) is left to template lookups."""
    import re

    root = Path(__file__).resolve().parents[2] / "hpcagent"
    sections = "agent|api|executor|slurm|daemon|server|sdk"
    pattern = re.compile(rf"""\b(?:get|config)\(\s*["'](?:{sections})\.""")
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if "config" not in path.relative_to(root).parts[:1]
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
