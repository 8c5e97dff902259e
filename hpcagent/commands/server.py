"""``hpcagent server``: run the embedded ClearML-compatible server."""

from __future__ import annotations

from pathlib import Path

import click

from hpcagent.server.files import FilesLimits
from hpcagent.server.runner import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ServerOptions,
    serve,
)


@click.command("server")
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
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False),
)
def server_cmd(
    host: str,
    port: int,
    data_dir: Path,
    access_key: str | None,
    secret_key: str | None,
    max_body_mb: float,
    files_max_mb: float,
    files_min_free_mb: float,
    log_level: str,
) -> None:
    """Run the embedded ClearML-compatible API server (SQLite in DATA_DIR)."""
    if bool(access_key) != bool(secret_key):
        raise click.UsageError("--access-key and --secret-key must be given together")
    if max_body_mb <= 0:
        raise click.UsageError("--max-body-mb must be positive")
    if files_max_mb < 0 or files_min_free_mb < 0:
        raise click.UsageError("--files-max-mb and --files-min-free-mb must not be negative")
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
        )
    )


if __name__ == "__main__":  # ``python -m hpcagent.commands.server`` (used by the test fixture)
    server_cmd()
