"""What the submitter is told: the queues it serves (:class:`QueueRef`), how it behaves
(:class:`SubmitterOptions`, filled in by ``hpcagent-slurm`` and ``hpcagent daemon``) and the
one rule that names a task's job (:func:`job_name`).

Every other submitter module imports these from here, so none of them needs the loop (no
import circle between the loop and the tracker).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcagent.config import ContainerSettings
from hpcagent.submitter.worktime import WorkingHours


def job_name(task_id: str) -> str:
    """The scheduler's job name of a task: its script's file name, ``${CLEARML_JOB_NAME}`` in
    templates, ``%x`` in output paths, and how its job is found again after a restart.

    ``<first 8 of the id>-clearml_task_<id>``: ``squeue``'s default format shows 8 characters
    of the name, and they tell jobs apart (the start of the id ``hpcagent task list`` shows);
    the seed's ``clearml_task_<id>`` stays in it for scripts that look for it."""
    return f"{task_id[:8]}-{legacy_job_name(task_id)}"


def legacy_job_name(task_id: str) -> str:
    """The name hpcagent gave jobs before :func:`job_name` (and the seed's template sets):
    looked up too when jobs are re-adopted, so that an upgrade finds the jobs it left."""
    return f"clearml_task_{task_id}"


@dataclass(frozen=True)
class QueueRef:
    """A queue the submitter serves, with its template."""

    id: str
    name: str
    template: Path


@dataclass
class SubmitterOptions:
    """How the submitter behaves (the CLI fills this in)."""

    queues: list[QueueRef]
    state_dir: Path
    worker_id: str
    max_jobs: int | None = None
    order_fairness: bool = False
    poll_interval_s: float = 5.0
    pull_interval_s: float = 0.25
    container_mode: str | None = None
    #: ``Settings.container``: images, pull on submit, the shim's mode.
    container: ContainerSettings = field(default_factory=ContainerSettings)
    config_file: Path | None = None
    hours: WorkingHours = field(default_factory=WorkingHours)
    max_pulls_per_cycle: int = 100
    limit_backoff_s: float = 60.0
    lost_grace_s: float = 300.0
    stop_grace_s: float = 30.0
    #: A task ``queued`` with no queue entry (a lost pop, submitter/stranded.py) is put back
    #: when two sweeps at least this far apart saw it so; sweeps run every ``stranded_check_s``.
    stranded_grace_s: float = 120.0
    stranded_check_s: float = 60.0
    #: A job that pends for a reason meaning it can never start (``never_runs``) is cancelled
    #: and its task failed with that reason after this long; 0 keeps it pending (its task's
    #: status message shows the reason).
    never_runs_fail_s: float = 60.0
    #: argv prefix of ``${CLEARML_AGENT_EXECUTE}`` (``slurm.hpcagent_command``); None: this
    #: Python with ``-m hpcagent``.
    hpcagent_argv: list[str] | None = None
    #: ``${CLEARML_PRE_SETUP}`` / ``${CLEARML_POST_SETUP}`` (``slurm.pre_setup/post_setup``).
    pre_setup: str = ""
    post_setup: str = ""
    # Hooks for other front ends (``hpcagent daemon``); None keeps hpcagent-slurm's behaviour.
    #: Called before each pop: may a task from this queue start now (free GPUs, slots)?
    can_start: Callable[[QueueRef], bool] | None = None
    #: Extra ``CLEARML_*`` template values for a popped, still queued task (e.g. its GPUs).
    task_vars: Callable[[str, QueueRef], Mapping[str, Any]] | None = None
    #: Extra fields for ``workers.status_report`` (e.g. ``machine_stats``).
    report_extra: Callable[[], Mapping[str, Any]] | None = None
    #: The executor's work folder (``agent.venvs_dir``): log spools left there by executors that
    #: ended before the server took their logs are delivered from here (hpcagent.api.spool),
    #: at start and every ``orphan_logs_interval_s``; None: never.
    log_spool_root: Path | None = None
    orphan_logs_interval_s: float = 300.0
    #: What the worker reports itself to be (runtime property ``hpcagent_role``).
    role: str = "submitter"
