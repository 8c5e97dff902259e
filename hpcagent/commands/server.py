"""``hpcagent server``: run the embedded ClearML-compatible server; ``hpcagent server keys``:
its key pairs."""

from __future__ import annotations

from pathlib import Path

import click

from hpcagent.commands.longrunning import services_mode_option
from hpcagent.commands.server_keys import keys_cmd
from hpcagent.commands.services_agent import DEFAULT_SERVICES_QUEUE, ServicesAgent
from hpcagent.server.auth import DEFAULT_TOKEN_LIFETIME_S
from hpcagent.server.connections import ConnectionLimits
from hpcagent.server.files import FilesLimits
from hpcagent.server.runner import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ServerOptions,
    serve,
)


@click.group("server", invoke_without_command=True)
@click.pass_context
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="TCP port.")
@click.option(
    "--data-dir",
    default=str(DEFAULT_DATA_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the SQLite database and the credentials.",
)
@click.option(
    "--access-key",
    envvar="HPCAGENT_SERVER_ACCESS_KEY",
    default=None,
    help="Preset access key (else generated on first start). Env: HPCAGENT_SERVER_ACCESS_KEY.",
)
@click.option(
    "--secret-key",
    envvar="HPCAGENT_SERVER_SECRET_KEY",
    default=None,
    help="Preset secret key. Prefer the env HPCAGENT_SERVER_SECRET_KEY (argv is visible).",
)
@click.option(
    "--max-body-mb",
    default=15.0,
    show_default=True,
    type=float,
    help="Largest request body accepted (like api.http.max_req_size); larger gets 413.",
)
@click.option(
    "--files-max-mb",
    default=0.0,
    show_default=True,
    type=float,
    help="Largest file the files server (/files) accepts, in MiB (0: no limit); larger gets 413.",
)
@click.option(
    "--files-min-free-mb",
    default=1024.0,
    show_default=True,
    type=float,
    help="Free space an upload must leave on the data dir's disk, in MiB; else 507.",
)
@services_mode_option(
    "--services-agent",
    "services_agent",
    help="Also run `hpcagent daemon --services-mode [N]` on the services queue (pipeline "
    "controllers), as ClearML's server does; stopped with the server.",
)
@click.option(
    "--services-queue",
    default=DEFAULT_SERVICES_QUEUE,
    show_default=True,
    help="The queue of --services-agent (created when missing).",
)
@click.option(
    "--max-connections",
    default=0,
    show_default=True,
    type=int,
    help="Open connections at most (0: 4096); always kept 128 below the descriptor limit. "
    "A connection over it is answered 503.",
)
@click.option(
    "--header-timeout",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds a client has to send a request's headers; else 408 and closed.",
)
@click.option(
    "--body-timeout",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds a request body may pause between two chunks; else the connection is closed.",
)
@click.option(
    "--token-lifetime-days",
    default=DEFAULT_TOKEN_LIFETIME_S / 86400,
    show_default=True,
    type=float,
    help="Longest lifetime of a token from auth.login; clients sign in again with their keys.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes sharing the port and the database (use the cores of one machine; "
    "docs/server.md).",
)
@click.option(
    "--event-retention-days",
    default=None,
    type=float,
    help="Delete events older than this many days (0: keep all). "
    "Default: server.event_retention_days of the configuration (0).",
)
@click.option(
    "--non-responsive-sec",
    default=None,
    type=float,
    help="Stop a running task nothing has updated for this many seconds (its node and runner "
    "are gone), as clearml-server does; 0: never. Default: server.non_responsive_sec of the "
    "configuration (7200), checked every server.non_responsive_check_sec (900).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False),
)
def server_cmd(
    ctx: click.Context,
    host: str,
    port: int,
    data_dir: Path,
    access_key: str | None,
    secret_key: str | None,
    max_body_mb: float,
    files_max_mb: float,
    files_min_free_mb: float,
    services_agent: int | None,
    services_queue: str,
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
    token_lifetime_days: float,
    workers: int,
    event_retention_days: float | None,
    non_responsive_sec: float | None,
    log_level: str,
) -> None:
    """Run the embedded ClearML-compatible API server (SQLite in DATA_DIR).

    With --services-agent, a services-mode `hpcagent daemon` runs next to it on the services
    queue (its log: DATA_DIR/services-agent/daemon.log); it reads the configuration as
    `hpcagent daemon` does, with this server's address and keys.

    `hpcagent server keys add|rotate|revoke|list` manage its key pairs (docs/server.md).
    """
    if ctx.invoked_subcommand is not None:
        return
    if bool(access_key) != bool(secret_key):
        raise click.UsageError("--access-key and --secret-key must be given together")
    if max_body_mb <= 0:
        raise click.UsageError("--max-body-mb must be positive")
    if files_max_mb < 0 or files_min_free_mb < 0:
        raise click.UsageError("--files-max-mb and --files-min-free-mb must not be negative")
    if max_connections < 0 or header_timeout <= 0 or body_timeout <= 0:
        raise click.UsageError(
            "--max-connections must not be negative, --header-timeout/--body-timeout positive"
        )
    if not 0 < token_lifetime_days <= 366:
        raise click.UsageError("--token-lifetime-days must be above 0 and at most 366")
    from hpcagent.config import load_settings

    settings = load_settings(config_file=(ctx.find_object(dict) or {}).get("config_file")).server
    if event_retention_days is None:
        event_retention_days = settings.event_retention_days
    if event_retention_days < 0:
        raise click.UsageError("--event-retention-days must not be negative")
    if non_responsive_sec is None:
        non_responsive_sec = settings.non_responsive_s
    if non_responsive_sec < 0:
        raise click.UsageError("--non-responsive-sec must not be negative (0 turns it off)")
    if settings.non_responsive_check_s <= 0:
        raise click.UsageError(
            f"server.non_responsive_check_sec must be positive (is "
            f"{settings.non_responsive_check_s:g}); fix it in the configuration file"
        )
    companions = []
    if services_agent is not None:
        companions.append(_services_agent(data_dir, services_queue, services_agent))
    serve(
        ServerOptions(
            host=host,
            port=port,
            data_dir=data_dir,
            access_key=access_key,
            secret_key=secret_key,
            max_body=int(max_body_mb * 1024 * 1024),
            log_level=log_level,
            files_limits=FilesLimits(
                max_bytes=int(files_max_mb * 1024 * 1024),
                min_free_bytes=int(files_min_free_mb * 1024 * 1024),
            ),
            companions=companions,
            limits=ConnectionLimits(
                header_timeout_s=header_timeout,
                body_timeout_s=body_timeout,
                max_connections=max_connections or None,
            ),
            token_lifetime_s=max(60, int(token_lifetime_days * 86400)),
            workers=workers,
            event_retention_days=event_retention_days,
            non_responsive_s=non_responsive_sec,
            non_responsive_check_s=settings.non_responsive_check_s,
        )
    )


def _services_agent(data_dir: Path, queue: str, limit: int) -> ServicesAgent:
    """The daemon of ``--services-agent``, with the configuration it will read (checked now:
    a broken clearml.conf fails ``hpcagent server`` at once, not its child later)."""
    from hpcagent.config import load_settings

    ctx = click.get_current_context()
    config_file = (ctx.find_object(dict) or {}).get("config_file")
    settings = load_settings(config_file=config_file)
    configured = settings.source_of("api.files_server") not in ("unset", "default")
    return ServicesAgent(
        data_dir=data_dir,
        queue=queue,
        limit=limit,
        config_file=config_file,
        configured_files_server=settings.api.files_server if configured else "",
    )


server_cmd.add_command(keys_cmd)


if __name__ == "__main__":  # ``python -m hpcagent.commands.server`` (used by the test fixture)
    server_cmd()
