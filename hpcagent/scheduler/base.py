"""The scheduler interface shared by Slurm and the local (no-Slurm) scheduler.

Contract:

* ``submit(script_path, *, job_name) -> job_id``: hand one script to the scheduler. Raises
  :class:`~hpcagent.errors.SubmitError` (rejected; ``stderr`` holds the scheduler's words),
  :class:`~hpcagent.errors.SubmitLimitError` (a per-user job limit; retry later) or
  :class:`~hpcagent.errors.TransientSchedulerError` (still failing after retries).
* ``status(job_ids) -> {job_id: JobStatus}``: one entry per requested id, always. A job the
  scheduler knows nothing about is ``JobState.UNKNOWN``, never a success.
* ``cancel(job_ids)``: ask for cancellation; ids that are already gone are not an error.
* ``find_by_name(name) -> [job_id, ...]``: jobs with that exact name (re-adoption after a restart).

Only ``JobState.COMPLETED`` means success. ``UNKNOWN`` is neither active nor terminal: callers
decide how long to wait before they call such a job lost.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    """Normalised job state. Values are Slurm's long state names."""

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

    @classmethod
    def from_slurm(cls, raw: str) -> JobState:
        """Translate a Slurm state (long name, short code, or ``CANCELLED by 0``).

        Unknown strings become UNKNOWN with a warning, so a new Slurm state never reads as success.
        """
        word = raw.strip().split(" ", 1)[0].rstrip("+").upper()
        if not word:
            return cls.UNKNOWN
        state = SLURM_STATE_TABLE.get(word) or SLURM_SHORT_STATE_TABLE.get(word)
        if state is None:
            log.warning("unknown Slurm job state %r; treating it as UNKNOWN", raw)
            return cls.UNKNOWN
        return state


#: Job ends that Slurm caused (not the job's own exit nor a cancel).
SLURM_KILLED = frozenset(
    {
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        # A preempted job that Slurm requeues goes back to PENDING; PREEMPTED as a final record
        # means it was cancelled by preemption (PreemptMode=CANCEL or --no-requeue).
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)
_TERMINAL = SLURM_KILLED | {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
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

#: Slurm's long state names (squeue %T / -O State, sacct State, scontrol JobState).
SLURM_STATE_TABLE: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.CONFIGURING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.COMPLETING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "BOOT_FAIL": JobState.BOOT_FAIL,
    "DEADLINE": JobState.DEADLINE,
    "REQUEUED": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "SUSPENDED": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.COMPLETING,
    "RESV_DEL_HOLD": JobState.PENDING,
    # SPECIAL_EXIT: requeued in a held state after a special exit code; it ran and failed.
    "SPECIAL_EXIT": JobState.FAILED,
    # REVOKED: a federated sibling was removed because another cluster runs the job.
    "REVOKED": JobState.CANCELLED,
}

#: squeue's compact codes (%t / StateCompact).
SLURM_SHORT_STATE_TABLE: dict[str, JobState] = {
    "PD": JobState.PENDING,
    "CF": JobState.CONFIGURING,
    "R": JobState.RUNNING,
    "CG": JobState.COMPLETING,
    "CD": JobState.COMPLETED,
    "F": JobState.FAILED,
    "CA": JobState.CANCELLED,
    "TO": JobState.TIMEOUT,
    "OOM": JobState.OUT_OF_MEMORY,
    "NF": JobState.NODE_FAIL,
    "PR": JobState.PREEMPTED,
    "BF": JobState.BOOT_FAIL,
    "DL": JobState.DEADLINE,
    "RQ": JobState.REQUEUED,
    "RH": JobState.REQUEUED,
    "RF": JobState.REQUEUED,
    "S": JobState.SUSPENDED,
    "ST": JobState.SUSPENDED,
    "RS": JobState.RUNNING,
    "SI": JobState.RUNNING,
    "SO": JobState.COMPLETING,
    "RD": JobState.PENDING,
    "SE": JobState.FAILED,
    "RV": JobState.CANCELLED,
}


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


#: Slurm pending reasons that mean the job, as asked, can never start: it asks for more CPUs,
#: GPUs, memory, nodes or time than the partition or any of its nodes has (with
#: ``EnforcePartLimits=NO`` sbatch accepts such a job and it pends forever), or for an account,
#: QOS or constraint that does not exist. Transient reasons (Resources, Priority, limits on
#: running jobs) are not here.
NEVER_RUNS_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxGRESPerJob",
        "QOSMaxMemoryPerJob",
        "QOSMaxNodePerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
    }
)


def never_runs(js: JobStatus) -> bool:
    """Whether ``js`` is a pending job that Slurm will never start (see
    :data:`NEVER_RUNS_REASONS`)."""
    return js.state is JobState.PENDING and js.reason in NEVER_RUNS_REASONS


def unknown_status(job_id: str, reason: str, source: str = "none") -> JobStatus:
    """The status of a job that could not be found."""
    return JobStatus(job_id=job_id, state=JobState.UNKNOWN, reason=reason, source=source)


class Scheduler(abc.ABC):
    """Submit, track and cancel batch jobs. See the module docstring for the contract."""

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
