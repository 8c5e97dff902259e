"""``hpcagent templates list|show NAME``: the sbatch templates shipped with the package."""

from __future__ import annotations

import click

from hpcagent.errors import UsageError
from hpcagent.templating import BUILTIN, builtin_path
from hpcagent.templating.builtin import ABOUT


@click.group("templates")
def templates_group() -> None:
    """The sbatch templates shipped with hpcagent (for --template-files NAME or for copying)."""


@templates_group.command("list")
def list_cmd() -> None:
    """List the built-in templates: name, file, first comment line."""
    for name, file in BUILTIN.items():
        click.echo(f"{name:<12} {file:<28} {ABOUT[name]}")


@templates_group.command("show")
@click.argument("name")
def show_cmd(name: str) -> None:
    """Print built-in template NAME (hpcagent templates show gpu > my-gpu.template)."""
    if name not in BUILTIN:
        raise UsageError(f"no built-in template {name!r}; choose one of {', '.join(BUILTIN)}")
    click.echo(builtin_path(name).read_text(encoding="utf-8"), nl=False)
