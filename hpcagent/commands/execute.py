"""``hpcagent execute --id TASK``: run one task here (inside a Slurm job or by hand).

The options are read here; a job's plain ``execute --id TASK [--force] [--clone]
[--disable-monitoring]`` is read by ``hpcagent.cli.job_execute_args`` without importing click
(the same options; tests/unit/test_cli_errors.py compares both readings). Both run
:func:`hpcagent.executor.launch.execute_task`.
"""

from __future__ import annotations

from pathlib import Path

import click

from hpcagent.executor.launch import execute_task


@click.command("execute")
@click.option("--id", "task_id", required=True, help="Id of the task to run.")
@click.option(
    "--force",
    is_flag=True,
    help="Run whatever the task's status and the job recorded on it (published: never).",
)
@click.option("--clone", is_flag=True, help="Run a fresh clone of the task instead of the task.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also append the task's output and the executor's messages to this file.",
)
@click.option(
    "--disable-monitoring",
    is_flag=True,
    help="Do not report machine/GPU metrics (logs, abort polling and statuses still work).",
)
@click.option(
    "--container",
    default=None,
    metavar="IMAGE",
    help="Run the task in this Apptainer/Singularity image (SIF, sandbox or docker://...).",
)
@click.option(
    "--docker",
    default=None,
    is_flag=False,
    flag_value="",
    metavar="[IMAGE]",
    help="Run the task in a Docker container (IMAGE, else the task's, else the default).",
)
@click.pass_context
def execute_cmd(
    ctx: click.Context,
    task_id: str,
    force: bool,
    clone: bool,
    log_file: Path | None,
    disable_monitoring: bool,
    container: str | None,
    docker: str | None,
) -> None:
    """Run task TASK on this machine and keep the server informed until it ends.

    \b
    Steps: fetch the task; run it when it is queued, handed to this job, or asked for by
    hand in created/stopped/failed/completed (not when a job launched for it finds it reset
    or aborted; --force overrides); mark it started; clone its repository at its commit
    through the per-user cache and apply its diff (or write its stored script); run the
    setup scripts; build or reuse a cached venv from its requirements (uv, else pip); run
    the entry point (Args reach SDK scripts through Task.init(), others with args-on-argv on
    the command line); stream the output as task log events (buffered on disk while the
    server is unreachable); poll for abort every few seconds; report machine
    and GPU metrics; mark the task completed, failed (exit code + last lines) or stopped.

    \b
    Exit status: 0 completed or stopped by the user (inside a Slurm job an abort ends with
    scancel of the job, so that sacct shows it CANCELLED; slurm.cancel_job_on_abort: false
    keeps the job's own end); the task's exit code when it failed;
    128+N when this process got signal N (SIGTERM/SIGUSR2 are forwarded to the task);
    10 repository/diff failure; 11 environment/setup-script failure; 8 other executor error.

    \b
    Environment: CLEARML_WORKER_ID (worker id; else <host>:<scheduler>-<job id> inside a
    Slurm, Grid Engine or local job, or <host>:<pid>), the scheduler's job variables
    (SLURM_JOB_ID, JOB_ID, HPCAGENT_JOB_ID), SLURM_PROCID/RANK (only rank 0 writes statuses),
    the usual CLEARML_API_*.
    """
    obj = ctx.find_object(dict) or {}
    code = execute_task(
        task_id,
        config_file=obj.get("config_file"),
        force=force,
        clone=clone,
        log_file=log_file,
        disable_monitoring=disable_monitoring,
        container=container,
        docker=docker,
    )
    ctx.exit(code)
