"""What the executor reads from a task, and the pure rules it applies to it.

Everything here is free of I/O so it can be unit-tested: parsing the task dict
(``tasks.get_by_id`` shape, see clearml-api.md §3), the worker id and rank rules, the "should
this task still run" decision and the exit-code-to-status mapping. The Args rule lives in
:mod:`hpcagent.executor.arguments`.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Statuses after which a task must not be (re)started without ``--force``.
TERMINAL_STATUSES = frozenset(
    {"stopped", "closed", "failed", "completed", "published", "publishing"}
)


@dataclass(frozen=True)
class ScriptInfo:
    """The ``script`` section of a task, normalised."""

    repository: str = ""
    branch: str = ""
    tag: str = ""
    version_num: str = ""
    entry_point: str = ""
    working_dir: str = "."
    binary: str = "python"
    diff: str = ""
    requirements_pip: str | None = None

    @property
    def is_literal(self) -> bool:
        """True when the task carries the script text itself instead of a repository."""
        return not self.repository


@dataclass(frozen=True)
class TaskInfo:
    """The parts of a task the executor needs."""

    id: str
    name: str
    status: str
    status_message: str
    script: ScriptInfo
    args: tuple[tuple[str, str], ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    runtime: Mapping[str, Any] = field(default_factory=dict)
    #: ``hyperparams.properties`` (the submitter records ``slurm-job-id`` there).
    properties: Mapping[str, str] = field(default_factory=dict)
    container_image: str = ""
    container_arguments: str = ""
    setup_shell_script: str = ""

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> TaskInfo:
        """Build from a task dict as returned by ``tasks.get_by_id`` (``data.task``)."""
        script = task.get("script") or {}
        reqs = script.get("requirements") or {}
        pip_reqs = reqs.get("pip") if isinstance(reqs, Mapping) else None
        working_dir = str(script.get("working_dir") or "")
        entry = str(script.get("entry_point") or "")
        if not working_dir and ":" in entry and not entry.startswith("-m"):
            # ClearML allows "dir:script.py" when working_dir is empty.
            working_dir, entry = entry.split(":", 1)
        hyper = task.get("hyperparams") or {}
        container = task.get("container") or {}
        return cls(
            id=str(task.get("id", "")),
            name=str(task.get("name", "")),
            status=str(task.get("status", "")),
            status_message=str(task.get("status_message") or ""),
            script=ScriptInfo(
                repository=str(script.get("repository") or ""),
                branch=str(script.get("branch") or ""),
                tag=str(script.get("tag") or ""),
                version_num=str(script.get("version_num") or ""),
                entry_point=entry,
                working_dir=working_dir or ".",
                binary=str(script.get("binary") or "python"),
                diff=str(script.get("diff") or ""),
                requirements_pip=str(pip_reqs) if pip_reqs is not None else None,
            ),
            args=_section_items(hyper.get("Args")),
            environment=_section_items(hyper.get("Environment")),
            runtime=dict(task.get("runtime") or {}),
            properties=dict(_section_items(hyper.get("properties"))),
            container_image=str(container.get("image") or ""),
            container_arguments=str(container.get("arguments") or ""),
            setup_shell_script=str(container.get("setup_shell_script") or ""),
        )


def _section_items(section: Any) -> tuple[tuple[str, str], ...]:
    """``hyperparams.<section>`` as ``(name, value)`` pairs in the task's order."""
    if not isinstance(section, Mapping):
        return ()
    items: list[tuple[str, str]] = []
    for key, item in section.items():
        if isinstance(item, Mapping):
            name = str(item.get("name") or key)
            value = item.get("value")
        else:
            name, value = str(key), item
        items.append((name, "" if value is None else str(value)))
    return tuple(items)


def entry_argv(python: str, script: ScriptInfo) -> list[str]:
    """The argv that starts the entry point (without the Args overrides).

    ``-m pkg.mod a b`` runs a module; ``train.py --x 1`` runs a file with fixed arguments;
    a bash binary runs the entry point with bash. Splitting uses :func:`shlex.split` on the
    task's own entry point only; nothing is ever given to a shell.
    """
    parts = shlex.split(script.entry_point) if script.entry_point else []
    if not parts:
        raise ValueError("the task has no entry point (script.entry_point is empty)")
    binary = os.path.basename(script.binary or "python")
    if binary in ("bash", "sh"):
        return [script.binary if os.path.isabs(script.binary) else binary, *parts]
    return [python, "-u", *parts]  # "-m pkg.mod ..." and "script.py ..." alike


def worker_id(env: Mapping[str, str] | None = None, configured: str = "") -> str:
    """``CLEARML_WORKER_ID``, else the configured id, else ``<host>:slurm-<job>``, else
    ``<host>:<pid>``."""
    env = os.environ if env is None else env
    if env.get("CLEARML_WORKER_ID"):
        return env["CLEARML_WORKER_ID"]
    if configured:
        return configured
    host = socket.gethostname()
    if env.get("SLURM_JOB_ID"):
        return f"{host}:slurm-{env['SLURM_JOB_ID']}"
    return f"{host}:{os.getpid()}"


def rank(env: Mapping[str, str] | None = None) -> int:
    """The process rank: ``SLURM_PROCID``, else ``RANK``, else 0 (unparsable counts as 0)."""
    env = os.environ if env is None else env
    for name in ("SLURM_PROCID", "RANK"):
        value = env.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def job_id(env: Mapping[str, str]) -> str:
    """The scheduler job this process runs in: ``SLURM_JOB_ID``, else the local scheduler's
    ``HPCAGENT_JOB_ID`` (``hpcagent daemon``), else ""."""
    return env.get("SLURM_JOB_ID") or env.get("HPCAGENT_JOB_ID") or ""


def should_run(task: TaskInfo, job: str, force: bool) -> tuple[bool, str]:
    """Decide whether the task runs here; returns ``(run, reason)``. ``job`` is
    :func:`job_id` ("" when run by hand).

    The job recorded on the task (property ``slurm-job-id`` from the submitter, else
    ``runtime.slurm_job_id`` from an earlier executor) tells a run the submitter launched for
    this task (``job`` is the recorded one) from a run asked for by hand:

    * ``queued`` runs (the executor dequeues it), unless another job that the submitter
      still reports pending in the status message holds it;
    * ``in_progress`` runs when it is not being stopped and either no job is recorded or
      the recorded job is ours; a task recorded for another job does not run;
    * ``created``, ``stopped``, ``failed`` and ``completed`` run when asked by hand, as
      ``clearml-agent execute --id`` runs them; a launched run does not (the task was
      reset, aborted or ended while its job waited);
    * ``published``, ``publishing`` and ``closed`` never run; ``force`` overrides everything.
    """
    if force:
        return True, "forced"
    recorded = str(task.properties.get("slurm-job-id") or task.runtime.get("slurm_job_id") or "")
    launched = bool(job) and recorded == job
    if task.status == "queued":
        if (
            recorded
            and not launched
            and re.search(rf"\b{re.escape(recorded)}\b", task.status_message)
        ):
            return False, f"the task is held by job {recorded} ({task.status_message})"
        return True, "queued"
    if task.status == "in_progress":
        if "stopping" in task.status_message:
            return False, "the task is being stopped"
        if not recorded or launched:
            return True, "in progress, handed to this job"
        return False, f"the task belongs to job {recorded}, not {job or 'this process'}"
    if task.status in ("created", "stopped", "failed", "completed"):
        if launched:
            return False, f"the task was reset, aborted or ended meanwhile (status {task.status})"
        return True, f"asked for by id (status {task.status})"
    return False, f"the task is {task.status or 'in an unknown state'}"


def runtime_record(env: Mapping[str, str], worker: str, hostname: str) -> dict[str, str]:
    """The ``runtime`` keys the executor owns (docs/structure.md, "Who writes what"):
    the node it runs on, its worker id, and, under Slurm, the job id and node list."""
    keys = {"_exec_agent_hostname": hostname, "hpcagent_worker": worker}
    if env.get("SLURM_JOB_ID"):
        keys["slurm_job_id"] = env["SLURM_JOB_ID"]
    if env.get("SLURM_JOB_NODELIST"):
        keys["slurm_nodes"] = env["SLURM_JOB_NODELIST"]
    return keys


@dataclass(frozen=True)
class FinalStatus:
    """The status call to make when the run ends."""

    action: str  # "completed" | "failed" | "stopped"
    reason: str
    message: str


def final_status(
    returncode: int,
    *,
    aborted: bool = False,
    signal_name: str = "",
    tail: str = "",
) -> FinalStatus:
    """Map how the run ended to a status call (clearml-api.md §4.4).

    Abort by the user wins over the exit code; then a signal received by the executor
    (Slurm time limit, preemption, scancel); then exit 0 → completed, -2/254 → stopped,
    anything else → failed with the code and the last log lines.
    """
    if aborted:
        return FinalStatus("stopped", "task was stopped by tasks.stop", "aborted by user")
    if signal_name:
        return FinalStatus(
            "stopped",
            f"terminated by signal {signal_name}",
            f"terminated by signal {signal_name} (Slurm time limit, preemption or scancel);"
            f" exit code {returncode}",
        )
    if returncode == 0:
        return FinalStatus("completed", "worker execution done", "")
    if returncode in (-2, 254):
        return FinalStatus("stopped", "user abort", "interrupted")
    message = f"exit code {returncode}"
    if tail:
        message += "; last lines:\n" + tail
    return FinalStatus("failed", f"worker execution exit code {returncode}", message[-2000:])
