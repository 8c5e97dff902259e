"""``hpcagent build --id TASK --docker|--singularity --target NAME``: an image for a task."""

from __future__ import annotations

import re
from pathlib import Path

import click

from hpcagent.api import ApiClient
from hpcagent.config import load_settings
from hpcagent.container.build import ENTRY_POINTS, Builder, BuildSpec
from hpcagent.errors import UsageError


@click.command("build")
@click.option("--id", "task_id", required=True, help="Id of the task whose environment to build.")
@click.option("--docker", "kind", flag_value="docker", help="Build a Docker image named --target.")
@click.option(
    "--singularity",
    "kind",
    flag_value="singularity",
    help="Write an Apptainer definition (NAME.def); with NAME.sif also build it (apptainer).",
)
@click.option("--target", required=True, help="Docker image name, or NAME.def / NAME.sif.")
@click.option(
    "--entry-point",
    type=click.Choice(ENTRY_POINTS),
    default=None,
    help="At launch: run the task (reuse_task) or a fresh clone of it (clone_task).",
)
@click.option(
    "--context",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build folder (Dockerfile, wheels); default: <target>.build next to a .def/.sif, "
    "else ./hpcagent-build-<task>.",
)
@click.pass_context
def build_cmd(
    ctx: click.Context,
    task_id: str,
    kind: str | None,
    target: str,
    entry_point: str | None,
    context: Path | None,
) -> None:
    """Build an image with the task's environment (its base image, hpcagent and the venv of its
    recorded requirements) that, with --entry-point, runs the task at launch.

    \b
    The build needs no registry and no index: the wheels are made here and copied in; the base
    image may be a local one. Give the credentials at launch, never at build time (names only:
    docker takes the values from its own environment, so they stay out of argv):
      docker run --network host -e CLEARML_API_HOST -e CLEARML_API_ACCESS_KEY \\
                 -e CLEARML_API_SECRET_KEY NAME
    """
    if kind is None:
        raise UsageError("choose --docker or --singularity")
    obj = ctx.find_object(dict) or {}
    settings = load_settings(config_file=obj.get("config_file"), cli_overrides={})
    client = ApiClient.from_settings(settings)
    try:
        task = client.tasks.get_by_id(task_id)
    finally:
        client.close()
    spec = BuildSpec.for_task(task, settings.container, entry_point)
    if kind == "docker":
        folder = context or Path(f"hpcagent-build-{spec.task_id}")
        image_id = Builder(spec, settings.container, folder.resolve(), click.echo).docker_build(
            target
        )
        click.echo(f"built {target} ({image_id[:19]})")
        return
    if not target.endswith((".def", ".sif")):
        raise UsageError("--singularity needs --target NAME.def or NAME.sif")
    out = Path(target).resolve()
    folder = context or out.with_name(re.sub(r"\s+", "_", out.stem) + ".build")
    definition, sif = Builder(
        spec, settings.container, folder.resolve(), click.echo
    ).singularity_build(out)
    click.echo(f"wrote {definition}" + (f" and built {sif}" if sif else ""))
