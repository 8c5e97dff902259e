"""Typed, frozen views of the merged configuration.

The rest of hpcagent reads these objects, never the raw tree, except for template lookups
(``${CONFIG.<path>}``), which go through :meth:`Settings.get`. Conversions are strict: a value
of the wrong type raises :class:`~hpcagent.errors.ConfigError` naming the key and where it was
set, instead of failing later in some unrelated place.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcagent.config.loader import Layered, masked, unflatten
from hpcagent.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Reader:
    """Typed access to flat values with error messages that name the key and its source."""

    def __init__(self, layered: Layered) -> None:
        self._values = layered.values
        self._sources = layered.sources

    def fail(self, key: str, expected: str) -> ConfigError:
        source = self._sources.get(key, "default")
        return ConfigError(
            f"config key {key} = {self._values.get(key)!r} (from {source}): expected {expected}"
        )

    def raw(self, key: str) -> Any:
        return self._values.get(key)

    def get_str(self, key: str, default: str = "") -> str:
        value = self._values.get(key, default)
        if value is None:
            return default
        if isinstance(value, (dict, list)):
            raise self.fail(key, "a string")
        return str(value)

    def get_int(self, key: str, default: int) -> int:
        value = self._values.get(key, default)
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise self.fail(key, "an integer") from None

    def get_float(self, key: str, default: float) -> float:
        value = self._values.get(key, default)
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise self.fail(key, "a number") from None

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._values.get(key, default)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self.fail(key, "true or false")

    def get_list(self, key: str) -> list[str]:
        value = self._values.get(key, [])
        if value in (None, ""):
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.fail(key, "a list")
        return [str(v) for v in value]

    def get_path(self, key: str) -> Path | None:
        text = self.get_str(key)
        return Path(text).expanduser() if text else None


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the API server."""

    api_server: str
    web_server: str
    files_server: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    timeout_s: float
    retries: int
    max_req_size: int


@dataclass(frozen=True)
class AgentSettings:
    """What the executor and the local daemon need (clearml.conf's ``agent`` section)."""

    worker_id: str
    worker_name: str
    git_user: str
    git_pass: str = field(repr=False)
    force_git_ssh_protocol: bool
    python_binary: str
    package_manager_type: str
    package_manager_extra_args: list[str]
    venvs_dir: Path
    venvs_cache_path: Path | None
    venvs_cache_max_entries: int
    venvs_cache_free_space_threshold_gb: float
    vcs_cache_path: Path | None
    default_docker_image: str
    default_docker_arguments: list[str]
    extra_setup_script: str
    task_ping_interval_s: float
    abort_poll_interval_s: float
    metrics_interval_s: float
    uptime: list[str]
    downtime: list[str]
    system_site_packages: bool = False
    enable_task_env: bool = True
    polling_interval_s: float = 5.0


@dataclass(frozen=True)
class ExecutorSettings:
    """``hpcagent execute``'s own settings (``executor`` section)."""

    kill_grace_s: float = 10.0
    log_flush_interval_s: float = 2.0
    log_spool_max_mb: float = 256.0
    final_flush_timeout_s: float = 60.0
    args_to_cli: bool = False


@dataclass(frozen=True)
class SlurmSettings:
    """The submitter's own settings (``slurm`` section)."""

    state_dir: Path
    poll_interval_s: float
    max_poll_interval_s: float
    max_commands_per_minute: int
    pre_setup: str
    post_setup: str
    pull_interval_s: float = 0.25
    #: argv prefix that starts hpcagent on the compute node; () = this Python with -m hpcagent
    hpcagent_command: tuple[str, ...] = ()
    never_runs_fail_s: float = 60.0
    cancel_job_on_abort: bool = True


@dataclass(frozen=True)
class DaemonSettings:
    """``hpcagent daemon``'s own settings (``daemon`` section)."""

    state_dir: Path = field(default_factory=lambda: Path("~/.hpcagent/daemon").expanduser())


@dataclass(frozen=True)
class ServerSettings:
    """The embedded server's settings (``server`` section)."""

    data_dir: Path
    host: str
    port: int
    max_body_mb: float
    #: Events older than this many days are deleted (0: kept forever); docs/server.md.
    event_retention_days: float = 0.0
    #: ``in_progress`` tasks not updated for this long are stopped (0: never), checked every
    #: ``non_responsive_check_s``; clearml-server's defaults (docs/server.md).
    non_responsive_s: float = 7200.0
    non_responsive_check_s: float = 900.0


@dataclass(frozen=True)
class ContainerSettings:
    """The ``agent.container`` section plus ``agent.default_docker`` (docs/containers.md).

    The one typed reading of these keys: the executor, the submitter's pull on submit and
    ``hpcagent build`` all take this object, so each default lives in defaults.conf only.
    """

    binary: str = ""
    cache_dir: Path = field(default_factory=lambda: Path("~/.hpcagent/containers").expanduser())
    binds: tuple[str, ...] = ()
    pull_on_submit: bool = False
    pull_timeout_s: float = 1800.0
    lock_timeout_s: float = 3600.0
    mode: str = "host"
    cleanenv: bool = True
    env_passthrough: tuple[str, ...] = ()
    docker_binary: str = "docker"
    default_image: str = ""
    default_arguments: tuple[str, ...] = ()
    ssh_dir: Path | None = None
    forward_ssh_agent: bool = True


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one hpcagent process."""

    api: ApiSettings
    agent: AgentSettings
    slurm: SlurmSettings
    server: ServerSettings
    layered: Layered = field(repr=False)
    container: ContainerSettings = field(default_factory=ContainerSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)

    def get(self, path: str, default: Any = None) -> Any:
        """Any value of the merged tree by dotted path (a leaf, or a sub-tree as a dict)."""
        values = self.layered.values
        if path in values:
            return values[path]
        prefix = path + "."
        sub = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
        return unflatten(sub) if sub else default

    def source_of(self, path: str) -> str:
        """Which layer set a leaf: ``default``, ``file:<path>``, ``env:<NAME>`` or ``cli``."""
        return self.layered.sources.get(path, "unset")

    def as_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """The merged tree as nested dicts (secrets masked unless asked otherwise)."""
        values = masked(self.layered.values) if mask_secrets else self.layered.values
        return unflatten(values)

    def flat(self, *, mask_secrets: bool = True) -> Mapping[str, Any]:
        """The merged leaves by dotted path (secrets masked unless asked otherwise)."""
        return masked(self.layered.values) if mask_secrets else dict(self.layered.values)


def build_settings(layered: Layered) -> Settings:
    """Convert merged values into typed settings, validating each one."""
    r = _Reader(layered)
    api_server = r.get_str("api.api_server").rstrip("/")
    if not api_server.startswith(("http://", "https://")):
        raise ConfigError(
            f"config key api.api_server = {api_server!r} (from "
            f"{layered.sources.get('api.api_server', 'default')}): expected an http(s):// URL"
        )
    api = ApiSettings(
        api_server=api_server,
        web_server=r.get_str("api.web_server") or _derive(api_server, "8080", "app."),
        files_server=r.get_str("api.files_server") or _derive(api_server, "8081", "files."),
        access_key=r.get_str("api.credentials.access_key"),
        secret_key=r.get_str("api.credentials.secret_key"),
        timeout_s=r.get_float("api.http.timeout_sec", 30.0),
        retries=r.get_int("api.http.retries", 8),
        max_req_size=r.get_int("api.http.max_req_size", 15 * 1024 * 1024),
    )
    manager = r.get_str("agent.package_manager.type", "uv").lower()
    if manager not in {"uv", "pip", "poetry"}:
        raise ConfigError(
            f"config key agent.package_manager.type = {manager!r}: expected 'uv', 'pip' or"
            " 'poetry' (poetry.lock first; installed with uv)"
        )
    agent = AgentSettings(
        worker_id=r.get_str("agent.worker_id"),
        worker_name=r.get_str("agent.worker_name") or socket.gethostname(),
        git_user=r.get_str("agent.git_user"),
        git_pass=r.get_str("agent.git_pass"),
        force_git_ssh_protocol=r.get_bool("agent.force_git_ssh_protocol", False),
        python_binary=r.get_str("agent.python_binary"),
        package_manager_type=manager,
        package_manager_extra_args=r.get_list("agent.package_manager.extra_args"),
        venvs_dir=r.get_path("agent.venvs_dir") or Path("~/.hpcagent/venvs-builds").expanduser(),
        venvs_cache_path=r.get_path("agent.venvs_cache.path"),
        venvs_cache_max_entries=r.get_int("agent.venvs_cache.max_entries", 10),
        venvs_cache_free_space_threshold_gb=r.get_float(
            "agent.venvs_cache.free_space_threshold_gb", 2.0
        ),
        vcs_cache_path=(
            r.get_path("agent.vcs_cache.path")
            if r.get_bool("agent.vcs_cache.enabled", True)
            else None
        ),
        default_docker_image=r.get_str("agent.default_docker.image"),
        default_docker_arguments=r.get_list("agent.default_docker.arguments"),
        extra_setup_script=r.get_str("agent.extra_setup_script"),
        task_ping_interval_s=r.get_float("agent.task_ping_interval_sec", 60.0),
        abort_poll_interval_s=min(r.get_float("agent.abort_poll_interval_sec", 2.0), 5.0),
        metrics_interval_s=r.get_float("agent.metrics_interval_sec", 10.0),
        uptime=r.get_list("agent.uptime"),
        downtime=r.get_list("agent.downtime"),
        system_site_packages=r.get_bool("agent.package_manager.system_site_packages", False),
        enable_task_env=r.get_bool("agent.enable_task_env", True),
        polling_interval_s=r.get_float("agent.polling_interval", 5.0),
    )
    slurm = SlurmSettings(
        state_dir=r.get_path("slurm.state_dir") or Path("~/.hpcagent/slurm").expanduser(),
        poll_interval_s=r.get_float("slurm.poll_interval_sec", 5.0),
        max_poll_interval_s=r.get_float("slurm.max_poll_interval_sec", 60.0),
        max_commands_per_minute=r.get_int("slurm.max_commands_per_minute", 60),
        pre_setup=r.get_str("slurm.pre_setup"),
        post_setup=r.get_str("slurm.post_setup"),
        pull_interval_s=r.get_float("slurm.pull_interval_sec", 0.25),
        hpcagent_command=_command(r, "slurm.hpcagent_command"),
        never_runs_fail_s=r.get_float("slurm.never_runs_fail_sec", 60.0),
        cancel_job_on_abort=r.get_bool("slurm.cancel_job_on_abort", True),
    )
    server = ServerSettings(
        data_dir=r.get_path("server.data_dir") or Path("~/.hpcagent/server").expanduser(),
        host=r.get_str("server.host", "127.0.0.1"),
        port=r.get_int("server.port", 8008),
        max_body_mb=r.get_float("server.max_body_mb", 15.0),
        event_retention_days=r.get_float("server.event_retention_days", 0.0),
        non_responsive_s=r.get_float("server.non_responsive_sec", 7200.0),
        non_responsive_check_s=r.get_float("server.non_responsive_check_sec", 900.0),
    )
    return Settings(
        api=api,
        agent=agent,
        slurm=slurm,
        server=server,
        layered=layered,
        container=_container(r, agent),
        executor=ExecutorSettings(
            kill_grace_s=r.get_float("executor.kill_grace_sec", 10.0),
            log_flush_interval_s=r.get_float("executor.log_flush_interval_sec", 2.0),
            log_spool_max_mb=r.get_float("executor.log_spool_max_mb", 256.0),
            final_flush_timeout_s=r.get_float("executor.final_flush_timeout_sec", 60.0),
            args_to_cli=r.get_bool("executor.args_to_cli", False),
        ),
        daemon=DaemonSettings(
            state_dir=r.get_path("daemon.state_dir") or Path("~/.hpcagent/daemon").expanduser()
        ),
    )


def _command(r: _Reader, key: str) -> tuple[str, ...]:
    """A command line: a string split like a shell would, or a list of words ("" or []: ())."""
    value = r.raw(key)
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, dict):
        raise r.fail(key, "a command line (a string or a list)")
    try:
        return tuple(shlex.split(str(value)))
    except ValueError as exc:
        raise r.fail(key, f"a command line ({exc})") from None


def _container(r: _Reader, agent: AgentSettings) -> ContainerSettings:
    d = ContainerSettings()  # the typed defaults (defaults.conf states the same for users)
    mode = r.get_str("agent.container.mode", d.mode) or d.mode
    if mode not in ("host", "inside"):
        raise r.fail("agent.container.mode", "host or inside")
    ssh = r.get_str("agent.container.ssh_dir", "~/.ssh")
    return ContainerSettings(
        binary=r.get_str("agent.container.binary", d.binary),
        cache_dir=r.get_path("agent.container.cache_dir") or d.cache_dir,
        binds=tuple(r.get_list("agent.container.binds")),
        pull_on_submit=r.get_bool("agent.container.pull_on_submit", d.pull_on_submit),
        pull_timeout_s=r.get_float("agent.container.pull_timeout_sec", d.pull_timeout_s),
        lock_timeout_s=r.get_float("agent.container.lock_timeout_sec", d.lock_timeout_s),
        mode=mode,
        cleanenv=r.get_bool("agent.container.cleanenv", d.cleanenv),
        env_passthrough=tuple(r.get_list("agent.container.env_passthrough")),
        docker_binary=r.get_str("agent.container.docker_binary") or d.docker_binary,
        default_image=agent.default_docker_image.strip(),
        default_arguments=tuple(agent.default_docker_arguments),
        ssh_dir=Path(ssh).expanduser() if ssh else None,
        forward_ssh_agent=r.get_bool("agent.container.forward_ssh_agent", d.forward_ssh_agent),
    )


def _derive(api_server: str, port: str, host_prefix: str) -> str:
    """Web/files hosts from the API host, as clearml.conf does (port 8008 → 8080/8081)."""
    if ":8008" in api_server:
        return api_server.replace(":8008", f":{port}")
    if "://api." in api_server:
        return api_server.replace("://api.", f"://{host_prefix}")
    return api_server
