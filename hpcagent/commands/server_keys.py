"""``hpcagent server keys list|add|rotate|revoke``: the embedded server's key pairs
(:mod:`hpcagent.server.keys`; docs/server.md, "Key pairs")."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from hpcagent.errors import ServerError
from hpcagent.server.keys import KeyFile, KeyFileError, KeyPair
from hpcagent.server.runner import DEFAULT_DATA_DIR

T = TypeVar("T")


def _data_dir_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="The server's data dir (its credentials.json).",
    )(fn)


def _on_keys(data_dir: Path, action: Callable[[KeyFile], T]) -> T:
    """``action`` on the data dir's key file; its refusals are one clear error (exit 9)."""
    path = data_dir.expanduser()
    if not path.is_dir():
        raise ServerError(f"no server data dir {path}: start the server once first")
    try:
        return action(KeyFile(path))
    except KeyFileError as exc:
        raise ServerError(str(exc)) from exc


def _show_new(pair: KeyPair, what: str) -> None:
    """Print a new pair once, on stdout only (never logged, never on a command line)."""
    click.echo(
        f"{what} (shown only this once; kept in credentials.json, mode 0600). "
        "Put it in the clients' clearml.conf:\n\n"
        "    credentials {\n"
        f'        access_key: "{pair.access_key}"\n'
        f'        secret_key: "{pair.secret_key}"\n'
        "    }\n"
    )
    sys.stdout.flush()


@click.group("keys")
def keys_cmd() -> None:
    """The server's access/secret key pairs: list, add, rotate, revoke.

    A running server follows every change from its next request on: tokens signed in with a
    revoked or rotated pair are refused (401)."""


@keys_cmd.command("list")
@_data_dir_option
def keys_list(data_dir: Path) -> None:
    """The stored pairs (access key, origin, creation time; never the secrets)."""
    keys = _on_keys(data_dir, KeyFile.read)
    for pair in keys.pairs if keys is not None else ():
        click.echo(f"{pair.access_key}  {pair.origin:<9}  {pair.created or '-'}")


@keys_cmd.command("add")
@_data_dir_option
def keys_add(data_dir: Path) -> None:
    """A new pair next to the others (the first step of a gradual rotation)."""
    pair = _on_keys(data_dir, KeyFile.add)
    _show_new(pair, f"New key pair {pair.access_key}")


@keys_cmd.command("rotate")
@click.argument("access_key", required=False)
@_data_dir_option
def keys_rotate(access_key: str | None, data_dir: Path) -> None:
    """Replace ACCESS_KEY's pair (or the only pair) by a new one at once."""
    old, pair = _on_keys(data_dir, lambda keys: keys.rotate(access_key))
    _show_new(pair, f"Key pair {old.access_key} replaced by {pair.access_key}")


@keys_cmd.command("revoke")
@click.argument("access_key")
@_data_dir_option
def keys_revoke(access_key: str, data_dir: Path) -> None:
    """Remove ACCESS_KEY's pair; its tokens are refused from the next request on."""
    old = _on_keys(data_dir, lambda keys: keys.revoke(access_key))
    click.echo(f"revoked {old.access_key}")
