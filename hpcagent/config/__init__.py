"""Configuration: packaged defaults < config file < environment < command line.

Usage::

    settings = load_settings(config_file=None, cli_overrides={"api.api_server": url})
    settings.api.api_server, settings.agent.worker_id, settings.get("agent.some.path")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hpcagent.config.loader import SECRET_KEYS, Layered, load_layers, parse_override_value
from hpcagent.config.settings import (
    AgentSettings,
    ApiSettings,
    ContainerSettings,
    DaemonSettings,
    ExecutorSettings,
    ServerSettings,
    Settings,
    SlurmSettings,
    build_settings,
)

__all__ = [
    "SECRET_KEYS",
    "AgentSettings",
    "ApiSettings",
    "ContainerSettings",
    "DaemonSettings",
    "ExecutorSettings",
    "Layered",
    "ServerSettings",
    "Settings",
    "SlurmSettings",
    "load_settings",
    "parse_override_value",
]


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the effective settings.

    Args:
        config_file: ``--config-file``; when None, ``CLEARML_CONFIG_FILE`` or ``~/clearml.conf``.
        cli_overrides: dotted keys set by command-line flags (None values are ignored).
        env: the environment to read (``os.environ`` when None).

    Raises:
        ConfigError: a file is missing or malformed, or a value has the wrong type.
    """
    return build_settings(load_layers(config_file, cli_overrides, env))
