"""What the interactive commands (``task``, ``queue``, ``workers``) share: the API client of the
invocation, the ``--json`` flag, JSON output, tables that fit the terminal, time stamps.

Output contract: a table or summary on stdout by default, JSON on stdout with ``--json``;
errors never print here (``hpcagent.cli.run`` prints one line on stderr, JSON with ``--json``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from hpcagent.api import ApiClient
from hpcagent.config import Settings, load_settings

_CLIENT_KEY = "hpcagent.api_client"

#: Width of tables written to a pipe or file: wide enough that scripts get whole values.
PIPE_WIDTH = 1000

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def get_client(ctx: click.Context) -> ApiClient:
    """The API client of this invocation, created once from the context's settings with the
    interactive retry policy (:data:`hpcagent.api.client.INTERACTIVE`: a dead URL fails fast).

    The top-level group puts ``{"config_file": ...}`` (or a ``Settings``) in ``ctx.obj``; an
    ``ApiClient`` stored under ``ctx.obj["client"]`` is used as it is (embedding, tests).
    """
    root = ctx.find_root()
    cached = root.meta.get(_CLIENT_KEY)
    if isinstance(cached, ApiClient):
        return cached
    obj = ctx.find_object(dict) or {}
    client = obj.get("client")
    if not isinstance(client, ApiClient):
        settings = ctx.find_object(Settings) or obj.get("settings")
        if not isinstance(settings, Settings):
            settings = load_settings(config_file=obj.get("config_file"))
        client = ApiClient.interactive(settings)
    root.meta[_CLIENT_KEY] = client
    return client


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _console() -> Console:
    """A console as wide as the terminal; on a pipe as wide as ``$COLUMNS`` or very wide."""
    if sys.stdout.isatty():
        width = shutil.get_terminal_size().columns
    else:
        width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 0
        width = width or PIPE_WIDTH
    return Console(file=sys.stdout, width=width, highlight=False, soft_wrap=False)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    empty: str,
    shrink: Sequence[str] = (),
) -> None:
    """Print ``rows`` under ``headers`` to fit the terminal; ``empty`` is printed instead of
    a lone header row. Columns in ``shrink`` (long free text: names, messages) give way with an
    ellipsis when the terminal is too narrow; the others (ids, statuses) stay whole."""
    if not rows:
        click.echo(empty)
        return
    tbl = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        flexible = header in shrink
        tbl.add_column(header, no_wrap=True, overflow="ellipsis" if flexible else "fold")
    for row in rows:
        tbl.add_row(*("" if c is None else str(c) for c in row))
    _console().print(tbl)


def local_time(value: Any) -> str:
    """An ISO time stamp (UTC or with an offset) as local time with its zone, to the second."""
    text = str(value or "")
    if not text:
        return ""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text[:19]
    if when.tzinfo is None:  # ClearML stores UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def clip(text: Any, width: int = 50) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= width else s[: width - 1] + "…"
