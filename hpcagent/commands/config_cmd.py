"""``hpcagent config show`` and ``hpcagent init``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from hpcagent.api.probe import derived_web_files, probe_server
from hpcagent.config import Settings, load_settings
from hpcagent.errors import ConfigError, UsageError
from hpcagent.server.auth import embedded_urls


def settings_from_context(ctx: click.Context, **overrides: Any) -> Settings:
    """Load settings with the ``--config-file`` of the top-level group and CLI overrides."""
    obj = ctx.find_object(dict) or {}
    return load_settings(config_file=obj.get("config_file"), cli_overrides=overrides)


@click.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show_cmd(ctx: click.Context, as_json: bool) -> None:
    """Print every effective value (secrets masked) and the layer that set it.

    Layers, lowest first: default < file:<path> < env:<VAR> < cli.
    """
    settings = settings_from_context(ctx)
    flat = settings.flat(mask_secrets=True)
    if as_json:
        payload = {
            "config_file": str(settings.layered.config_file or ""),
            "values": {k: {"value": v, "source": settings.source_of(k)} for k, v in flat.items()},
        }
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    click.echo(f"# config file: {settings.layered.config_file or '(none)'}")
    width = max(len(k) for k in flat)
    for key in sorted(flat):
        value = json.dumps(flat[key])
        click.echo(f"{key:<{width}}  {value}  # {settings.source_of(key)}")


CONF_TEMPLATE = """\
# clearml.conf written by `hpcagent init`; the official clearml SDK and agent read it too.
api {{
  api_server: {api_server}
  web_server: {web_server}
  files_server: {files_server}
  credentials {{
    access_key: {access_key}
    secret_key: {secret_key}
  }}
}}
agent {{
  # Git credentials for private repositories (never printed, never on a command line).
  git_user: {git_user}
  git_pass: {git_pass}
  package_manager {{ type: uv }}
  venvs_cache {{ path: ~/.hpcagent/venvs-cache, max_entries: 10, free_space_threshold_gb: 2.0 }}
}}
"""


def render_conf(values: dict[str, str]) -> str:
    """A clearml.conf text; every value JSON-quoted, which is valid HOCON."""
    return CONF_TEMPLATE.format(**{k: json.dumps(v) for k, v in values.items()})


def _web_and_files(
    api_server: str, access_key: str, secret_key: str, web: str, files: str, *, check: bool
) -> tuple[str, str]:
    """The web and files URLs to write: given ones win; else the embedded server's own (found
    by logging in, which also checks URL and keys), else the SDK's derivation."""
    embedded = False
    if check:
        info = probe_server(api_server, access_key, secret_key)
        embedded = info.embedded
        click.echo(
            f"{api_server}: keys accepted ("
            + ("hpcagent embedded server" if embedded else f"ClearML server {info.server_version}")
            + f", API {info.api_version})"
        )
    if web and files:
        return web, files
    derived = embedded_urls(api_server) if embedded else derived_web_files(api_server)
    if derived is None:
        raise ConfigError(
            f"cannot derive the web and files servers from {api_server} (the clearml SDK "
            "knows them only for port 8008 or an api. host): give --web-server and --files-server"
        )
    return web or derived[0], files or derived[1]


@click.command("init")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write (default: ~/clearml.conf).",
)
@click.option("--api-server", default=None, help="API server URL, e.g. http://127.0.0.1:8008.")
@click.option("--access-key", default=None)
@click.option(
    "--secret-key",
    default=None,
    envvar="CLEARML_API_SECRET_KEY",
    help="Secret key (or set CLEARML_API_SECRET_KEY, so it stays out of the process list).",
)
@click.option(
    "--web-server",
    default="",
    help="Web UI URL (else: the embedded server's own, or derived as the clearml SDK does).",
)
@click.option("--files-server", default="", help="Files server URL (else found like --web-server).")
@click.option(
    "--no-check",
    is_flag=True,
    help="Write without logging in first (offline); --web-server/--files-server then needed "
    "unless the SDK can derive them.",
)
@click.option("--git-user", default="")
@click.option("--git-pass", default="", envvar="CLEARML_AGENT_GIT_PASS")
@click.option("--no-input", is_flag=True, help="Never prompt; fail if a required value is missing.")
def init_cmd(
    output: Path | None,
    api_server: str | None,
    access_key: str | None,
    secret_key: str | None,
    web_server: str,
    files_server: str,
    git_user: str,
    git_pass: str,
    no_input: bool,
    no_check: bool,
) -> None:
    """Write a clearml.conf for hpcagent (prompts for what flags did not give).

    Before writing, it logs in to the API server with the keys: a URL that does not answer as a
    ClearML server, or keys it refuses, fail with exit status 3 and say which. The web and
    files servers are written out (the SDK cannot guess them on most ports): those of the
    embedded server, or derived as the SDK does (port 8008 or an ``api.`` host).

    An existing file is never overwritten: remove or move it first. The file is created with
    mode 0600 because it holds the secret key.
    """
    target = (
        output or Path(os.environ.get("HOME", str(Path.home()))) / "clearml.conf"
    ).expanduser()
    if target.exists():
        raise UsageError(f"{target} already exists; not overwriting it (move it away first)")
    if no_input:
        missing = [
            name
            for name, value in (
                ("--api-server", api_server),
                ("--access-key", access_key),
                ("--secret-key", secret_key),
            )
            if not value
        ]
        if missing:
            raise UsageError(f"--no-input given but missing: {', '.join(missing)}")
    api_server = api_server or click.prompt("API server", default="http://127.0.0.1:8008")
    access_key = access_key or click.prompt("Access key")
    secret_key = secret_key or click.prompt("Secret key", hide_input=True)
    if not str(api_server).startswith(("http://", "https://")):
        raise ConfigError(f"API server URL failed: {api_server!r} is not an http(s):// URL")
    api_server = str(api_server).rstrip("/")
    web_server, files_server = _web_and_files(
        api_server, str(access_key), str(secret_key), web_server, files_server, check=not no_check
    )
    text = render_conf(
        {
            "api_server": api_server,
            "web_server": web_server,
            "files_server": files_server,
            "access_key": str(access_key),
            "secret_key": str(secret_key),
            "git_user": git_user,
            "git_pass": git_pass,
        }
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never clobber a file created between the check above and now.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{target} already exists; not overwriting it") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"wrote {target} (mode 0600)")
