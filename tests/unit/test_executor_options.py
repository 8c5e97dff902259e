"""ExecutorConfig read from real settings (packaged defaults + a config file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcagent.config import load_settings
from hpcagent.executor.options import ExecutorConfig


def test_from_settings_reads_agent_and_executor_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "CLEARML_API_HOST",
        "CLEARML_API_ACCESS_KEY",
        "CLEARML_API_SECRET_KEY",
        "CLEARML_WORKER_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    conf = tmp_path / "c.conf"
    conf.write_text(
        """
api { api_server: "http://h:8008", credentials { access_key: A, secret_key: B } }
agent {
  git_user: u, git_pass: p, force_git_ssh_protocol: true
  package_manager { type: pip, extra_args: ["--no-index"] }
  venvs_cache { path: "VC_PATH", max_entries: 3 }
  abort_poll_interval_sec: 30
}
executor { kill_grace_sec: 4, log_spool_max_mb: 1, args_to_cli: false }
""".replace("VC_PATH", str(tmp_path / "vc"))
    )
    cfg = ExecutorConfig.from_settings(load_settings(config_file=str(conf), cli_overrides={}))
    assert (cfg.api_server, cfg.access_key, cfg.secret_key) == ("http://h:8008", "A", "B")
    assert (cfg.git_user, cfg.git_pass, cfg.force_git_ssh_protocol) == ("u", "p", True)
    assert (cfg.package_manager, cfg.package_manager_extra_args) == ("pip", ["--no-index"])
    assert (cfg.venvs_cache_path, cfg.venvs_cache_max_entries) == (tmp_path / "vc", 3)
    assert cfg.abort_poll_interval_s == 5.0  # capped: an abort is noticed within 5 s
    assert (cfg.kill_grace_s, cfg.log_spool_max_bytes, cfg.args_to_cli) == (4.0, 1024 * 1024, False)
