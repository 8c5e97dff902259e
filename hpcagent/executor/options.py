"""What the executor is told: the configuration (:class:`ExecutorConfig`) and the command line
(:class:`ExecuteOptions`).

:class:`ExecutorConfig` collects every setting the executor uses, so that the rest of the
package depends on this one small dataclass (easy to build in tests) and not on the
shape of the full settings tree. :meth:`ExecutorConfig.from_settings` copies it from the typed
sections of ``hpcagent.config.Settings`` (``api``, ``agent``, ``executor``), which hold the
defaults and reject a value of the wrong type when the configuration is loaded.

hpcagent-specific keys (all optional)::

    agent.metrics_interval_sec        10     machine/GPU report period
    agent.abort_poll_interval_sec     2      status poll period (capped at 5 s)
    executor.kill_grace_sec           10     SIGTERM → SIGKILL grace
    executor.log_flush_interval_sec   2      log shipping period (capped at 2 s)
    executor.log_spool_max_mb         256    disk bound for undelivered logs
    executor.final_flush_timeout_sec  60     how long to try delivering logs at the end
    executor.args_to_cli              false  Args/* on argv for every task (executor/arguments.py)
    agent.package_manager.extra_args  []     extra arguments for pip/uv install
    agent.package_manager.system_site_packages  false
    agent.enable_task_env             true   export hyperparams section "Environment"
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcagent.config import ContainerSettings, Settings


def _home() -> Path:
    return Path(os.path.expanduser("~"))


@dataclass
class ExecutorConfig:
    """Every setting the executor uses (see the module docstring for the keys)."""

    api_server: str = ""
    web_server: str = ""
    files_server: str = ""
    access_key: str = ""
    secret_key: str = ""
    worker_id: str = ""
    git_user: str = ""
    git_pass: str = ""
    force_git_ssh_protocol: bool = False
    package_manager: str = "uv"
    package_manager_extra_args: list[str] = field(default_factory=list)
    system_site_packages: bool = False
    python_binary: str = ""
    venvs_dir: Path = field(default_factory=lambda: _home() / ".clearml" / "venvs-builds")
    venvs_cache_path: Path | None = None
    venvs_cache_max_entries: int = 10
    venvs_cache_free_space_threshold_gb: float = 2.0
    vcs_cache_path: Path | None = field(default_factory=lambda: _home() / ".clearml" / "vcs-cache")
    extra_setup_script: str = ""
    enable_task_env: bool = True
    args_to_cli: bool = False
    task_ping_interval_s: float = 60.0
    metrics_interval_s: float = 30.0
    abort_poll_interval_s: float = 2.0
    kill_grace_s: float = 10.0
    log_flush_interval_s: float = 2.0
    log_spool_max_bytes: int = 256 * 1024 * 1024
    final_flush_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ExecutorConfig:
        """Copy from the typed sections of ``hpcagent.config.Settings``."""

        api, agent, ex = settings.api, settings.agent, settings.executor
        return cls(
            api_server=api.api_server,
            web_server=api.web_server,
            files_server=api.files_server,
            access_key=api.access_key,
            secret_key=api.secret_key,
            worker_id=agent.worker_id,
            git_user=agent.git_user,
            git_pass=agent.git_pass,
            force_git_ssh_protocol=agent.force_git_ssh_protocol,
            package_manager=agent.package_manager_type,
            package_manager_extra_args=list(agent.package_manager_extra_args),
            system_site_packages=agent.system_site_packages,
            python_binary=agent.python_binary,
            venvs_dir=agent.venvs_dir,
            venvs_cache_path=agent.venvs_cache_path,
            venvs_cache_max_entries=agent.venvs_cache_max_entries,
            venvs_cache_free_space_threshold_gb=agent.venvs_cache_free_space_threshold_gb,
            vcs_cache_path=agent.vcs_cache_path,
            extra_setup_script=agent.extra_setup_script,
            enable_task_env=agent.enable_task_env,
            args_to_cli=ex.args_to_cli,
            task_ping_interval_s=agent.task_ping_interval_s,
            metrics_interval_s=agent.metrics_interval_s,
            abort_poll_interval_s=min(5.0, agent.abort_poll_interval_s),
            kill_grace_s=ex.kill_grace_s,
            log_flush_interval_s=min(2.0, ex.log_flush_interval_s),
            log_spool_max_bytes=int(ex.log_spool_max_mb * 1024 * 1024),
            final_flush_timeout_s=ex.final_flush_timeout_s,
        )


@dataclass
class ExecuteOptions:
    """Command-line options of ``hpcagent execute``."""

    task_id: str
    worker_id: str
    force: bool = False
    clone: bool = False
    log_file: Path | None = None
    disable_monitoring: bool = False
    container: str | None = None  # --container IMAGE (Apptainer/Singularity)
    docker: str | None = None  # --docker [IMAGE] ("" = the task's or the default image)
    container_settings: ContainerSettings | None = None
