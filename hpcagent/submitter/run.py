"""Wiring for ``hpcagent-slurm``: settings → client, scheduler, ledger → :class:`Submitter`.

One submitter per state folder (:func:`~hpcagent.submitter.instance.single_instance`): a
second one on the same folder is refused, so two processes never pull for the same ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcagent.api import ApiClient
from hpcagent.config import Settings
from hpcagent.scheduler.base import Scheduler
from hpcagent.submitter.blocks import build_context
from hpcagent.submitter.instance import SUBMITTER_FILES, single_instance
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions
from hpcagent.submitter.worktime import WorkingHours
from hpcagent.templating import NameCache, api_fetch, render_file


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
    sbatch_available: bool = True


def make_scheduler(kind: str, state_dir: Path, sbatch_available: bool) -> Scheduler:
    """``slurm``, ``local`` or ``auto`` (Slurm when sbatch is on PATH)."""
    if kind == "auto":
        kind = "slurm" if sbatch_available else "local"
    if kind == "slurm":
        from hpcagent.scheduler.slurm import SlurmScheduler

        return SlurmScheduler()
    from hpcagent.scheduler.local import LocalScheduler

    return LocalScheduler(output_dir=state_dir / "local-jobs")


def dry_run(
    client: ApiClient, settings: Settings, opts: SubmitterOptions, echo: Callable[[str], Any]
) -> None:
    """Print the script the next queued task would get (nothing is popped or submitted)."""
    for q in opts.queues:
        queue = client.send("queues.get_by_id", {"queue": q.id}).get("queue") or {}
        entries = queue.get("entries") or []
        if not entries:
            continue
        task_id = str(entries[0].get("task"))
        data = client.send("tasks.get_all", {"id": [task_id], "search_hidden": True})
        tasks = data.get("tasks") or []
        if not tasks:
            continue
        ctx = build_context(
            tasks[0],
            queue_name=q.name,
            queue_id=q.id,
            worker_id=opts.worker_id,
            config=settings.get,
            config_file=opts.config_file,
            container_mode=opts.container_mode,
            template_text=q.template.read_text(),
            container=settings.container,
        )
        ctx = dataclasses.replace(ctx, names=NameCache(api_fetch(client.send)))
        echo(f"# next task {task_id} from queue {q.name} with template {q.template}")
        echo(render_file(q.template, ctx).rstrip("\n"))
        return
    echo("# no queued task in " + ", ".join(q.name for q in opts.queues))


def run_submitter(settings: Settings, req: RunRequest, echo: Callable[[str], Any]) -> None:
    """Build everything and run until SIGTERM/SIGINT."""
    client = ApiClient.from_settings(settings, worker=req.worker_id)
    queues = []
    for name, template in req.pairs:
        q = client.queues.resolve(name)
        queues.append(QueueRef(id=str(q["id"]), name=str(q.get("name") or name), template=template))
    poll = req.poll_interval_s or float(settings.slurm.poll_interval_s)
    opts = SubmitterOptions(
        queues=queues,
        state_dir=req.state_dir,
        worker_id=req.worker_id,
        max_jobs=req.max_jobs,
        order_fairness=req.order_fairness,
        poll_interval_s=poll,
        pull_interval_s=min(poll, float(settings.get("slurm.pull_interval_sec", 0.25) or 0.25)),
        container_mode=req.container_mode,
        container=settings.container,
        config_file=req.job_config,
        hours=WorkingHours.parse(req.uptime or [], req.downtime or []),
    )
    if req.dry_run:
        dry_run(client, settings, opts, echo)
        return
    busy = f"another hpcagent-slurm uses {req.state_dir} (see --status; --stop stops it)"
    with single_instance(req.state_dir, SUBMITTER_FILES, busy) as stop:
        ledger = Ledger(req.state_dir / "ledger.sqlite")
        scheduler = make_scheduler(req.scheduler_kind, req.state_dir, req.sbatch_available)
        submitter = Submitter(client, scheduler, ledger, opts, settings.get)
        try:
            submitter.start()
            submitter.run(stop)
        finally:
            submitter.shutdown()
            ledger.close()
