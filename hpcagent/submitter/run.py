"""Wiring for ``hpcagent-slurm``: settings → client, scheduler, ledger → :class:`Submitter`.

One submitter per state folder (:func:`~hpcagent.submitter.instance.single_instance`): a
second one on the same folder is refused, so two processes never pull for the same ledger.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcagent import __version__
from hpcagent.api import ApiClient
from hpcagent.config import Settings
from hpcagent.errors import ServerUnreachable
from hpcagent.scheduler import registry
from hpcagent.scheduler.base import Scheduler
from hpcagent.submitter import taskops
from hpcagent.submitter.blocks import render_for
from hpcagent.submitter.instance import SUBMITTER_FILES, single_instance
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions
from hpcagent.submitter.worktime import WorkingHours
from hpcagent.templating import NameCache, api_fetch

log = logging.getLogger("hpcagent.submitter")


@dataclass
class RunRequest:
    """What the CLI asked for."""

    pairs: list[tuple[str, Path]]
    state_dir: Path
    worker_id: str
    job_config: Path
    container_mode: str | None = None
    max_jobs: int | None = None
    order_fairness: bool = False
    poll_interval_s: float | None = None
    dry_run: bool = False
    scheduler_kind: str = "auto"
    uptime: list[str] | None = None
    downtime: list[str] | None = None
    #: ``machine_stats`` for the worker reports (the CLI's ``MachineStats`` of this host).
    report_extra: Callable[[], Mapping[str, Any]] | None = None


def make_scheduler(kind: str, state_dir: Path) -> Scheduler:
    """The registered backend ``kind``, or for ``auto`` the available one with the highest
    priority (``scheduler.registry``)."""
    return registry.choose(kind).create(state_dir=state_dir)


def dry_run(
    client: ApiClient, settings: Settings, opts: SubmitterOptions, echo: Callable[[str], Any]
) -> None:
    """Print the script the next queued task would get (nothing is popped or submitted).

    The script comes from :func:`render_for`, as at submission: with
    ``agent.container.pull_on_submit`` the image is pulled into the cache first, so the
    printed script names the same SIF that the submitted one would.
    """
    for q in opts.queues:
        queue = client.send("queues.get_by_id", {"queue": q.id}).get("queue") or {}
        entries = queue.get("entries") or []
        if not entries:
            continue
        task_id = str(entries[0].get("task"))
        task = taskops.get_task(client, task_id)
        if task is None:
            continue
        script = render_for(task, q, opts, settings.get, names=NameCache(api_fetch(client.send)))
        echo(f"# next task {task_id} from queue {q.name} with template {q.template}")
        echo(script.rstrip("\n"))
        return
    echo("# no queued task in " + ", ".join(q.name for q in opts.queues))


def run_submitter(settings: Settings, req: RunRequest, echo: Callable[[str], Any]) -> None:
    """Build everything and run until SIGTERM/SIGINT.

    From the moment it holds its state folder the submitter waits out any outage of the
    server (:meth:`ApiClient.wait_out_outages`: one line when it goes, one when it is back),
    also while it resolves its queues at start; ``--dry-run`` fails fast instead.
    """
    client = ApiClient.from_settings(settings, worker=req.worker_id)
    if req.dry_run:
        dry_run(client, settings, submitter_options(client, settings, req), echo)
        return
    busy = f"another hpcagent-slurm uses {req.state_dir} (see --status; --stop stops it)"
    with single_instance(req.state_dir, SUBMITTER_FILES, busy) as stop:
        client.wait_out_outages(stop)
        opts = submitter_options(client, settings, req)
        ledger = Ledger(req.state_dir / "ledger.sqlite")
        scheduler = make_scheduler(req.scheduler_kind, req.state_dir)
        submitter = Submitter(client, scheduler, ledger, opts, settings.get)
        log_start(settings, req, opts, scheduler)
        write_serving(req.state_dir, opts)
        try:
            submitter.start()
            log.info(
                "re-adopted %d job(s) from the last run; serving",
                sum(1 for e in ledger.live() if e.job_id),
            )
            submitter.run(stop)
        except ServerUnreachable as exc:
            if not stop.is_set():
                raise
            log.info("stopped while the server was away (%s)", exc)
        finally:
            submitter.shutdown()
            live = sum(1 for e in ledger.live() if e.job_id)
            ledger.close()
            (req.state_dir / SERVING_FILE).unlink(missing_ok=True)
            log.info(
                "hpcagent-slurm stopped (pid %d); %d job(s) keep running and are re-adopted by "
                "the next start",
                os.getpid(),
                live,
            )


def submitter_options(client: ApiClient, settings: Settings, req: RunRequest) -> SubmitterOptions:
    """The queues resolved with the server (by name or id) and the options of the request."""
    queues = []
    for name, template in req.pairs:
        q = client.queues.resolve(name)
        queues.append(QueueRef(id=str(q["id"]), name=str(q.get("name") or name), template=template))
    poll = req.poll_interval_s or float(settings.slurm.poll_interval_s)
    return SubmitterOptions(
        queues=queues,
        state_dir=req.state_dir,
        worker_id=req.worker_id,
        max_jobs=req.max_jobs,
        order_fairness=req.order_fairness,
        poll_interval_s=poll,
        pull_interval_s=min(poll, settings.slurm.pull_interval_s or 0.25),
        container_mode=req.container_mode,
        container=settings.container,
        config_file=req.job_config,
        hours=WorkingHours.parse(req.uptime or [], req.downtime or []),
        never_runs_fail_s=settings.slurm.never_runs_fail_s,
        hpcagent_argv=list(settings.slurm.hpcagent_command) or None,
        pre_setup=settings.slurm.pre_setup,
        post_setup=settings.slurm.post_setup,
        report_extra=req.report_extra,
        log_spool_root=settings.agent.venvs_dir,
    )


#: The queues a running submitter serves (``--status`` reads it; removed when it stops).
SERVING_FILE = "serving.json"


def write_serving(state_dir: Path, opts: SubmitterOptions) -> None:
    doc = {
        "worker": opts.worker_id,
        "pid": os.getpid(),
        "queues": [{"id": q.id, "name": q.name, "template": str(q.template)} for q in opts.queues],
    }
    (state_dir / SERVING_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def read_serving(state_dir: Path) -> dict[str, Any]:
    """What :func:`write_serving` wrote ({} when no submitter runs or it cannot be read)."""
    try:
        doc = json.loads((state_dir / SERVING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def log_start(
    settings: Settings, req: RunRequest, opts: SubmitterOptions, scheduler: Scheduler
) -> None:
    """The lifecycle lines at start: version, pid, and the configuration in effect."""
    log.info(
        "hpcagent-slurm %s started (pid %d, worker %s, state %s)",
        __version__,
        os.getpid(),
        opts.worker_id,
        req.state_dir,
    )
    log.info(
        "config: api %s; scheduler %s; queues %s; max jobs %s; poll %gs; container mode %s; "
        "job config %s",
        settings.api.api_server,
        type(scheduler).__name__,
        ", ".join(f"{q.name} <- {q.template}" for q in opts.queues),
        opts.max_jobs if opts.max_jobs is not None else "no limit",
        opts.poll_interval_s,
        opts.container_mode or "none",
        opts.config_file,
    )
