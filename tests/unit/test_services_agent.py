"""``hpcagent server --services-agent``'s daemon child: what it is started with (the process
itself is run by tests/e2e/test_server_services_agent.py)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hpcagent.commands.server import server_cmd
from hpcagent.commands.services_agent import ServicesAgent
from hpcagent.server.auth import Credentials
from hpcagent.server.runner import local_url

CREDS = Credentials("SVCACCESSKEY", "svc-secret-value-0123456789")


def test_the_keys_go_in_the_environment_never_on_the_command_line(tmp_path: Path) -> None:
    agent = ServicesAgent(data_dir=tmp_path, limit=3, config_file="/etc/agent.conf", env={})
    argv = agent.argv()
    assert argv[argv.index("--config-file") + 1] == "/etc/agent.conf"
    assert argv[argv.index("--services-mode") + 1] == "3"
    assert argv[argv.index("--queue") + 1] == "services"
    assert argv[argv.index("--state-dir") + 1] == str(tmp_path / "services-agent")
    assert "--create-queue" in argv
    assert "--cpu-only" in argv
    assert not any(CREDS.secret_key in a or CREDS.access_key in a for a in argv)
    env = agent.environment("http://127.0.0.1:8008", CREDS)
    assert env["CLEARML_API_SECRET_KEY"] == CREDS.secret_key
    assert env["CLEARML_API_ACCESS_KEY"] == CREDS.access_key
    assert env["CLEARML_API_HOST"] == "http://127.0.0.1:8008"
    assert env["CLEARML_FILES_HOST"] == "http://127.0.0.1:8008/files"


def test_a_bare_flag_means_no_limit_and_a_configured_files_server_wins(tmp_path: Path) -> None:
    agent = ServicesAgent(
        data_dir=tmp_path, configured_files_server="file:///shared/artifacts", env={}
    )
    assert agent.argv()[-1] == "--services-mode"  # no N: no limit
    env = agent.environment("http://127.0.0.1:8008", CREDS)
    assert "CLEARML_FILES_HOST" not in env  # the configuration's file:// files server stays


def test_stop_before_start_does_nothing(tmp_path: Path) -> None:
    ServicesAgent(data_dir=tmp_path, env={}).stop()


def test_the_daemon_reaches_a_wildcard_bound_server_on_loopback() -> None:
    assert local_url("0.0.0.0", 8008) == "http://127.0.0.1:8008"
    assert local_url("::", 8008) == "http://[::1]:8008"
    assert local_url("10.1.2.3", 8008) == "http://10.1.2.3:8008"


def test_a_broken_configuration_fails_the_server_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("api { api_server: ")
    res = CliRunner().invoke(
        server_cmd,
        ["--data-dir", str(tmp_path / "d"), "--services-agent"],
        env={"CLEARML_CONFIG_FILE": str(bad)},
    )
    assert res.exit_code != 0
    assert "bad.conf" in str(res.exception)
    assert not (tmp_path / "d").exists()  # nothing started
