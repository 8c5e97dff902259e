"""``hpcagent-slurm``: the submitter (queues → sbatch templates → Slurm jobs).

The lead's ``hpcagent.cli.slurm_main`` runs :data:`slurm_cmd` and maps errors to exit codes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from hpcagent.errors import UsageError

log = logging.getLogger("hpcagent.submitter")

PID_FILE = "hpcagent-slurm.pid"
LOG_FILE = "hpcagent-slurm.log"


def _pair_templates(templates: tuple[str, ...], queues: tuple[str, ...]) -> list[tuple[str, Path]]:
    if not queues:
        raise UsageError("give at least one --queue")
    if len(templates) == 1:
        return [(q, Path(templates[0])) for q in queues]
    if len(templates) != len(queues):
        raise UsageError(
            f"{len(templates)} templates for {len(queues)} queues: give one template for all "
            "queues, or one per queue (in the same order)"
        )
    return [(q, Path(t)) for q, t in zip(queues, templates, strict=True)]


def _state_dir(settings: Any) -> Path:
    path = Path(os.path.expanduser(str(settings.slurm.state_dir)))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _write_job_config(settings: Any, state_dir: Path) -> Path:
    """The configuration jobs read (CLEARML_CONFIG_FILE): JSON is HOCON; mode 0600."""
    path = state_dir / "clearml.conf"
    tmp = path.with_name("clearml.conf.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(settings.as_dict(mask_secrets=False), default=str).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_submitter(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"slurm_main" in part or b"hpcagent-slurm" in part for part in cmdline)


def _stop(state_dir: Path) -> None:
    pid_file = state_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise UsageError(f"no running hpcagent-slurm recorded in {pid_file}") from None
    if not _pid_alive(pid) or not _is_submitter(pid):
        pid_file.unlink(missing_ok=True)
        raise UsageError(f"hpcagent-slurm (pid {pid}) is not running; removed {pid_file}")
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    click.echo(f"stopped hpcagent-slurm (pid {pid})")


def _status(state_dir: Path, as_json: bool) -> None:
    from hpcagent.submitter.ledger import Ledger

    ledger = Ledger(state_dir / "ledger.sqlite")
    try:
        live = ledger.live()
    finally:
        ledger.close()
    pid_file = state_dir / PID_FILE
    pid = pid_file.read_text().strip() if pid_file.exists() else ""
    running = bool(pid) and pid.isdigit() and _pid_alive(int(pid)) and _is_submitter(int(pid))
    queues: dict[str, int] = {}
    for e in live:
        queues[e.queue_name] = queues.get(e.queue_name, 0) + 1
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
        data = {"running": running, "pid": pid or None, "queues": queues, "jobs": rows}
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"submitter: {'running (pid ' + pid + ')' if running else 'not running'}")
    for name, n in sorted(queues.items()):
        click.echo(f"queue {name}: {n} live job(s)")
    if live:
        click.echo(f"{'TASK':34} {'QUEUE':16} {'LEDGER':10} {'JOB':10} JOB STATE")
        for e in live:
            click.echo(
                f"{e.task_id:34} {e.queue_name:16} {e.state:10} {e.job_id or '-':10} "
                f"{e.job_state or '-'}"
            )


def _detach(state_dir: Path) -> None:
    from hpcagent.scheduler.commands import spawn_background

    argv = [a for a in sys.argv[1:] if a not in ("--detached", "--foreground")]
    code = "from hpcagent.cli import slurm_main; slurm_main()"
    log_path = state_dir / LOG_FILE
    with log_path.open("ab") as out:
        proc = spawn_background([sys.executable, "-c", code, *argv, "--foreground"], output=out)
    (state_dir / PID_FILE).write_text(f"{proc.pid}\n")
    click.echo(f"hpcagent-slurm running in the background: pid {proc.pid}, log {log_path}")


#: Options that take several values after one flag (``--queue a b c``), as in the seed's CLI.
GREEDY = ("--template-files", "--queue", "--uptime", "--downtime")


def expand_greedy(args: list[str]) -> list[str]:
    """``--queue a b --max-jobs 1`` → ``--queue a --queue b --max-jobs 1`` (click wants the
    flag repeated); values stop at the next argument that starts with ``-``."""
    out: list[str] = []
    current: str | None = None
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if arg in GREEDY:
            current = arg
            out.append(arg)
            continue
        if arg.startswith("-"):
            current = None
            out.append(arg)
            continue
        if current is not None and out and out[-1] != current:
            out.append(current)
        out.append(arg)
    return out


class _SlurmCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_greedy(list(args)))


@click.command(
    "hpcagent-slurm",
    cls=_SlurmCommand,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
@click.option(
    "--singularity-mode", is_flag=True, help="Run tasks inside their Singularity/Apptainer image."
)
@click.option(
    "--container-mode", is_flag=True, help="Run tasks inside their container image (Docker/Podman)."
)
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
    type=click.Choice(["auto", "slurm", "local"]),
    default="auto",
    help="slurm, local (no Slurm: run scripts here), or auto (slurm when sbatch exists).",
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
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from hpcagent.config import load_settings

    overrides: dict[str, Any] = {}
    if state_dir:
        overrides["slurm.state_dir"] = state_dir
    settings = load_settings(config_file=config_file, cli_overrides=overrides)
    state = _state_dir(settings)
    if show_status:
        _status(state, as_json)
        return
    if mode == "stop":
        _stop(state)
        return
    if singularity_mode and container_mode:
        raise UsageError("give --singularity-mode or --container-mode, not both")
    pairs = _pair_templates(templates, queues) if templates else None
    if pairs is None:
        raise UsageError("give --template-files")
    for _, path in pairs:
        if not path.is_file():
            raise UsageError(f"template file not found: {path}")
    if mode == "detached":
        _detach(state)
        return
    from hpcagent.submitter.run import RunRequest, run_submitter

    req = RunRequest(
        pairs=pairs,
        state_dir=state,
        container_mode="singularity"
        if singularity_mode
        else ("container" if container_mode else None),
        max_jobs=max_jobs,
        order_fairness=order_fairness,
        poll_interval_s=poll_interval,
        dry_run=dry_run,
        scheduler_kind=scheduler_kind,
        uptime=list(uptime) or [str(x) for x in settings.agent.uptime],
        downtime=list(downtime) or [str(x) for x in settings.agent.downtime],
        worker_id=settings.agent.worker_id or f"{socket.gethostname()}:hpcagent-slurm",
        job_config=_write_job_config(settings, state),
        sbatch_available=shutil.which("sbatch") is not None,
    )
    try:
        run_submitter(settings, req, echo=click.echo)
    finally:
        pid_file = state / PID_FILE
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)
