"""The scheduler contract that every backend (Slurm, Grid Engine, local bash) fulfils.

A backend is one module with one :class:`Scheduler` subclass, registered under its ``name`` as a
Python entry point in the group ``hpcagent.schedulers`` (pyproject.toml; see
``scheduler/registry.py``). What the rest of hpcagent may rely on:

Jobs (instance methods, used by the submitter):

* ``submit(script_path, *, job_name) -> job_id``: hand one script to the scheduler. Raises
  :class:`~hpcagent.errors.SubmitError` (rejected; ``stderr`` holds the scheduler's words),
  :class:`~hpcagent.errors.SubmitLimitError` (a per-user job limit; retry later) or
  :class:`~hpcagent.errors.TransientSchedulerError` (still failing after retries).
* ``status(job_ids) -> {job_id: JobStatus}``: one entry per requested id, always. A job the
  scheduler knows nothing about is ``JobState.UNKNOWN``, never a success.
* ``cancel(job_ids)``: ask for cancellation; ids that are already gone are not an error.
* ``find_by_name(name) -> [job_id, ...]``: jobs with that exact name (re-adoption after a restart).
* ``output_path(job_id, *, job_name, script, submit_dir)``: where the job's stdout goes (the
  submitter shows its tail when a job fails), from the submitted script's directives and the
  backend's default; None when the backend cannot tell.

The backend itself (class attributes and class methods, used without an instance):

* ``name`` (the registry name, ``--scheduler NAME``), ``job_label`` ("slurm job": how messages
  name a job), ``auto_priority`` (``--scheduler auto`` takes the available backend with the
  highest), ``available(env)`` (its submit command is on PATH).
* ``create(state_dir=...)``: the backend as ``hpcagent-slurm`` uses it.
* ``never_runs(status)``: a pending job the scheduler will never start as asked (Slurm's
  pending reasons); False where the backend cannot tell.
* ``cancel_own_job(job)``: cancel the job this process runs in (the executor after an abort);
  False where the backend does not.
* The job's environment: ``job_identity(env) -> JobIdentity | None`` reads the variables the
  scheduler gives a running job (its id, nodes and the process rank); the executor calls it for
  every backend (registry ``job_identity``) to know which job it runs in. ``job_env_prefixes``
  names those variables: ``job_identity`` is None for an environment without any of them (the
  registry asks, and imports, only the backends whose variables are there; a backend without
  prefixes is always asked). ``clean_env(environ)`` drops them (except ``job_env_keep``), so
  that a submitter started inside a job does not leak its job's variables into the jobs it
  submits.

Only ``JobState.COMPLETED`` means success. ``UNKNOWN`` is neither active nor terminal: callers
decide how long to wait before they call such a job lost.
"""

from __future__ import annotations

import abc
import enum
import getpass
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from hpcagent.errors import CommandError, CommandTimeout, SchedulerError, TransientSchedulerError
from hpcagent.process import CommandResult, CommandRunner, run_command

if TYPE_CHECKING:
    from tenacity import Retrying

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    """Normalised job state. The values are Slurm's long state names; each backend maps its own
    states onto these (Slurm: ``slurm_parse.slurm_state``; Grid Engine: ``gridengine``)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    REQUEUED = "REQUEUED"
    SUSPENDED = "SUSPENDED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """The job has ended and will not run again by itself."""
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """The job is queued, running, or will run again (requeued, suspended)."""
        return self in _ACTIVE

    @property
    def is_success(self) -> bool:
        """Only COMPLETED is success (Slurm can report TIMEOUT with exit code 0)."""
        return self is JobState.COMPLETED


#: Job ends that the scheduler caused (not the job's own exit nor a cancel).
KILLED_BY_SCHEDULER = frozenset(
    {
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        # A preempted job that is requeued goes back to PENDING; PREEMPTED as a final record
        # means it was cancelled by preemption (Slurm: PreemptMode=CANCEL or --no-requeue).
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)
_TERMINAL = KILLED_BY_SCHEDULER | {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
_ACTIVE = frozenset(
    {
        JobState.PENDING,
        JobState.CONFIGURING,
        JobState.RUNNING,
        JobState.COMPLETING,
        JobState.REQUEUED,
        JobState.SUSPENDED,
    }
)


@dataclass(frozen=True)
class JobStatus:
    """What the scheduler says about one job.

    ``exit_code``/``signal`` are None when unknown (e.g. still running, or no accounting).
    ``cancelled_by`` is the uid from ``CANCELLED by N``. ``source`` names where the answer came
    from: squeue, sacct, scontrol, cache (last known state, the controller did not answer),
    none (found nowhere) or local.
    """

    job_id: str
    state: JobState
    raw_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""
    cancelled_by: str | None = None
    name: str = ""
    source: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def is_active(self) -> bool:
        return self.state.is_active


class ParsedRow(Protocol):
    """What a backend's parser makes of one printed job row (read-only view)."""

    @property
    def state(self) -> JobState: ...
    @property
    def raw_state(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def signal(self) -> int | None: ...
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...


def status_from_row(
    job_id: str, row: ParsedRow, *, nodes: str, cancelled_by: str | None = None
) -> JobStatus:
    """The status of ``job_id`` as told by the row a backend's aggregation chose (its state,
    reason and exit code), with the nodes of all the job's rows."""
    return JobStatus(
        job_id=job_id,
        state=row.state,
        raw_state=row.raw_state,
        reason=row.reason,
        exit_code=row.exit_code,
        signal=row.signal,
        nodes=nodes,
        cancelled_by=cancelled_by,
        name=row.name,
        source=row.source,
    )


def unknown_status(job_id: str, reason: str, source: str = "none") -> JobStatus:
    """The status of a job that could not be found."""
    return JobStatus(job_id=job_id, state=JobState.UNKNOWN, reason=reason, source=source)


#: The job record on a task, ``hyperparams.properties`` items the submitter writes (upserted
#: item by item) and the executor reads: job id, backend name, queue, submitter worker, nodes.
PROP_JOB_ID = "job-id"
PROP_SCHEDULER = "job-scheduler"
PROP_QUEUE = "job-queue"
PROP_WORKER = "job-worker"
PROP_NODES = "job-nodes"
#: How the job ended, written by the submitter once it saw the end (any task status): the final
#: state (``COMPLETED``, ``FAILED (exit code 1)``, ``TIMEOUT``, ``LOST``), the job's output file
#: and its last lines (the web UI's Info tab shows them; the server cannot read the cluster).
PROP_END = "job-end"
PROP_OUTPUT = "job-output"
PROP_OUTPUT_TAIL = "job-output-tail"
#: The ``runtime`` keys the executor writes inside a job (docs/structure.md, "Who writes what").
RUNTIME_JOB_ID = "job_id"
RUNTIME_SCHEDULER = "job_scheduler"
RUNTIME_NODES = "job_nodes"
#: Names that tasks submitted by older versions carry: read, never written.
LEGACY_PROP_JOB_ID = "slurm-job-id"
LEGACY_RUNTIME_JOB_ID = "slurm_job_id"


@dataclass(frozen=True)
class JobIdentity:
    """The job a process runs in, as its scheduler's environment variables tell it.

    ``scheduler`` is the backend's registry name, ``job_id`` the id that backend's ``submit``
    returned (and the submitter recorded on the task), ``nodes`` the node list ("" when the
    scheduler does not tell), ``rank`` this process's rank among the job's processes when the
    scheduler starts several (Slurm's ``srun``), else None.
    """

    scheduler: str
    job_id: str
    nodes: str = ""
    rank: int | None = None


def env_int(env: Mapping[str, str], name: str) -> int | None:
    """``env[name]`` as an int; None when unset or not a number."""
    try:
        return int(env.get(name, ""))
    except ValueError:
        return None


#: Variables that carry credentials (the layered configuration reads them: config/loader.py).
SECRET_ENV = frozenset(
    {
        "CLEARML_API_ACCESS_KEY",
        "CLEARML_API_SECRET_KEY",
        "CLEARML_AGENT_GIT_USER",
        "CLEARML_AGENT_GIT_PASS",
        "HPCAGENT_SERVER_ACCESS_KEY",
        "HPCAGENT_SERVER_SECRET_KEY",
    }
)
_SECRET_WORDS = ("SECRET", "PASS", "TOKEN", "CREDENTIAL", "ACCESS_KEY")


def is_secret_env(name: str) -> bool:
    """A credential: one of :data:`SECRET_ENV`, or a ``CLEARML_AGENT__…`` override of a key
    whose name says it is one (``…__SECRET_KEY``, ``…__GIT_PASS``, ``…__TOKEN``)."""
    if name in SECRET_ENV:
        return True
    return name.startswith("CLEARML_AGENT__") and any(w in name for w in _SECRET_WORDS)


class Scheduler(abc.ABC):
    """Submit, track and cancel batch jobs. See the module docstring for the contract."""

    #: The registry name (``--scheduler NAME``; the entry point's name).
    name: ClassVar[str]
    #: How messages name one job ("slurm job 42").
    job_label: ClassVar[str]
    #: ``--scheduler auto`` picks the available backend with the highest priority.
    auto_priority: ClassVar[int] = 0
    #: Prefixes of the variables the scheduler sets in a job (see :meth:`clean_env`).
    job_env_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Variables with those prefixes that are configuration, not the job's (``SLURM_CONF``).
    job_env_keep: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def available(cls, env: Mapping[str, str]) -> bool:
        """Whether this scheduler can be used here (its submit command is on ``env``'s PATH)."""

    @classmethod
    @abc.abstractmethod
    def create(cls, *, state_dir: Path) -> Scheduler:
        """The backend as ``hpcagent-slurm`` runs it (``state_dir``: the submitter's folder)."""

    @classmethod
    @abc.abstractmethod
    def job_identity(cls, env: Mapping[str, str]) -> JobIdentity | None:
        """The job this process runs in, from the variables this scheduler sets; None when
        ``env`` is not one of its jobs."""

    def never_runs(self, status: JobStatus) -> bool:
        """Whether ``status`` is a pending job this scheduler will never start as it was asked
        (the submitter fails its task and cancels it after ``slurm.never_runs_fail_sec``).
        False unless the backend knows such reasons (the default)."""
        return False

    @classmethod
    def cancel_own_job(cls, job: JobIdentity) -> bool:
        """Cancel ``job``, the job this process runs in (the executor, after it stopped an
        aborted task and reported it, so that the scheduler records the job as cancelled, not
        completed). False when this backend does not (the default)."""
        return False

    @classmethod
    def clean_env(cls, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``environ`` (default: this process's) without the variables this scheduler
        sets in a job (``job_env_prefixes`` except ``job_env_keep``) and without hpcagent's and
        ClearML's credentials (:func:`is_secret_env`): what the backend's commands get, so what
        a job inherits (sbatch/qsub export it, and Slurm keeps it with the job). A job reads
        its credentials from the 0600 configuration file that ``CLEARML_CONFIG_FILE`` names."""
        src = os.environ if environ is None else environ
        return {
            k: v
            for k, v in src.items()
            if (k in cls.job_env_keep or not k.startswith(cls.job_env_prefixes))
            and not is_secret_env(k)
        }

    @abc.abstractmethod
    def output_path(
        self, job_id: str, *, job_name: str, script: str, submit_dir: Path
    ) -> Path | None:
        """Where job ``job_id`` writes its stdout (``script``: the submitted script's text;
        ``submit_dir``: the folder the submit command ran in); None when unknown."""

    @abc.abstractmethod
    def submit(self, script_path: Path, *, job_name: str) -> str:
        """Submit ``script_path`` under ``job_name``; return the job id."""

    @abc.abstractmethod
    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Return the status of every requested job (UNKNOWN when not found)."""

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel the jobs; jobs that already ended are not an error."""

    @abc.abstractmethod
    def find_by_name(self, name: str) -> list[str]:
        """Ids of the jobs named ``name`` (oldest first)."""


class CommandScheduler(Scheduler):
    """A backend driven by command-line tools (Slurm, Grid Engine): the one place that runs
    them through ``runner`` (the subprocess seam), says which failures are transient, retries
    a submit and remembers the states it saw.

    ``submit_attempts`` / ``backoff_*`` bound the retries of transient failures; ``user`` is
    whose jobs the status commands list; ``env`` (default: this process's) is cleaned by
    :meth:`Scheduler.clean_env` before the commands get it.
    """

    def __init__(
        self,
        *,
        runner: CommandRunner = run_command,
        command_timeout_s: float = 60.0,
        submit_attempts: int = 5,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._run_cmd = runner
        self.command_timeout_s = command_timeout_s
        self.submit_attempts = max(1, submit_attempts)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.user = user or getpass.getuser()
        self._env = self.clean_env(env)
        #: Terminal states (never asked again) and the last state seen of every job.
        self._final: dict[str, JobStatus] = {}
        self._last: dict[str, JobStatus] = {}

    def _call(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: str | None = None
    ) -> CommandResult:
        """One command; a timeout is transient, a command that cannot start a
        :class:`SchedulerError` (the scheduler's callers classify only those)."""
        try:
            return self._run_cmd(
                argv, timeout=self.command_timeout_s, env=env or self._env, input=stdin
            )
        except SchedulerError:
            raise
        except CommandTimeout as exc:
            raise TransientSchedulerError(str(exc), stderr=exc.stderr, argv=exc.argv) from exc
        except CommandError as exc:
            raise SchedulerError(str(exc), stderr=exc.stderr, argv=exc.argv) from exc

    def _retrying(self, attempts: int | None = None) -> Retrying:
        """Retries of :class:`TransientSchedulerError` only (default ``submit_attempts``), with
        random exponential backoff between ``backoff_initial_s`` and ``backoff_max_s``."""
        # Imported here: the executor loads the backends for their job identity only.
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_random_exponential,
        )

        return Retrying(
            stop=stop_after_attempt(attempts or self.submit_attempts),
            wait=wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
            retry=retry_if_exception_type(TransientSchedulerError),
            reraise=True,
        )

    def _submit_adopting(
        self,
        command: str,
        job_name: str,
        once: Callable[[], str],
        live_ids: Callable[[], list[str]],
        attempts: int | None = None,
    ) -> str:
        """``once()`` (one submit, returning the job id) with retries of transient failures;
        before every retry the job is looked up by name (``live_ids()``, oldest first), so a
        submit whose answer was lost after the scheduler accepted the job does not create a
        second job: the newest such job is adopted."""
        for attempt in self._retrying(attempts):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    live = live_ids()
                    if live:
                        log.warning(
                            "%s for %s failed transiently but job %s exists; adopting it",
                            command,
                            job_name,
                            live[-1],
                        )
                        return live[-1]
                return once()
        raise AssertionError("unreachable")  # pragma: no cover - Retrying reraises

    def _remember(self, result: dict[str, JobStatus], st: JobStatus) -> None:
        """Put ``st`` in ``result`` and remember it (for good once terminal)."""
        result[st.job_id] = st
        self._last[st.job_id] = st
        if st.is_terminal:
            self._final[st.job_id] = st
