"""``hpcagent daemon``'s core: the submitter loop over a :class:`LocalScheduler`.

The daemon is not a second loop. It is :class:`~hpcagent.submitter.loop.Submitter` (queues in
priority order or in turn, working hours, force switches, ledger, tracking, worker reports)
with three hooks filled in:

* ``can_start`` — a slot check before each pop: at most one task at a time (the seed agent's
  default), at most N with ``--services-mode N`` (no limit with a bare ``--services-mode``),
  and with ``--dynamic-gpus`` only when the queue's minimum number of GPUs is free;
* ``task_vars`` — the GPUs of the task (``CLEARML_DAEMON_GPUS``), which the generated job
  script exports as ``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` before it runs
  ``hpcagent execute --id TASK``;
* ``report_extra`` — ``machine_stats`` for ``workers.status_report`` (supplied by the CLI).

GPUs come back when the ledger row of their task is finished (the tracker settles it when
the job ends); the allocations are saved in ``gpus.json`` so a restart keeps them.

One daemon per worker id: the worker id names its state folder (ledger, lock, pid file,
log, scripts, job outputs), so several daemons with different ``--gpus`` share a machine.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcagent.api import ApiClient
from hpcagent.config import Settings
from hpcagent.daemon.gpus import GpuDemand
from hpcagent.daemon.slots import GPU_VAR, NVIDIA_VAR, Slots
from hpcagent.errors import HpcAgentError, ServerUnreachable
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.submitter.instance import DAEMON_FILES, single_instance
from hpcagent.submitter.ledger import SUBMITTED, Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions
from hpcagent.submitter.worktime import WorkingHours

log = logging.getLogger("hpcagent.daemon")

GPU_FILE = "gpus.json"
TEMPLATE_FILE = "daemon-job.template"


def worker_id_for(
    host: str, gpus: Sequence[str] | None, *, dynamic: bool = False, services: bool = False
) -> str:
    """``<host>:gpu0,1`` for ``--gpus 0,1``; ``<host>:cpu`` for ``--cpu-only``; ``<host>:dgpu0-7``-
    style (``dgpu`` + the list) with ``--dynamic-gpus``; ``<host>:gpuall`` when no GPUs are
    named; ``:service`` is appended in services mode (a services agent beside a GPU agent)."""
    if gpus is None:
        wid = f"{host}:gpuall"
    elif not gpus:
        wid = f"{host}:cpu"
    else:
        wid = f"{host}:{'dgpu' if dynamic else 'gpu'}{','.join(gpus)}"
    return wid + (":service" if services else "")


def state_dir_for(root: Path, worker_id: str) -> Path:
    """The worker's own folder under ``root`` (characters unsafe in a file name become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9_.,:=-]", "_", worker_id).replace(":", "_")
    return root / safe


def job_template(gpu_env: bool) -> str:
    """The job script every task gets (rendered by the submitter like an sbatch template).

    ``gpu_env`` False (no ``--gpus``): the task sees the machine's GPUs as the daemon does.
    """
    lines = [
        "#!/bin/bash",
        "# hpcagent daemon job: task ${CLEARML_TASK.id|slug} from queue ${CLEARML_QUEUE_NAME|slug}",
        "export CLEARML_WORKER_ID=${CLEARML_WORKER_ID}",
        # The exit status for a daemon restarted while the job ran (it re-adopts the job
        # and reads the status there: scheduler/local.py).
        """trap 'echo "$?" > "$HPCAGENT_JOB_STATUS_FILE"' EXIT""",
    ]
    if gpu_env:
        lines += [
            "export CUDA_DEVICE_ORDER=PCI_BUS_ID",
            f"export CUDA_VISIBLE_DEVICES=${{{GPU_VAR}:}}",  # empty: no GPU
            f"export NVIDIA_VISIBLE_DEVICES=${{{NVIDIA_VAR}}}",
        ]
    lines += ["${CLEARML_AGENT_EXECUTE}", ""]
    return "\n".join(lines)


@dataclass
class DaemonRequest:
    """What the CLI asked for."""

    queues: list[tuple[str, GpuDemand | None]]
    state_dir: Path
    worker_id: str
    job_config: Path
    gpus: list[str] | None = None
    dynamic: bool = False
    services: int | None = None  # None: not services mode; 0: services mode without a limit
    order_fairness: bool = False
    create_queue: bool = False
    poll_interval_s: float = 5.0
    container_mode: str | None = None
    uptime: list[str] = field(default_factory=list)
    downtime: list[str] = field(default_factory=list)
    stop_wait_s: float = 20.0

    @property
    def limit(self) -> int | None:
        if self.services is None:
            return None if self.dynamic else 1
        return self.services or None


def resolve_queues(client: ApiClient, req: DaemonRequest, template: Path) -> list[QueueRef]:
    """Queue names/ids → :class:`QueueRef` (created first with ``--create-queue``)."""
    out = []
    for name, _ in req.queues:
        q = client.queues.resolve(name, create=req.create_queue)
        out.append(QueueRef(id=str(q["id"]), name=str(q.get("name") or name), template=template))
    return out


def run_daemon(
    settings: Settings,
    req: DaemonRequest,
    *,
    report_extra: Callable[[], Mapping[str, Any]] | None = None,
    hpcagent_argv: list[str] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; then cancel this daemon's running tasks and settle them.

    A server that cannot be reached does not end the daemon: every call waits for it
    (:meth:`ApiClient.wait_out_outages`; its tasks keep running and buffer their logs
    meanwhile), and a stop during the wait is obeyed at once.
    """
    busy = (
        f"a daemon with worker id {req.worker_id} already runs ({req.state_dir}); --stop stops it"
    )
    with single_instance(req.state_dir, DAEMON_FILES, busy) as stop:
        client = ApiClient.from_settings(settings, worker=req.worker_id)
        client.wait_out_outages(stop)  # one line when the server goes, one when it is back
        try:
            _serve(settings, req, client, stop, report_extra, hpcagent_argv)
        finally:
            client.close()


def _serve(
    settings: Settings,
    req: DaemonRequest,
    client: ApiClient,
    stop: threading.Event,
    report_extra: Callable[[], Mapping[str, Any]] | None,
    hpcagent_argv: list[str] | None,
) -> None:
    template = req.state_dir / TEMPLATE_FILE
    template.write_text(job_template(req.gpus is not None), encoding="utf-8")
    queues = resolve_queues(client, req, template)
    demands = None
    if req.dynamic:
        demands = {q.id: d or GpuDemand(1, 1) for q, (_, d) in zip(queues, req.queues, strict=True)}
    ledger = Ledger(req.state_dir / "ledger.sqlite")
    slots = Slots(
        ledger, gpus=req.gpus, limit=req.limit, demands=demands, state_file=req.state_dir / GPU_FILE
    )
    # The slots limit what runs; the scheduler starts whatever it is given. The kill wait
    # leaves the executor time to forward SIGTERM to the task and write its status.
    scheduler = LocalScheduler(
        output_dir=req.state_dir / "jobs", max_parallel=10_000, kill_wait_s=15.0
    )
    opts = SubmitterOptions(
        queues=queues,
        state_dir=req.state_dir,
        worker_id=req.worker_id,
        order_fairness=req.order_fairness,
        # Queues are polled every --poll-interval (the seed agent's pace); local jobs are
        # cheap to track, so a finished task frees its slot and GPUs within a second.
        pull_interval_s=req.poll_interval_s,
        poll_interval_s=min(req.poll_interval_s, 1.0),
        config_file=req.job_config,
        container_mode=req.container_mode,
        container=settings.container,
        hours=WorkingHours.parse(req.uptime, req.downtime),
        hpcagent_argv=hpcagent_argv or list(settings.slurm.hpcagent_command) or None,
        pre_setup=settings.slurm.pre_setup,
        post_setup=settings.slurm.post_setup,
        can_start=slots.can_start,
        task_vars=slots.task_vars,
        report_extra=report_extra,
        role="daemon",
        log_spool_root=settings.agent.venvs_dir,
    )
    submitter = Submitter(client, scheduler, ledger, opts, settings.get)
    log.info(
        "daemon %s: queues %s; GPUs %s%s%s",
        req.worker_id,
        ", ".join(
            f"{q.name}{'=' + str(d) if d else ''}"
            for q, (_, d) in zip(queues, req.queues, strict=True)
        ),
        "all" if req.gpus is None else (",".join(req.gpus) or "none (cpu only)"),
        " (dynamic)" if req.dynamic else "",
        "" if req.services is None else f"; services mode, at most {req.limit or 'any number'}",
    )
    crashed = True
    try:
        submitter.start()
        _run_through_full_disks(submitter, stop, req.state_dir)
        crashed = False
    except ServerUnreachable as exc:  # only a stop ends a wait for the server
        if not stop.is_set():
            raise
        crashed = False
        log.info("stopped while the server was away (%s)", exc)
    finally:
        if crashed and not stop.is_set():
            # Not a stop that was asked for: the tasks run on, the next start re-adopts them.
            log.error(
                "daemon %s ends on an error; its running tasks keep running and the next "
                "start re-adopts them",
                req.worker_id,
            )
        else:
            stop_running(submitter, scheduler, req.stop_wait_s)
        try:
            submitter.shutdown()
        except HpcAgentError as exc:  # the server may be gone; the worker then just expires
            log.warning("could not unregister %s: %s", req.worker_id, exc)
        ledger.close()


def _run_through_full_disks(submitter: Submitter, stop: threading.Event, state_dir: Path) -> None:
    """``submitter.run(stop)``, waiting out a state folder that cannot be written (a full
    disk, a quota): the ledger refuses each write whole, so the loop goes on where it was
    once there is space again (a task popped right before stays ``queued`` without a ledger
    row, and the stranded-task sweep puts it back in its queue). At most one line a minute."""
    said = -FULL_DISK_LOG_S
    while not stop.is_set():
        try:
            submitter.run(stop)
            return
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if time.monotonic() - said >= FULL_DISK_LOG_S:
                said = time.monotonic()
                log.warning("cannot write the state folder %s (%s); retrying", state_dir, exc)
            stop.wait(2.0)


#: How often the daemon repeats that its state folder cannot be written.
FULL_DISK_LOG_S = 60.0


def stop_running(submitter: Submitter, scheduler: LocalScheduler, wait_s: float) -> None:
    """Cancel the daemon's running jobs (the executor forwards SIGTERM to the task and marks
    it), wait for them, and let the tracker settle the ledger once."""
    entries = [e for e in submitter.ledger.live() if e.state == SUBMITTED and e.job_id]
    if not entries:
        return
    jobs = [str(e.job_id) for e in entries]
    log.info("stopping %d running task(s)", len(jobs))
    # The executor normally writes "stopped" itself; a job it could not report for (killed
    # after the kill wait) is stopped by the tracker, never failed: this stop is on purpose.
    submitter.tracker.stopping(
        [e.task_id for e in entries],
        f"terminated by signal SIGTERM (daemon {submitter.opts.worker_id} stopped)",
    )
    scheduler.cancel(jobs)
    scheduler.wait(jobs, timeout_s=wait_s, poll_s=0.2)
    try:
        submitter.tracker.track()
    except Exception as exc:  # best effort on the way out; the server may be gone
        log.warning("could not settle the stopped tasks: %s", exc)


def default_host() -> str:
    return socket.gethostname()
