"""Load the layered configuration: packaged defaults < file < environment < command line.

Each layer is flattened into ``{dotted.path: value}`` (lists are leaves), merged in order, and
the layer that set each leaf is remembered, so ``hpcagent config show`` can say where a value
came from. The merged tree is then turned into frozen, typed settings (``settings.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcagent import __version__
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
    if isinstance(value, Mapping):  # pyhocon's ConfigTree is an OrderedDict
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


def cache_root(env: Mapping[str, str]) -> Path:
    """hpcagent's per-user cache folder: ``$XDG_CACHE_HOME/hpcagent``, else
    ``~/.cache/hpcagent`` (what a short-lived process keeps instead of computing it again)."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or Path.home(), ".cache")
    return Path(base) / "hpcagent"


def parse_cache_dir(env: Mapping[str, str]) -> Path:
    """Where parsed configuration files are kept (:func:`parse_hocon`)."""
    return cache_root(env) / "config"


#: A line that makes a parse depend on more than the text: a substitution (``${...}`` reads the
#: environment) or an include (another file). Comment lines do not count.
_DYNAMIC = re.compile(r"^(?!\s*(?:#|//)).*(?:\$\{|^\s*include\b)", re.MULTILINE)

#: Cache entries written longer ago than this are removed when a new one is written (one still
#: in use is written again on its next miss).
CACHE_MAX_AGE_S = 7 * 86400


def parse_hocon(text: str, name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``text`` (HOCON) flattened into dotted keys, through a per-user cache.

    Parsing with pyhocon costs about 0.2 s of CPU per file (its grammar is built on every
    parse), which every ``hpcagent execute`` paid twice (the packaged defaults and the user's
    file) in each job. The flattened result is kept as JSON in :func:`parse_cache_dir`, one file
    per ``name`` (the file's path: a changed file, e.g. a rotated key, overwrites its entry),
    valid while the text's SHA-256 and hpcagent's version match; entries older than
    :data:`CACHE_MAX_AGE_S` go when a new one is written. The cache folder is 0700 and the
    files 0600 (a user's file holds its keys, as the file itself does). Text with
    substitutions (``${...}``, which read the environment) or ``include`` outside comments is
    always parsed. Any failure to read or write the cache falls back to parsing.

    Raises:
        pyparsing.ParseBaseException, or pyhocon's own errors, when ``text`` is no valid HOCON.
    """
    cacheable = _DYNAMIC.search(text) is None
    digest = hashlib.sha256(f"{__version__}\0{text}".encode()).hexdigest()
    folder = parse_cache_dir(os.environ if env is None else env)
    entry = folder / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")
    if cacheable:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            doc = json.loads(entry.read_text("utf-8"))
            if doc["sha256"] == digest:
                return dict(doc["values"])
    from pyhocon import ConfigFactory  # only on a cache miss: ~0.1 s to import

    flat = flatten(ConfigFactory.parse_string(text))
    if cacheable:
        write_cache_entry(entry, {"sha256": digest, "values": flat})
    return flat


def write_cache_entry(entry: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as JSON to ``entry`` in one of hpcagent's cache folders: the folder 0700,
    the file 0600, replaced atomically; entries older than :data:`CACHE_MAX_AGE_S` in the same
    folder are removed first. A failure leaves the cache as it was (it is only a cache)."""
    folder = entry.parent
    with contextlib.suppress(OSError, TypeError, ValueError):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _prune(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            os.replace(tmp, entry)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _prune(folder: Path) -> None:
    cutoff = time.time() - CACHE_MAX_AGE_S
    for item in folder.iterdir():
        with contextlib.suppress(OSError):
            if item.stat().st_mtime < cutoff:
                item.unlink()


def packaged_defaults(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The flattened packaged defaults (hpcagent/config/defaults.conf)."""
    source = Path(__file__).with_name("defaults.conf")  # package data, installed beside it
    return parse_hocon(source.read_text("utf-8"), f"package:{source}", env)


def parse_config_file(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse one HOCON file into flat keys (:func:`parse_hocon`).

    Raises:
        ConfigError: the file cannot be read, or is not valid HOCON; the message names the file,
            the line and column, and what the parser expected there.
    """
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        flat = parse_hocon(text, f"file:{path.resolve()}", env)
    except Exception as exc:  # pyhocon raises its own errors for e.g. bad substitutions
        from pyparsing import ParseBaseException  # loaded by pyhocon by now

        if isinstance(exc, ParseBaseException):
            raise ConfigError(
                f"{path}:{exc.lineno}:{exc.col}: invalid HOCON: {exc.msg} "
                f"(line: {exc.line.strip()!r})"
            ) from exc
        raise ConfigError(f"{path}: invalid HOCON: {exc}") from exc
    return _canonical(flat)


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
    from pyhocon import ConfigFactory

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
    values = packaged_defaults(environ)
    sources = dict.fromkeys(values, "default")
    path = find_config_file(config_file, environ)
    if path is not None:
        for key, value in parse_config_file(path, environ).items():
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
