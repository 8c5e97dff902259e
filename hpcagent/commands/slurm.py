"""``hpcagent-slurm``: the submitter (queues → sbatch templates → Slurm jobs).

The lead's ``hpcagent.cli.slurm_main`` runs :data:`slurm_cmd` and maps errors to exit codes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import click

from hpcagent import __version__
from hpcagent.commands.longrunning import (
    GreedyCommand,
    MachineStats,
    container_kind,
    container_options,
    detach,
    docker_overrides,
    private_dir,
    running,
    setup_logging,
    stop,
    work_hours,
)
from hpcagent.errors import UsageError
from hpcagent.scheduler import registry
from hpcagent.submitter.instance import SUBMITTER_FILES, cmdline
from hpcagent.templating import check_file, resolve_template

log = logging.getLogger("hpcagent.submitter")


def _pair_templates(templates: tuple[str, ...], queues: tuple[str, ...]) -> list[tuple[str, Path]]:
    if not queues:
        raise UsageError("give at least one --queue")
    if len(templates) == 1:
        return [(q, resolve_template(templates[0])) for q in queues]
    if len(templates) != len(queues):
        raise UsageError(
            f"{len(templates)} templates for {len(queues)} queues: give one template for all "
            "queues, or one per queue (in the same order)"
        )
    return [(q, resolve_template(t)) for q, t in zip(queues, templates, strict=True)]


def _is_submitter(pid: int) -> bool:
    return any(b"slurm_main" in part or b"hpcagent-slurm" in part for part in cmdline(pid))


def _stop(state_dir: Path) -> None:
    stop(
        state_dir,
        SUBMITTER_FILES,
        _is_submitter,
        name="hpcagent-slurm",
        none_recorded=f"no running hpcagent-slurm recorded in {SUBMITTER_FILES.pid_in(state_dir)}",
        wait_s=30.0,
    )


def _status(state_dir: Path, as_json: bool) -> None:
    from hpcagent.submitter.ledger import Ledger
    from hpcagent.submitter.loop import held_jobs

    ledger = Ledger(state_dir / "ledger.sqlite")
    try:
        live = ledger.live()
    finally:
        ledger.close()
    pid = running(state_dir, SUBMITTER_FILES, _is_submitter)
    from hpcagent.submitter.run import read_serving

    serving = read_serving(state_dir) if pid is not None else {}
    queues: dict[str, int] = {str(q.get("name")): 0 for q in serving.get("queues") or []}
    for e in live:
        queues[e.queue_name] = queues.get(e.queue_name, 0) + 1
    held = held_jobs(live)  # what the submitter reports as worker runtime properties
    if as_json:
        rows = [
            {
                "task": e.task_id,
                "queue": e.queue_name,
                "state": e.state,
                "job": e.job_id,
                "job_state": e.job_state,
            }
            for e in live
        ]
        data = {
            "running": pid is not None,
            "pid": str(pid) if pid is not None else None,
            "queues": queues,
            "held_jobs": int(held["slurm_jobs"]),
            "jobs": rows,
        }
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"submitter: {f'running (pid {pid})' if pid is not None else 'not running'}")
    click.echo(f"slurm jobs held: {held['slurm_jobs']} (reported to the server on its worker)")
    for name, n in sorted(queues.items()):
        click.echo(f"queue {name}: {n} live job(s)")
    from hpcagent.commands.common import table

    table(
        ["TASK", "QUEUE", "LEDGER", "JOB", "JOB STATE"],
        [[e.task_id, e.queue_name, e.state, e.job_id or "-", e.job_state or "-"] for e in live],
        empty="no live jobs",
        shrink=("QUEUE", "JOB STATE"),
    )


#: Options that take several values after one flag (``--queue a b c``), as in the seed's CLI.
GREEDY = ("--template-files", "--queue", "--uptime", "--downtime")


class _SlurmCommand(GreedyCommand):
    greedy = GREEDY


@click.command(
    "hpcagent-slurm",
    cls=_SlurmCommand,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="hpcagent-slurm")
@click.option(
    "--template-files",
    "templates",
    multiple=True,
    metavar="T",
    help="sbatch template(s): one for all queues or one per queue.",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="Q",
    help="Queue name(s) or id(s), in priority order.",
)
@container_options
@click.option(
    "--max-jobs", type=click.IntRange(min=1), default=None, help="At most N live jobs per queue."
)
@click.option(
    "--order-fairness", is_flag=True, help="Pull from the queues in turn instead of in order."
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between cycles (default: slurm.poll_interval_sec).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the script the next task would get; pop and submit nothing.",
)
@click.option(
    "--foreground",
    "mode",
    flag_value="foreground",
    default=True,
    help="Run in this terminal (default).",
)
@click.option(
    "--detached",
    "mode",
    flag_value="detached",
    help="Run in the background (pid and log file in the state folder).",
)
@click.option(
    "--stop", "mode", flag_value="stop", help="Stop the background submitter of this state folder."
)
@click.option(
    "--status", "show_status", is_flag=True, help="Print queues, live jobs and their states."
)
@click.option("--json", "as_json", is_flag=True, help="With --status: JSON output.")
@click.option(
    "--config-file", type=click.Path(dir_okay=False), default=None, help="clearml.conf-style file."
)
@click.option(
    "--scheduler",
    "scheduler_kind",
    default="auto",
    metavar="NAME",
    help="A registered scheduler backend (slurm, gridengine, local: run scripts here, or one "
    "a plugin registers), or auto: the first available of slurm, gridengine, local.",
)
@click.option(
    "--uptime",
    multiple=True,
    metavar="SPAN",
    help='Pull only in these hours, e.g. "17-20 SUN-TUE".',
)
@click.option("--downtime", multiple=True, metavar="SPAN", help="Never pull in these hours.")
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Override slurm.state_dir."
)
@click.option("--debug", is_flag=True, help="Verbose logging (also CLEARML_SLURM_GLUE_DEBUG=1).")
def slurm_cmd(
    templates: tuple[str, ...],
    queues: tuple[str, ...],
    singularity_mode: bool,
    container_mode: bool,
    docker: str | None,
    max_jobs: int | None,
    order_fairness: bool,
    poll_interval: float | None,
    dry_run: bool,
    mode: str,
    show_status: bool,
    as_json: bool,
    config_file: str | None,
    scheduler_kind: str,
    uptime: tuple[str, ...],
    downtime: tuple[str, ...],
    state_dir: str | None,
    debug: bool,
) -> None:
    """Turn queued tasks into Slurm jobs: each queue has an sbatch template.

    \b
    Example:
      hpcagent-slurm --template-files templates/slurm.example.template --queue default
    """
    debug = debug or os.environ.get("CLEARML_SLURM_GLUE_DEBUG") == "1"
    setup_logging(debug)
    from hpcagent.config import load_settings

    overrides: dict[str, Any] = {}
    if state_dir:
        overrides["slurm.state_dir"] = state_dir
    overrides.update(docker_overrides(docker))
    settings = load_settings(config_file=config_file, cli_overrides=overrides)
    state = private_dir(settings.slurm.state_dir)
    if show_status:
        _status(state, as_json)
        return
    if mode == "stop":
        _stop(state)
        return
    mode_of_container = container_kind(singularity_mode, container_mode, docker)
    pairs = _pair_templates(templates, queues) if templates else None
    if pairs is None:
        raise UsageError("give --template-files")
    for _, path in pairs:
        if not path.is_file():
            raise UsageError(f"template file not found: {path}")
    if scheduler_kind != "auto":
        registry.get(scheduler_kind)  # an unknown name is a usage error before anything starts
    for path in dict.fromkeys(p for _, p in pairs):
        check_file(path)  # exit 7 with file:line:column before any task is taken
    if mode == "detached":
        detach(
            state,
            SUBMITTER_FILES,
            entry="slurm_main",
            name="hpcagent-slurm",
            script="hpcagent-slurm",
        )
        return
    from hpcagent.submitter.outputs import write_job_config
    from hpcagent.submitter.run import RunRequest, run_submitter

    uptime_spans, downtime_spans = work_hours(settings, uptime, downtime)

    req = RunRequest(
        pairs=pairs,
        state_dir=state,
        container_mode=mode_of_container,
        max_jobs=max_jobs,
        order_fairness=order_fairness,
        poll_interval_s=poll_interval,
        dry_run=dry_run,
        scheduler_kind=scheduler_kind,
        uptime=uptime_spans,
        downtime=downtime_spans,
        worker_id=settings.agent.worker_id or f"{socket.gethostname()}:hpcagent-slurm",
        job_config=write_job_config(settings, state),
        # this host's CPU and memory in the worker reports (a login node: no GPU probe)
        report_extra=None if dry_run else MachineStats([]),
    )
    run_submitter(settings, req, echo=click.echo)
