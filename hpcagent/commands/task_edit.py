"""``hpcagent task edit|delete|scalars``: change a draft, remove a task, read its metrics.

These register on :data:`hpcagent.commands.task.task_group` (``hpcagent.cli`` imports this
module); conventions as there: interactive client, a table or summary, ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpcagent.commands.common import emit_json, get_client, json_option, table
from hpcagent.commands.task import task_group
from hpcagent.errors import UsageError
from hpcagent.taskbuild import merge_params, parse_pairs, pip_requirements


@task_group.command("edit")
@click.argument("task_id")
@click.option("--name", help="New name (at least 3 characters).")
@click.option("--comment", help="New description.")
@click.option("--args", "args", multiple=True, help="Set script argument k=v (others stay).")
@click.option("--user-property", multiple=True, help="Set user property k=v (others stay).")
@click.option(
    "--requirements",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Replace the pip requirements with this file.",
)
@click.option("--packages", help='Replace the pip requirements: "numpy==2.0 pandas".')
@click.option("--container", help="Container image ('' removes it).")
@click.option("--container-args", help="Extra container arguments (one string).")
@click.option("--branch", help="Branch to check out.")
@click.option("--commit", help="Commit to check out.")
@click.option("--entry-point", help="Script to run.")
@click.option("--binary", help="Interpreter, e.g. python3.11.")
@click.option("--force", is_flag=True, help="Edit a task that is not a draft (created).")
@json_option
@click.pass_context
def edit_cmd(
    ctx: click.Context,
    task_id: str,
    name: str | None,
    comment: str | None,
    args: tuple[str, ...],
    user_property: tuple[str, ...],
    requirements: Path | None,
    packages: str | None,
    container: str | None,
    container_args: str | None,
    branch: str | None,
    commit: str | None,
    entry_point: str | None,
    binary: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Change a draft task (status created), as the web UI's edit does; what is not given
    stays. A queued or finished task needs --force (``task reset`` makes it a draft again)."""
    if requirements and packages:
        raise UsageError("give --requirements or --packages, not both")
    if branch and commit:
        raise UsageError("give --branch or --commit, not both")
    if name is not None and len(name) < 3:
        raise UsageError("--name must have at least 3 characters")
    client = get_client(ctx)
    task = client.tasks.get_by_id(task_id)
    if task.get("status") != "created" and not force:
        raise UsageError(
            f"task {task_id} is {task.get('status')}, not a draft: "
            "hpcagent task reset makes it one, --force edits it anyway"
        )
    fields: dict[str, Any] = {}
    if name is not None:
        fields["name"] = name
    if comment is not None:
        fields["comment"] = comment
    script = dict(task.get("script") or {})
    script_changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("branch", branch),
            ("version_num", commit),
            ("entry_point", entry_point),
            ("binary", binary),
        )
        if v is not None
    }
    if branch is not None:
        script_changes["version_num"] = ""
    if commit is not None:
        script_changes["branch"] = ""
    if requirements is not None:
        script_changes["requirements"] = {"pip": requirements.read_text(encoding="utf-8")}
    elif packages is not None:
        script_changes["requirements"] = pip_requirements(packages.split())
    if script_changes:
        fields["script"] = {**script, **script_changes}
    if args or user_property:
        # hyperparams are replaced whole by tasks.edit: read, merge, write back (as the SDK)
        hyper = dict(task.get("hyperparams") or {})
        for section, values, option in (
            ("Args", args, "--args"),
            ("properties", user_property, "--user-property"),
        ):
            if values:
                hyper = merge_params(hyper, section, parse_pairs(values, option))
        fields["hyperparams"] = hyper
    if container is not None or container_args is not None:
        current = dict(task.get("container") or {})
        if container is not None:
            current["image"] = container
        if container_args is not None:
            current["arguments"] = container_args
        fields["container"] = current
    if not fields:
        raise UsageError("nothing to change: give at least one option (see --help)")
    client.tasks.edit(task_id, **fields)
    if as_json:
        emit_json({"id": task_id, "changed": sorted(fields)})
    else:
        click.echo(f"task {task_id}: changed {', '.join(sorted(fields))}")


@task_group.command("delete")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Delete even a running task (abort it first!).")
@json_option
@click.pass_context
def delete_cmd(ctx: click.Context, task_ids: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Delete tasks with their logs and metrics. A running task is refused without --force
    (its process keeps running: abort it first)."""
    client = get_client(ctx)
    done = []
    for task_id in task_ids:
        client.send("tasks.delete", {"task": task_id, "force": force})
        done.append(task_id)
        if not as_json:
            click.echo(f"deleted task {task_id}")
    if as_json:
        emit_json({"deleted": done})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def scalar_rows(task: dict[str, Any]) -> list[dict[str, Any]]:
    """``last_metrics`` of a task as rows ``{metric, variant, last, min, max, iter}``, sorted.

    ClearML keys ``last_metrics`` by hashes of the metric and variant names; each entry holds
    the names and the last, smallest and largest value reported."""
    rows = []
    for variants in (task.get("last_metrics") or {}).values():
        for entry in (variants or {}).values():
            if not isinstance(entry, dict):
                continue
            rows.append(
                {
                    "metric": entry.get("metric", ""),
                    "variant": entry.get("variant", ""),
                    "last": entry.get("value"),
                    "min": entry.get("min_value"),
                    "max": entry.get("max_value"),
                    "iter": entry.get("iter"),
                }
            )
    return sorted(rows, key=lambda r: (str(r["metric"]), str(r["variant"])))


@task_group.command("scalars")
@click.argument("task_id")
@json_option
@click.pass_context
def scalars_cmd(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """The last, smallest and largest value of each scalar the task reported."""
    client = get_client(ctx)
    task = client.tasks.get_by_id(task_id)
    rows = scalar_rows(task)
    if as_json:
        emit_json(rows)
        return
    table(
        ["METRIC", "VARIANT", "LAST", "MIN", "MAX", "ITER"],
        [
            [r["metric"], r["variant"], *(_fmt(r[k]) for k in ("last", "min", "max", "iter"))]
            for r in rows
        ],
        empty=f"task {task_id} reported no scalars",
        shrink=("METRIC", "VARIANT"),
    )
