"""Pure parsers for Slurm command output (sbatch, squeue, sacct, scontrol), and Slurm's state
tables (:func:`slurm_state`: Slurm's states onto :class:`~hpcagent.scheduler.base.JobState`).

No subprocesses here: the tests feed these functions outputs captured from a real cluster
(``tests/slurm/fixtures``). Field lists are fixed by the argv builders below, so the parser and
the command always agree.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hpcagent.scheduler.base import JobState, JobStatus, status_from_row

log = logging.getLogger(__name__)

#: squeue -O fields. "Field:|" means no width limit, then "|" (name last: it may contain "|").
SQUEUE_FIELDS = ("JobArrayID", "JobID", "State", "Reason", "exit_code", "NodeList", "Name")
SQUEUE_FORMAT = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:"
#: sacct --parsable2 fields (name last, for the same reason).
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason", "NodeList", "JobName")
SACCT_FORMAT = ",".join(SACCT_FIELDS)

_PARSABLE_RE = re.compile(r"^\s*(\d+)(?:;(\S+))?\s*$")
_SUBMITTED_RE = re.compile(r"Submitted batch job (\d+)(?: on cluster (\S+))?")

#: stderr fragments of an overloaded or unreachable controller: retrying may help.
TRANSIENT_PATTERNS = (
    "socket timed out",
    "unable to contact slurm controller",
    "resource temporarily unavailable",
    "connection refused",
    "unexpected message received",
    "zero bytes were transmitted",
    "slurm_receive_msg",
    "communication connection failure",
    "slurmctld is not responding",
    "temporarily unable to accept job",
)
#: stderr fragments of a per-user/association submit limit: back off and resubmit later.
LIMIT_PATTERNS = (
    "maxsubmit",
    "qosmaxsubmitjobperuserlimit",
    "assocmaxsubmitjoblimit",
    "qosmaxjobsperuserlimit",
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


def slurm_state(raw: str) -> JobState:
    """Translate a Slurm state (long name, short code, or ``CANCELLED by 0``).

    Unknown strings become UNKNOWN with a warning, so a new Slurm state never reads as success.
    """
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    if not word:
        return JobState.UNKNOWN
    state = SLURM_STATE_TABLE.get(word) or SLURM_SHORT_STATE_TABLE.get(word)
    if state is None:
        log.warning("unknown Slurm job state %r; treating it as UNKNOWN", raw)
        return JobState.UNKNOWN
    return state


def parse_sbatch_output(stdout: str) -> tuple[str, str | None] | None:
    """Return ``(job_id, cluster)`` from ``sbatch --parsable`` output, or None.

    Accepts ``id`` / ``id;cluster`` on a line of its own and, for site wrappers that print more,
    ``Submitted batch job N [on cluster C]`` anywhere.
    """
    for line in stdout.splitlines():
        m = _PARSABLE_RE.match(line)
        if m:
            return m.group(1), m.group(2)
    m = _SUBMITTED_RE.search(stdout)
    if m:
        return m.group(1), m.group(2)
    return None


def is_transient(stderr: str) -> bool:
    low = stderr.lower()
    return any(p in low for p in TRANSIENT_PATTERNS)


def is_limit(stderr: str) -> bool:
    low = stderr.lower()
    return any(p in low for p in LIMIT_PATTERNS)


@dataclass(frozen=True)
class SlurmRow:
    """One job (or array task, or het component) as one Slurm command printed it."""

    display_id: str  # 123, 123_4, 123_[1-5%2], 123+0
    raw_id: str  # the unique numeric id of this row
    raw_state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""
    name: str = ""
    source: str = ""

    @property
    def state(self) -> JobState:
        return slurm_state(self.raw_state)

    @property
    def base_id(self) -> str:
        return split_job_id(self.display_id)[0]


def split_job_id(job_id: str) -> tuple[str, str | None, str | None]:
    """``123_4`` -> (123, "4", None); ``123_[1-5]`` -> (123, "[1-5]", None);
    ``123+1`` -> (123, None, "1"); ``123.batch`` -> (123, None, None)."""
    jid = job_id.strip().split(".", 1)[0]
    if "_" in jid:
        base, task = jid.split("_", 1)
        return base, task, None
    if "+" in jid:
        base, offset = jid.split("+", 1)
        return base, None, offset
    return jid, None, None


def expand_array_range(spec: str) -> list[int]:
    """``[1-5,7,10-14:2%4]`` (or without brackets) -> the task ids."""
    body = spec.strip().strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1, step))
        else:
            out.append(int(part))
    return out


def parse_exit_pair(value: str) -> tuple[int | None, int | None]:
    """sacct/scontrol ``ExitCode`` ``N:S`` -> (exit code, signal)."""
    value = value.strip()
    if not value or ":" not in value:
        return (int(value), None) if value.isdigit() else (None, None)
    code, sig = value.split(":", 1)
    try:
        return int(code), int(sig)
    except ValueError:
        return None, None


def parse_wait_status(value: str) -> tuple[int | None, int | None]:
    """squeue ``exit_code``: a raw wait(2) status (768 = exit 3; 9 = killed by SIGKILL)."""
    value = value.strip()
    if not value.lstrip("-").isdigit():
        return None, None
    status = int(value)
    if status < 0:
        return None, None
    return (status >> 8) & 0xFF, status & 0x7F


def cancelled_by(raw_state: str) -> str | None:
    parts = raw_state.split()
    if len(parts) >= 3 and parts[0].upper() == "CANCELLED" and parts[1] == "by":
        return parts[2]
    return None


def parse_squeue(stdout: str) -> list[SlurmRow]:
    rows: list[SlurmRow] = []
    n = len(SQUEUE_FIELDS)
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)
        if len(parts) != n:
            log.warning("unexpected squeue line %r", line)
            continue
        disp, raw, state, reason, status, nodes, name = (p.strip() for p in parts)
        code, sig = parse_wait_status(status)
        terminal = slurm_state(state).is_terminal
        rows.append(
            SlurmRow(
                display_id=disp,
                raw_id=raw,
                raw_state=state,
                reason="" if reason == "None" else reason,
                exit_code=code if terminal else None,
                signal=sig if terminal else None,
                nodes=nodes,
                name=name,
                source="squeue",
            )
        )
    return rows


def parse_sacct(stdout: str) -> list[SlurmRow]:
    rows: list[SlurmRow] = []
    n = len(SACCT_FIELDS)
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)
        if len(parts) != n:
            log.warning("unexpected sacct line %r", line)
            continue
        disp, raw, state, exit_pair, reason, nodes, name = parts
        if "." in disp:  # a step row (123.batch, 123.0): not the job's state
            continue
        code, sig = parse_exit_pair(exit_pair)
        rows.append(
            SlurmRow(
                display_id=disp.strip(),
                raw_id=raw.strip(),
                raw_state=state.strip(),
                reason="" if reason.strip() == "None" else reason.strip(),
                exit_code=code,
                signal=sig,
                nodes="" if nodes.strip() == "None assigned" else nodes.strip(),
                name=name,
                source="sacct",
            )
        )
    return rows


_SCONTROL_KEY_RE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def _scontrol_fields(line: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    matches = list(_SCONTROL_KEY_RE.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        fields.setdefault(m.group(1), line[m.end() : end].strip())
    return fields


def parse_scontrol(stdout: str) -> list[SlurmRow]:
    """``scontrol -o show job [ID]``: one job per line of ``Key=Value`` pairs."""
    rows: list[SlurmRow] = []
    for line in stdout.splitlines():
        if "JobId=" not in line:
            continue
        f = _scontrol_fields(line)
        raw = f.get("JobId", "")
        disp = raw
        if f.get("ArrayJobId") and f.get("ArrayTaskId"):
            disp = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
        elif f.get("HetJobId") and f.get("HetJobOffset"):
            disp = f"{f['HetJobId']}+{f['HetJobOffset']}"
        code, sig = parse_exit_pair(f.get("ExitCode", ""))
        rows.append(
            SlurmRow(
                display_id=disp,
                raw_id=raw,
                raw_state=f.get("JobState", ""),
                reason="" if f.get("Reason", "None") == "None" else f.get("Reason", ""),
                exit_code=code,
                signal=sig,
                nodes="" if f.get("NodeList", "(null)") == "(null)" else f.get("NodeList", ""),
                name=f.get("JobName", ""),
                source="scontrol",
            )
        )
    return rows


class RowIndex:
    """Rows indexed by display id, base id and raw id, so that matching n requested ids against
    n rows costs O(n), not O(n^2) (1,000 live jobs per cycle)."""

    def __init__(self, rows: Iterable[SlurmRow]) -> None:
        self.by_display: dict[str, list[SlurmRow]] = {}
        self.by_base: dict[str, list[SlurmRow]] = {}
        self.by_raw: dict[str, list[SlurmRow]] = {}
        self.ranges: dict[str, list[tuple[str, SlurmRow]]] = {}
        for r in rows:
            base, task, _ = split_job_id(r.display_id)
            self.by_display.setdefault(r.display_id, []).append(r)
            self.by_base.setdefault(base, []).append(r)
            self.by_raw.setdefault(r.raw_id, []).append(r)
            if task is not None and task.startswith("["):
                self.ranges.setdefault(base, []).append((task, r))

    def match(self, job_id: str) -> list[SlurmRow]:
        """The rows that describe ``job_id``: all tasks/components of an array or het job asked
        for by its base id; one task (also from a pending range ``123_[1-5]``); or a raw id."""
        base, task, offset = split_job_id(job_id)
        if task is None and offset is None:
            return list(self.by_base.get(base) or self.by_raw.get(base) or [])
        exact = self.by_display.get(job_id)
        if exact:
            return list(exact)
        if task is not None and task.isdigit():
            for spec, row in self.ranges.get(base, []):
                try:
                    if int(task) in expand_array_range(spec):
                        return [row]
                except ValueError:
                    continue
        return []


def match_rows(job_id: str, rows: Sequence[SlurmRow]) -> list[SlurmRow]:
    """:meth:`RowIndex.match` for a one-off lookup."""
    return RowIndex(rows).match(job_id)


_ACTIVE_PRIORITY = (
    JobState.RUNNING,
    JobState.COMPLETING,
    JobState.CONFIGURING,
    JobState.REQUEUED,
    JobState.SUSPENDED,
    JobState.PENDING,
)


def aggregate(job_id: str, rows: Iterable[SlurmRow]) -> JobStatus:
    """One status for ``job_id`` from its rows (several for arrays and het jobs).

    Active if any part is active; COMPLETED only if every part completed; otherwise the first
    part that did not complete decides (its state, reason and exit code).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("aggregate needs at least one row")
    chosen: SlurmRow | None = None
    states = [r.state for r in rows]
    for wanted in _ACTIVE_PRIORITY:
        if wanted in states:
            chosen = rows[states.index(wanted)]
            break
    if chosen is None:
        not_done = [r for r in rows if r.state is not JobState.COMPLETED]
        chosen = not_done[0] if not_done else rows[0]
    nodes = ",".join(dict.fromkeys(r.nodes for r in rows if r.nodes))
    return status_from_row(job_id, chosen, nodes=nodes, cancelled_by=cancelled_by(chosen.raw_state))


def squeue_argv(job_ids: Sequence[str]) -> list[str]:
    ids = list(job_ids)
    if len(ids) == 1:
        # A single unknown id makes squeue fail ("Invalid job id specified"); a list does not.
        ids = ids * 2
    return [
        "squeue",
        "--noheader",
        "--all",
        "--states=all",
        f"--jobs={','.join(ids)}",
        f"--Format={SQUEUE_FORMAT}",
    ]


def sacct_argv(job_ids: Sequence[str]) -> list[str]:
    return [
        "sacct",
        "-X",
        "--parsable2",
        "--noheader",
        f"--format={SACCT_FORMAT}",
        f"--jobs={','.join(job_ids)}",
    ]
