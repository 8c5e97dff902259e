"""``hpcagent daemon``: pull tasks from queues and run them on this machine (no Slurm).

The loop is the submitter's (``hpcagent.daemon.run``); this module parses the options,
derives the worker id and its state folder, runs in the foreground or detached, stops a
detached daemon, and supplies the machine/GPU statistics for the worker reports.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from hpcagent.commands.longrunning import (
    GreedyCommand,
    MachineStats,
    container_kind,
    container_options,
    detach,
    docker_overrides,
    private_dir,
    running,
    services_mode_option,
    setup_logging,
    stop,
    work_hours,
)
from hpcagent.errors import UsageError
from hpcagent.submitter.instance import DAEMON_FILES, cmdline

log = logging.getLogger("hpcagent.daemon")


#: Options that take several values after one flag (``--queue a b c``), as in the seed's CLI.
GREEDY = ("--queue", "--uptime", "--downtime")


class _DaemonCommand(GreedyCommand):
    greedy = GREEDY


def _is_daemon(pid: int) -> bool:
    argv = cmdline(pid)
    return b"daemon" in argv and any(b"hpcagent" in part for part in argv)


def _stop(state_dir: Path, worker_id: str) -> None:
    stop(
        state_dir,
        DAEMON_FILES,
        _is_daemon,
        name=f"daemon {worker_id}",
        none_recorded=f"daemon {worker_id} is not running (no {DAEMON_FILES.pid_in(state_dir)})",
        wait_s=60.0,
    )


def _status(state_dir: Path, worker_id: str, as_json: bool) -> None:
    """Print whether the daemon of ``worker_id`` runs and the tasks its ledger holds."""
    from hpcagent.submitter.ledger import Ledger

    pid = running(state_dir, DAEMON_FILES, _is_daemon)
    ledger = Ledger(state_dir / "ledger.sqlite")
    try:
        live = ledger.live()
    finally:
        ledger.close()
    rows = [
        {"task": e.task_id, "queue": e.queue_name, "state": e.state, "job": e.job_id} for e in live
    ]
    if as_json:
        doc = {
            "worker": worker_id,
            "running": pid is not None,
            "pid": pid,
            "state_dir": str(state_dir),
            "log": str(DAEMON_FILES.log_in(state_dir)),
            "tasks": rows,
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(
        f"daemon {worker_id}: {f'running (pid {pid})' if pid is not None else 'not running'}"
    )
    click.echo(f"log: {DAEMON_FILES.log_in(state_dir)}")
    from hpcagent.commands.common import table

    table(
        ["TASK", "QUEUE", "STATE", "JOB"],
        [[r["task"], r["queue"], r["state"], r["job"] or "-"] for r in rows],
        empty="no tasks",
    )


def _detach(state_dir: Path, worker_id: str) -> None:
    pid = running(state_dir, DAEMON_FILES, _is_daemon)
    if pid is not None:
        raise UsageError(f"daemon {worker_id} already runs (pid {pid}); --stop stops it")
    detach(state_dir, DAEMON_FILES, entry="main", name=f"daemon {worker_id}", script="hpcagent")


@click.command(
    "daemon", cls=_DaemonCommand, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="Q",
    help="Queue name(s) or id(s) in priority order; with --dynamic-gpus NAME=N or NAME=MIN-MAX.",
)
@click.option("--order-fairness", is_flag=True, help="Pull from the queues in turn.")
@click.option("--gpus", default=None, metavar="LIST", help="GPUs of this agent: 0,1 or 0-7.")
@click.option("--cpu-only", is_flag=True, help="No GPUs for the tasks (worker id <host>:cpu).")
@click.option(
    "--dynamic-gpus",
    is_flag=True,
    help="Share --gpus between tasks: each queue says how many GPUs its tasks take.",
)
@services_mode_option(
    "--services-mode",
    "services",
    help="Launch tasks and move on; at most N at once (no limit without N).",
)
@click.option("--create-queue", is_flag=True, help="Create the queues that do not exist.")
@container_options
@click.option("--foreground", "mode", flag_value="foreground", default=True, help="Default.")
@click.option("--detached", "mode", flag_value="detached", help="Run in the background.")
@click.option(
    "--stop", "mode", flag_value="stop", help="Stop the background daemon with these GPU options."
)
@click.option(
    "--status",
    "mode",
    flag_value="status",
    help="Whether the daemon with these GPU options runs, and its tasks.",
)
@click.option("--json", "as_json", is_flag=True, help="With --status: JSON output.")
@click.option("--uptime", multiple=True, metavar="SPAN", help='Pull only then, e.g. "17-20 SUN".')
@click.option("--downtime", multiple=True, metavar="SPAN", help="Never pull in these hours.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between queue polls (default: agent.polling_interval, else 5).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Root of the per-worker state folders (default: daemon.state_dir, ~/.hpcagent/daemon).",
)
@click.pass_context
def daemon_cmd(
    ctx: click.Context,
    queues: tuple[str, ...],
    order_fairness: bool,
    gpus: str | None,
    cpu_only: bool,
    dynamic_gpus: bool,
    services: int | None,
    create_queue: bool,
    singularity_mode: bool,
    container_mode: bool,
    docker: str | None,
    mode: str,
    as_json: bool,
    uptime: tuple[str, ...],
    downtime: tuple[str, ...],
    poll_interval: float | None,
    state_dir: str | None,
) -> None:
    """Pull tasks from queues and run each with hpcagent execute on this machine.

    \b
    Examples:
      hpcagent daemon --queue default --gpus 0 --detached
      hpcagent daemon --queue default --gpus 1 --detached      # a second agent, other GPU
      hpcagent daemon --queue default --gpus 0 --stop
      hpcagent daemon --dynamic-gpus --gpus 0-7 --queue quad=4 dual=2 opportunistic=1-4
      hpcagent daemon --queue services --cpu-only --services-mode 4
    """
    from hpcagent.config import load_settings
    from hpcagent.daemon import run as d
    from hpcagent.daemon.gpus import parse_gpus, parse_queue

    kind = container_kind(singularity_mode, container_mode, docker)
    if gpus is not None and cpu_only:
        raise UsageError("give --gpus or --cpu-only, not both")
    if dynamic_gpus and not gpus:
        raise UsageError("--dynamic-gpus needs --gpus (the GPUs to share, e.g. 0-7)")
    gpu_list: list[str] | None = [] if cpu_only else (parse_gpus(gpus) if gpus else None)
    parsed = [parse_queue(q) if dynamic_gpus else (q, None) for q in queues]
    for name, demand in parsed:
        if demand is not None and gpu_list is not None and demand.min > len(gpu_list):
            raise UsageError(f"queue {name} needs {demand.min} GPUs; --gpus has {len(gpu_list)}")
    obj = ctx.find_object(dict) or {}
    settings = load_settings(
        config_file=obj.get("config_file"), cli_overrides=docker_overrides(docker)
    )
    host = d.default_host()
    worker_id = d.worker_id_for(host, gpu_list, dynamic=dynamic_gpus, services=services is not None)
    root = Path(os.path.expanduser(str(state_dir)) if state_dir else settings.daemon.state_dir)
    state = private_dir(d.state_dir_for(root, worker_id))
    if mode == "stop":
        _stop(state, worker_id)
        return
    if mode == "status":
        _status(state, worker_id, as_json)
        return
    if not parsed:
        raise UsageError("give at least one --queue")
    if mode == "detached":
        _detach(state, worker_id)
        return
    from hpcagent.submitter.outputs import write_job_config

    setup_logging(bool(obj.get("debug")))
    uptime_spans, downtime_spans = work_hours(settings, uptime, downtime)
    poll = poll_interval or settings.agent.polling_interval_s
    req = d.DaemonRequest(
        queues=parsed,
        state_dir=state,
        worker_id=worker_id,
        job_config=write_job_config(settings, state),
        gpus=gpu_list,
        dynamic=dynamic_gpus,
        services=services,
        order_fairness=order_fairness,
        create_queue=create_queue,
        container_mode=kind,
        poll_interval_s=poll,
        uptime=uptime_spans,
        downtime=downtime_spans,
    )
    d.run_daemon(settings, req, report_extra=MachineStats(gpu_list))
