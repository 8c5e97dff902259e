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

from hpcagent.errors import TaskRecordError
from hpcagent.scheduler.base import (
    LEGACY_PROP_JOB_ID,
    LEGACY_RUNTIME_JOB_ID,
    PROP_JOB_ID,
    RUNTIME_JOB_ID,
    RUNTIME_NODES,
    RUNTIME_SCHEDULER,
    JobIdentity,
)

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
    #: ``hyperparams.properties`` (the submitter records its job there: ``job-id``, ...).
    properties: Mapping[str, str] = field(default_factory=dict)
    container_image: str = ""
    container_arguments: str = ""
    setup_shell_script: str = ""

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> TaskInfo:
        """Build from a task dict as returned by ``tasks.get_by_id`` (``data.task``).

        Raises :class:`TaskRecordError` naming the field when a part the executor uses has
        the wrong type (a server may hold anything: an old SDK, a script, a database edit);
        a missing or null section counts as empty. ``runtime`` of the wrong type counts as
        empty too (the executor writes it anew).
        """
        script = _section(task, "script")
        reqs = script.get("requirements")
        if isinstance(reqs, str):  # some writers store the pip text alone
            reqs = {"pip": reqs}
        reqs = _section({"script.requirements": reqs}, "script.requirements")
        pip_reqs = reqs.get("pip")
        if isinstance(pip_reqs, list) and all(isinstance(x, str) for x in pip_reqs):
            pip_reqs = "\n".join(pip_reqs)
        elif pip_reqs is not None and not isinstance(pip_reqs, str):
            raise _wrong("script.requirements.pip", pip_reqs, "a text")
        text = {k: _text(script, k, "script") for k in _SCRIPT_TEXTS}
        working_dir, entry = text["working_dir"], text["entry_point"]
        if not working_dir and ":" in entry and not entry.startswith("-m"):
            # ClearML allows "dir:script.py" when working_dir is empty.
            working_dir, entry = entry.split(":", 1)
        hyper = _section(task, "hyperparams")
        container = _section(task, "container")
        runtime = task.get("runtime")
        return cls(
            id=str(task.get("id", "")),
            name=str(task.get("name", "")),
            status=str(task.get("status", "")),
            status_message=str(task.get("status_message") or ""),
            script=ScriptInfo(
                repository=text["repository"],
                branch=text["branch"],
                tag=text["tag"],
                version_num=text["version_num"],
                entry_point=entry,
                working_dir=working_dir or ".",
                binary=text["binary"] or "python",
                diff=text["diff"],
                requirements_pip=pip_reqs,
            ),
            args=_section_items(hyper, "Args"),
            environment=_section_items(hyper, "Environment"),
            runtime=dict(runtime) if isinstance(runtime, Mapping) else {},
            properties=dict(_section_items(hyper, "properties")),
            container_image=_text(container, "image", "container"),
            container_arguments=_text(container, "arguments", "container"),
            setup_shell_script=_text(container, "setup_shell_script", "container"),
        )


_SCRIPT_TEXTS = (
    "repository", "branch", "tag", "version_num", "entry_point", "working_dir", "binary", "diff"
)  # fmt: skip


def _wrong(field_name: str, value: Any, want: str) -> TaskRecordError:
    return TaskRecordError(
        f"the task record cannot be run: {field_name} is {_kind(value)}, expected {want}"
    )


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "a boolean"}
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _section(record: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``record[key]`` as a mapping: missing or null is empty, another type is an error."""
    value = record.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _wrong(key, value, "an object")
    return value


def _text(section: Mapping[str, Any], key: str, where: str) -> str:
    """A text field: missing or null is "", another type than text is an error."""
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _wrong(f"{where}.{key}", value, "a text")
    return value


def _section_items(hyper: Mapping[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    """``hyperparams.<name>`` as ``(name, value)`` pairs in the task's order; a value that is
    not a scalar (an object, a list) is an error naming it."""
    section = _section({f"hyperparams.{name}": hyper.get(name)}, f"hyperparams.{name}")
    items: list[tuple[str, str]] = []
    for key, item in section.items():
        if isinstance(item, Mapping):
            name_ = str(item.get("name") or key)
            value = item.get("value")
        else:
            name_, value = str(key), item
        if isinstance(value, Mapping | list):
            raise _wrong(f"hyperparams.{name}.{key}", value, "a text or a number")
        items.append((name_, "" if value is None else str(value)))
    return tuple(items)


def entry_argv(python: str, script: ScriptInfo) -> list[str]:
    """The argv that starts the entry point (without the Args overrides).

    ``-m pkg.mod a b`` runs a module; ``train.py --x 1`` runs a file with fixed arguments;
    a bash binary runs the entry point with bash. Splitting uses :func:`shlex.split` on the
    task's own entry point only; nothing is ever given to a shell.
    """
    try:
        parts = shlex.split(script.entry_point) if script.entry_point else []
    except ValueError as exc:  # an unbalanced quote
        raise ValueError(
            f"script.entry_point {script.entry_point!r} cannot be split as a shell would: {exc}"
        ) from exc
    if not parts:
        raise ValueError("the task has no entry point (script.entry_point is empty)")
    binary = os.path.basename(script.binary or "python")
    if binary in ("bash", "sh"):
        return [script.binary if os.path.isabs(script.binary) else binary, *parts]
    return [python, "-u", *parts]  # "-m pkg.mod ..." and "script.py ..." alike


def worker_id(
    env: Mapping[str, str] | None = None, configured: str = "", job: JobIdentity | None = None
) -> str:
    """``CLEARML_WORKER_ID``, else the configured id, else ``<host>:<scheduler>-<job id>``
    inside a scheduler's job (``vm:slurm-42``), else ``<host>:<pid>``."""
    env = os.environ if env is None else env
    if env.get("CLEARML_WORKER_ID"):
        return env["CLEARML_WORKER_ID"]
    if configured:
        return configured
    host = socket.gethostname()
    if job is not None:
        return f"{host}:{job.scheduler}-{job.job_id}"
    return f"{host}:{os.getpid()}"


def rank(env: Mapping[str, str] | None = None, job: JobIdentity | None = None) -> int:
    """The process rank: the scheduler's (``SLURM_PROCID``), else ``RANK`` (torchrun and
    similar launchers), else 0 (unparsable counts as 0)."""
    env = os.environ if env is None else env
    if job is not None and job.rank is not None:
        return job.rank
    value = env.get("RANK")
    if value:
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def recorded_job(task: TaskInfo) -> str:
    """The job id recorded on the task: the submitter's property (``job-id``; ``slurm-job-id``
    on tasks submitted before), else an earlier executor's ``runtime`` (``job_id``;
    ``slurm_job_id``); "" when none is."""
    for value in (
        *(task.properties.get(k) for k in (PROP_JOB_ID, LEGACY_PROP_JOB_ID)),
        *(task.runtime.get(k) for k in (RUNTIME_JOB_ID, LEGACY_RUNTIME_JOB_ID)),
    ):
        if value:
            return str(value)
    return ""


def should_run(task: TaskInfo, job: JobIdentity | None, force: bool) -> tuple[bool, str]:
    """Decide whether the task runs here; returns ``(run, reason)``. ``job`` is the scheduler
    job this process runs in (``scheduler.registry.job_identity``; None when run by hand).

    The job recorded on the task (:func:`recorded_job`) tells a run the submitter launched for
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
    recorded = recorded_job(task)
    launched = job is not None and recorded == job.job_id
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
        here = f"{job.scheduler} job {job.job_id}" if job is not None else "this process"
        return False, f"the task belongs to job {recorded}, not {here}"
    if task.status in ("created", "stopped", "failed", "completed"):
        if launched:
            return False, f"the task was reset, aborted or ended meanwhile (status {task.status})"
        return True, f"asked for by id (status {task.status})"
    return False, f"the task is {task.status or 'in an unknown state'}"


def runtime_record(job: JobIdentity | None, worker: str, hostname: str) -> dict[str, str]:
    """The ``runtime`` keys the executor owns (docs/structure.md, "Who writes what"): the node
    it runs on, its worker id, and inside a scheduler's job that scheduler's name, the job id
    and its node list."""
    keys = {"_exec_agent_hostname": hostname, "hpcagent_worker": worker}
    if job is not None:
        keys[RUNTIME_SCHEDULER] = job.scheduler
        keys[RUNTIME_JOB_ID] = job.job_id
        if job.nodes:
            keys[RUNTIME_NODES] = job.nodes
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
