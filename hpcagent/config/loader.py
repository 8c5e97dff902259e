"""Load the layered configuration: packaged defaults < file < environment < command line.

Each layer is flattened into ``{dotted.path: value}`` (lists are leaves), merged in order, and
the layer that set each leaf is remembered, so ``hpcagent config show`` can say where a value
came from. The merged tree is then turned into frozen, typed settings (``settings.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pyhocon import ConfigFactory, ConfigTree
from pyparsing import ParseBaseException

from hpcagent.errors import ConfigError

#: Environment variables with a fixed meaning, and the config path each one sets.
ENV_KEYS: dict[str, str] = {
    "CLEARML_API_HOST": "api.api_server",
    "CLEARML_WEB_HOST": "api.web_server",
    "CLEARML_FILES_HOST": "api.files_server",
    "CLEARML_API_ACCESS_KEY": "api.credentials.access_key",
    "CLEARML_API_SECRET_KEY": "api.credentials.secret_key",
    "CLEARML_WORKER_NAME": "agent.worker_name",
    "CLEARML_WORKER_ID": "agent.worker_id",
    "CLEARML_AGENT_GIT_USER": "agent.git_user",
    "CLEARML_AGENT_GIT_PASS": "agent.git_pass",
    "CLEARML_DOCKER_IMAGE": "agent.default_docker.image",
}

#: Prefix of the dynamic overrides, e.g. CLEARML_AGENT__AGENT__DEFAULT_DOCKER__IMAGE.
DYNAMIC_PREFIX = "CLEARML_AGENT__"

#: Leaves whose values are secrets: masked in every printout.
SECRET_KEYS = frozenset({"api.credentials.secret_key", "agent.git_pass"})

#: Older spellings that clearml.conf files use, mapped to the canonical key.
ALIASES: dict[str, str] = {"api.host": "api.api_server"}


@dataclass(frozen=True)
class Layered:
    """The merged configuration: plain values and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    config_file: Path | None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            nested = flatten(value, f"{path}.")
            if nested:
                flat.update(nested)
            else:
                flat[path] = {}
        else:
            flat[path] = _plain(value)
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return tree


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigTree):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _canonical(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        for old, new in ALIASES.items():
            if key == old or key.startswith(old + "."):
                key = new + key[len(old) :]
        out[key] = value
    return out


def packaged_defaults() -> dict[str, Any]:
    """The flattened packaged defaults (hpcagent/config/defaults.conf)."""
    text = resources.files("hpcagent.config").joinpath("defaults.conf").read_text("utf-8")
    return flatten(ConfigFactory.parse_string(text))


def parse_config_file(path: Path) -> dict[str, Any]:
    """Parse one HOCON file into flat keys.

    Raises:
        ConfigError: the file cannot be read, or is not valid HOCON; the message names the file,
            the line and column, and what the parser expected there.
    """
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        tree = ConfigFactory.parse_string(text)
    except ParseBaseException as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}:{exc.col}: invalid HOCON: {exc.msg} (line: {exc.line.strip()!r})"
        ) from exc
    except Exception as exc:  # pyhocon raises its own errors for e.g. bad substitutions
        raise ConfigError(f"{path}: invalid HOCON: {exc}") from exc
    return _canonical(flatten(tree))


def find_config_file(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path | None:
    """Choose the config file: ``--config-file``, else ``CLEARML_CONFIG_FILE``, else ~/clearml.conf.

    An explicitly named file must exist; the home default is optional.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} (from --config-file) does not exist")
        return path
    named = env.get("CLEARML_CONFIG_FILE")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} (from CLEARML_CONFIG_FILE) does not exist")
        return path
    home = Path(env.get("HOME", str(Path.home()))) / "clearml.conf"
    return home if home.is_file() else None


def parse_override_value(text: str) -> Any:
    """Parse an override as HOCON/JSON (ints, floats, bools, lists, objects), else a string."""
    stripped = text.strip()
    if not stripped:
        return ""
    try:
        return _plain(json.loads(stripped))
    except ValueError:
        pass
    try:
        value = ConfigFactory.parse_string(f"v: {stripped}").get("v")
    except Exception:
        return text
    return _plain(value)


def env_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Values set by the environment, each with the variable that set it."""
    layer: dict[str, tuple[Any, str]] = {}
    for name, path in ENV_KEYS.items():
        if env.get(name):
            layer[path] = (env[name], f"env:{name}")
    for name in sorted(env):
        if not name.startswith(DYNAMIC_PREFIX) or name == DYNAMIC_PREFIX:
            continue
        path = name[len(DYNAMIC_PREFIX) :].replace("__", ".").lower()
        value = parse_override_value(env[name])
        if isinstance(value, dict):
            for sub, leaf in flatten(value, f"{path}.").items():
                layer[sub] = (leaf, f"env:{name}")
        else:
            layer[path] = (value, f"env:{name}")
    return layer


def load_layers(
    config_file: str | os.PathLike[str] | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Layered:
    """Merge all layers; later layers win per leaf."""
    environ = os.environ if env is None else env
    values = packaged_defaults()
    sources = dict.fromkeys(values, "default")
    path = find_config_file(config_file, environ)
    if path is not None:
        for key, value in parse_config_file(path).items():
            values[key] = value
            sources[key] = f"file:{path}"
    for key, (value, source) in env_layer(environ).items():
        values[key] = value
        sources[key] = source
    for key, value in _canonical(dict(cli_overrides or {})).items():
        if value is None:
            continue
        values[key] = value
        sources[key] = "cli"
    return Layered(values=values, sources=sources, config_file=path)


def masked(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with secrets replaced by a mask that keeps only their length hint."""
    out = dict(values)
    for key in SECRET_KEYS:
        if out.get(key):
            out[key] = "********"
    return out
