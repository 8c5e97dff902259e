"""GridEngineScheduler: qsub / qstat / qacct / qdel behind the Scheduler interface.

Grid Engine (Son of Grid Engine 8.1, as Debian ships it in ``gridengine-*``). One module: the
argv builders, the parsers of what the commands print, the state table and the backend.

* submit: ``qsub -terse -N NAME [qsub_args]`` with the script on stdin (its ``#$`` lines apply;
  options on the command line win), preceded by :data:`PRIVATE_OUTPUT` right after its ``#!``
  line. ``-terse`` prints the job id (``123``, or ``123.1-5:1`` for an array). Transient failures
  (qmaster unreachable) are retried; before a retry the job is looked up by name, so a qsub whose
  answer was lost does not create a second job.
* private output: sge_shepherd opens the job's output files itself, with ``umask(022)`` and mode
  0644, whatever the submitter's umask (Son of Grid Engine's ``builtin_starter.c``); qsub has no
  option for it. So the job's first lines (:data:`PRIVATE_OUTPUT`) set ``umask 077`` and move
  each output file to a new 0600 file at the same path, then write there: anyone who opened the
  0644 file in the moment before keeps an empty, unlinked file.
* status: one ``qstat -u USER -xml`` for every job not yet known to be finished; a job that has
  left qstat is looked up once with ``qacct -j ID`` (its accounting record). The record is written
  when the execution daemon reports the end and qmaster flushes (``reporting_params
  flush_time``), so until it appears the last known state is returned (source ``cache``), for
  at most ``accounting_grace_s``; then the job is UNKNOWN, never a success.
* cancel: ``qdel ID ...``; "does not exist" (already gone) is not an error.

State mapping (qstat's state letters): ``E`` (``Eqw``: the job cannot start, e.g. its output
file cannot be opened) → FAILED; ``d`` (deletion asked) → COMPLETING; ``s``/``S``/``T`` →
SUSPENDED; ``r``/``R`` → RUNNING; ``t`` → CONFIGURING; ``qw``/``hqw`` → PENDING. qacct:
``failed 0`` with ``exit_status 0`` → COMPLETED; ``failed 37`` (h_rt/h_cpu/h_vmem enforced) →
TIMEOUT; any other ``failed`` or a non-zero ``exit_status`` → FAILED (``exit_status`` > 128 is
the signal + 128). A job deleted while pending has no accounting record (UNKNOWN).
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hpcagent.errors import SchedulerError, SubmitError, SubmitLimitError, TransientSchedulerError
from hpcagent.process import CommandResult, CommandRunner, run_command
from hpcagent.scheduler.base import (
    CommandScheduler,
    JobIdentity,
    JobState,
    JobStatus,
    status_from_row,
    unknown_status,
)

log = logging.getLogger(__name__)

#: stderr fragments of an unreachable or overloaded qmaster: retrying may help.
TRANSIENT_PATTERNS = (
    "unable to contact qmaster",
    "unable to send message to qmaster",
    "commlib error",
    "failed receiving gdi request",
    "got send error",
    "connection refused",
)
#: stderr fragments of a per-user job limit (``max_u_jobs``, ``max_jobs``): retry later.
LIMIT_PATTERNS = ("jobs are allowed per user", "only allowed to have", "max_u_jobs", "max_jobs")
_GONE_PATTERNS = ("does not exist", "not found")
_TERSE_ID = re.compile(r"^\s*(\d+)(?:\.\S+)?\s*$")
_FAILED_TIMEOUT = 37  # "qmaster enforced h_rt, h_cpu, or h_vmem limit"
_DIRECTIVE = re.compile(r"^#\$\s*(.*)$", re.MULTILINE)


_NAME_UNSAFE = re.compile(r"[\s/:@\\*?]")

#: The first lines of every job (POSIX sh, after the script's ``#!`` line): owner-only output.
#: ``umask 077`` for all the job creates; ``SGE_STDOUT_PATH``/``SGE_STDERR_PATH`` (the files
#: sge_shepherd opened as 0644, the same path under ``-j y``) are copied to a 0600 file that
#: replaces them (content of earlier runs kept, as Grid Engine appends) and the job's stdout and
#: stderr reopened there. Not a regular file (``/dev/null``), a link or no copy possible: left
#: as it is.
PRIVATE_OUTPUT = """\
# hpcagent: this job's output is readable by its user only (Grid Engine creates it 0644).
umask 077
hpcagent_private() {
  [ -f "$1" ] && [ ! -L "$1" ] || return 1
  { cat -- "$1" >"$1.$$.private" && mv -f -- "$1.$$.private" "$1"; } 2>/dev/null && return 0
  rm -f -- "$1.$$.private"; return 1
}
if hpcagent_private "${SGE_STDOUT_PATH:-}"; then
  exec >>"$SGE_STDOUT_PATH"
  if [ "${SGE_STDERR_PATH:-}" = "$SGE_STDOUT_PATH" ]; then exec 2>&1; fi
fi
if [ "${SGE_STDERR_PATH:-}" != "${SGE_STDOUT_PATH:-}" ] && hpcagent_private "$SGE_STDERR_PATH"
then exec 2>>"$SGE_STDERR_PATH"; fi
unset -f hpcagent_private
"""


def ge_job_name(name: str) -> str:
    """The Grid Engine name for the submitter's job ``name``: Grid Engine refuses a name that
    starts with a digit ("is not a valid object name") or holds whitespace, ``/:@\\*?``, so such
    a name gets a ``t`` in front and ``_`` for those characters. The same name always maps to
    the same Grid Engine name (submit, find by name and the output file agree)."""
    safe = _NAME_UNSAFE.sub("_", name)
    return f"t{safe}" if safe[:1].isdigit() or not safe else safe


def private_script(text: str) -> str:
    """The job script ``text`` with :data:`PRIVATE_OUTPUT` after its ``#!`` line (first without
    one). qsub reads ``#$`` lines anywhere in a script, so they still apply."""
    first, _, rest = text.partition("\n")
    if first.startswith("#!"):
        return f"{first}\n{PRIVATE_OUTPUT}{rest}"
    return PRIVATE_OUTPUT + text


def is_transient(stderr: str) -> bool:
    low = stderr.lower()
    return any(p in low for p in TRANSIENT_PATTERNS)


def parse_qsub_terse(stdout: str) -> str | None:
    """The job id from ``qsub -terse`` (``123``; an array's ``123.1-5:1`` gives ``123``)."""
    for line in stdout.splitlines():
        m = _TERSE_ID.match(line)
        if m:
            return m.group(1)
    return None


def qstat_state(letters: str) -> JobState:
    """qstat's state letters (``qw``, ``hqw``, ``r``, ``Rr``, ``t``, ``s``, ``dr``, ``Eqw``...)."""
    if "E" in letters:
        return JobState.FAILED
    if "d" in letters:
        return JobState.COMPLETING
    if any(c in letters for c in "sST"):
        return JobState.SUSPENDED
    if "r" in letters:
        return JobState.RUNNING
    if "t" in letters:
        return JobState.CONFIGURING
    if "q" in letters or "w" in letters:
        return JobState.PENDING
    log.warning("unknown Grid Engine job state %r; treating it as UNKNOWN", letters)
    return JobState.UNKNOWN


@dataclass(frozen=True)
class GeRow:
    """One job (or array task) as qstat or qacct printed it."""

    job_id: str
    name: str
    raw_state: str
    state: JobState
    node: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    source: str = ""


def parse_qstat_xml(xml_text: str) -> list[GeRow]:
    """``qstat -xml``: running jobs under ``queue_info``, pending ones under ``job_info``."""
    if not xml_text.strip():
        return []
    import xml.etree.ElementTree as ET  # here: the executor loads this module, never parses

    root = ET.fromstring(xml_text)  # noqa: S314 - qstat's own output, not user input
    rows: list[GeRow] = []
    for job in root.iter("job_list"):
        letters = (job.findtext("state") or "").strip()
        queue = (job.findtext("queue_name") or "").strip()
        state = qstat_state(letters)
        rows.append(
            GeRow(
                job_id=(job.findtext("JB_job_number") or "").strip(),
                name=(job.findtext("JB_name") or "").strip(),
                raw_state=letters,
                state=state,
                node=queue.split("@", 1)[1] if "@" in queue else "",
                reason="error state: qstat -j shows the error reason" if "E" in letters else "",
                source="qstat",
            )
        )
    return rows


def parse_qacct(stdout: str) -> list[GeRow]:
    """``qacct -j ID|NAME``: one record per job (per task of an array), ``=====`` between."""
    rows: list[GeRow] = []
    for block in re.split(r"^=+\s*$", stdout, flags=re.MULTILINE):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key:
                fields.setdefault(key, value.strip())
        if "jobnumber" not in fields:
            continue
        failed_text = fields.get("failed", "0")
        failed = int(failed_text.split(":", 1)[0].strip() or 0)
        status = int((fields.get("exit_status", "0").split() or ["0"])[0])
        code, sig = (status, None) if status <= 128 else (status, status - 128)
        if failed == _FAILED_TIMEOUT:
            state, reason = JobState.TIMEOUT, failed_text.split(":", 1)[-1].strip()
        elif failed:
            state, reason = JobState.FAILED, failed_text.split(":", 1)[-1].strip()
        else:
            state = JobState.COMPLETED if status == 0 else JobState.FAILED
            reason = "" if status == 0 else "NonZeroExitCode"
        rows.append(
            GeRow(
                job_id=fields["jobnumber"],
                name=fields.get("jobname", ""),
                raw_state=f"failed {failed_text}; exit_status {status}",
                state=state,
                node=fields.get("hostname", ""),
                reason=reason,
                exit_code=code,
                signal=sig,
                source="qacct",
            )
        )
    return rows


def aggregate(job_id: str, rows: Sequence[GeRow]) -> JobStatus:
    """One status from a job's rows (several for an array): active while any task is, else
    the first task that did not complete decides."""
    active = [r for r in rows if r.state.is_active]
    not_done = [r for r in rows if r.state is not JobState.COMPLETED]
    chosen = (active or not_done or list(rows))[0]
    nodes = ",".join(dict.fromkeys(r.node for r in rows if r.node))
    return status_from_row(job_id, chosen, nodes=nodes)


def _directives(script: str) -> list[str]:
    """The words of the script's ``#$`` lines, in order."""
    words: list[str] = []
    for m in _DIRECTIVE.finditer(script):
        try:
            words.extend(shlex.split(m.group(1), comments=True))
        except ValueError:
            continue
    return words


class GridEngineScheduler(CommandScheduler):
    """Grid Engine through qsub/qstat/qacct/qdel, all run via ``runner`` (hpcagent.process)."""

    name = "gridengine"
    job_label = "gridengine job"
    auto_priority = 10
    #: What sge_shepherd sets in a job (SGE_ROOT/SGE_CELL are the cell's, kept).
    job_env_prefixes = (
        "JOB_ID",
        "JOB_NAME",
        "JOB_SCRIPT",
        "SGE_TASK_",
        "SGE_JOB_",
        "SGE_STD",
        "SGE_O_",
        "SGE_CWD_PATH",
        "PE_HOSTFILE",
        "NHOSTS",
        "NSLOTS",
        "NQUEUES",
        "RESTARTED",
    )

    def __init__(
        self,
        *,
        runner: CommandRunner = run_command,
        command_timeout_s: float = 60.0,
        submit_attempts: int = 5,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        qsub_args: Sequence[str] = (),
        user: str | None = None,
        accounting_grace_s: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            runner=runner,
            command_timeout_s=command_timeout_s,
            submit_attempts=submit_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            user=user,
            env=env,
        )
        self.qsub_args = list(qsub_args)
        self.accounting_grace_s = accounting_grace_s
        self._departed: dict[str, float] = {}

    # ------------------------------------------------------------------ the backend
    @classmethod
    def available(cls, env: Mapping[str, str]) -> bool:
        """qsub and qconf on PATH (qconf tells Grid Engine from PBS, which has a qsub too)."""
        path = env.get("PATH")
        return all(shutil.which(p, path=path) for p in ("qsub", "qconf"))

    @classmethod
    def create(cls, *, state_dir: Path) -> GridEngineScheduler:
        return cls()

    @classmethod
    def job_identity(cls, env: Mapping[str, str]) -> JobIdentity | None:
        """``JOB_ID`` in a job started by sge_shepherd (``SGE_JOB_SPOOL_DIR`` set); the nodes
        are the hosts of ``PE_HOSTFILE`` (a parallel job), else ``HOSTNAME``. Grid Engine gives
        no per-process rank (None: the launcher's ``RANK`` applies)."""
        job = env.get("JOB_ID", "")
        if not job or not env.get("SGE_JOB_SPOOL_DIR"):
            return None
        nodes = env.get("HOSTNAME", "")
        hostfile = env.get("PE_HOSTFILE", "")
        if hostfile:
            try:
                hosts = [ln.split()[0] for ln in Path(hostfile).read_text().splitlines() if ln]
                nodes = ",".join(dict.fromkeys(hosts)) or nodes
            except OSError:
                pass
        return JobIdentity(cls.name, job, nodes, None)

    def output_path(
        self, job_id: str, *, job_name: str, script: str, submit_dir: Path
    ) -> Path | None:
        """``#$ -o PATH`` (a folder gets ``NAME.oID``; ``$JOB_ID``, ``$JOB_NAME``, ``$USER``,
        ``$HOME`` replaced), relative to the job's folder: ``-wd DIR``, ``-cwd`` (the folder qsub
        ran in) or the home folder; without ``-o``: ``<job folder>/NAME.oID``."""
        words = _directives(script)
        home = Path.home()
        workdir, out = home, ""
        for i, word in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if word == "-cwd":
                workdir = submit_dir
            elif word == "-wd" and nxt:
                workdir = Path(nxt)
            elif word == "-o" and nxt:
                out = nxt.split(",", 1)[0]
                out = out.split(":", 1)[1] if re.match(r"^[^/]*:", out) else out
        job_name = ge_job_name(job_name)
        default = f"{job_name}.o{job_id}"
        if not out:
            return workdir / default
        subs = {"JOB_ID": job_id, "JOB_NAME": job_name, "USER": self.user, "HOME": str(home)}
        out = re.sub(r"\$(\w+)", lambda m: subs.get(m.group(1), m.group(0)), out)
        path = Path(out) if Path(out).is_absolute() else workdir / out
        return path / default if path.is_dir() else path

    # ------------------------------------------------------------------ plumbing
    def _run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        return self._call(argv, stdin=stdin)

    def _qstat(self) -> list[GeRow]:
        res = self._run(["qstat", "-u", self.user, "-xml"])
        if not res.ok:
            err = res.stderr.strip() or f"qstat exited {res.returncode}"
            if is_transient(res.stderr):
                raise TransientSchedulerError(f"qstat: {err}", stderr=res.stderr)
            raise SchedulerError(f"qstat failed: {err}", stderr=res.stderr)
        from xml.etree.ElementTree import ParseError

        try:
            return parse_qstat_xml(res.stdout)
        except ParseError as exc:
            raise SchedulerError(f"qstat printed no XML: {exc}", stderr=res.stderr) from exc

    def _qacct(self, job: str) -> list[GeRow]:
        """The accounting records of ``job`` (an id or a name); [] when it has none yet."""
        res = self._run(["qacct", "-o", self.user, "-j", job])
        if res.ok:
            return parse_qacct(res.stdout)
        if "not found" in res.stderr.lower():
            return []
        raise SchedulerError(f"qacct failed: {res.stderr.strip()}", stderr=res.stderr)

    # ------------------------------------------------------------------ submit
    def submit(self, script_path: Path, *, job_name: str) -> str:
        """``qsub`` of the script under :func:`ge_job_name` of ``job_name``, its output made
        private by :func:`private_script` (see the module docstring)."""
        job_name = ge_job_name(job_name)
        try:
            script = private_script(script_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise SubmitError(f"cannot read the job script {script_path}: {exc}") from exc
        argv = ["qsub", "-terse", "-N", job_name, *self.qsub_args]  # no script: stdin
        return self._submit_adopting(
            "qsub",
            job_name,
            lambda: self._qsub_once(argv, script),
            lambda: [r.job_id for r in self._qstat() if r.name == job_name],
        )

    def _qsub_once(self, argv: Sequence[str], script: str) -> str:
        res = self._run(argv, script)
        job = parse_qsub_terse(res.stdout)
        if res.ok and job is not None:
            return job
        err = (res.stderr.strip() or res.stdout.strip()) or f"qsub exited {res.returncode}"
        err = err.replace("\nExiting.", "").strip()
        if res.ok:
            raise SubmitError(f"qsub printed no job id: {err}", stderr=res.stderr, returncode=0)
        low = res.stderr.lower()
        if is_transient(res.stderr):
            raise TransientSchedulerError(
                f"qsub: {err}", stderr=res.stderr, returncode=res.returncode
            )
        if any(p in low for p in LIMIT_PATTERNS):
            raise SubmitLimitError(f"qsub: {err}", stderr=res.stderr, returncode=res.returncode)
        raise SubmitError(
            f"qsub rejected the job: {err}", stderr=res.stderr, returncode=res.returncode
        )

    # ------------------------------------------------------------------ find
    def find_by_name(self, name: str) -> list[str]:
        """Ids of this user's jobs named ``name`` (:func:`ge_job_name`), oldest first: qstat,
        then qacct."""
        name = ge_job_name(name)
        ids = {r.job_id for r in self._qstat() if r.name == name}
        ids.update(r.job_id for r in self._qacct(name) if r.name == name)
        return sorted(ids, key=lambda s: (int(s) if s.isdigit() else 0, s))

    # ------------------------------------------------------------------ status
    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = list(dict.fromkeys(str(j).split(".", 1)[0] for j in job_ids))
        result = {j: self._final[j] for j in wanted if j in self._final}
        todo = [j for j in wanted if j not in result]
        if not todo:
            return result
        try:
            rows = self._qstat()
        except SchedulerError as exc:
            log.warning(
                "qstat failed (%s); keeping the last known states of %d jobs", exc, len(todo)
            )
            for j in todo:
                result[j] = self._cached(j, f"qmaster did not answer: {exc}")
            return result
        by_id: dict[str, list[GeRow]] = {}
        for r in rows:
            by_id.setdefault(r.job_id, []).append(r)
        for j in todo:
            if j in by_id:
                self._departed.pop(j, None)
                self._remember(result, aggregate(j, by_id[j]))
            else:
                result[j] = self._departed_status(j)
        return {j: result[j] for j in wanted}

    def _departed_status(self, job: str) -> JobStatus:
        """A job not in qstat: its accounting record, else (while the record may still come)
        the last known state, else UNKNOWN."""
        try:
            rows = self._qacct(job)
        except SchedulerError as exc:
            log.warning("qacct failed (%s); keeping the last known state of job %s", exc, job)
            return self._cached(job, f"qacct failed: {exc}")
        if rows:
            st = aggregate(job, rows)
            self._last[job] = self._final[job] = st
            return st
        since = self._departed.setdefault(job, time.monotonic())
        if time.monotonic() - since < self.accounting_grace_s and job in self._last:
            return self._cached(job, "")
        return unknown_status(job, "job not found in qstat or qacct")

    def _cached(self, job: str, reason: str) -> JobStatus:
        last = self._last.get(job)
        if last is not None:
            return replace(last, source="cache")
        return unknown_status(job, reason or "no state known yet", "cache")

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_ids: Sequence[str]) -> None:
        """One ``qdel`` for all; ids that no longer exist are fine."""
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        if not ids:
            return
        res = self._run(["qdel", *ids])
        if res.ok:
            return
        lines = [ln for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
        if is_transient(res.stderr):
            raise TransientSchedulerError(f"qdel: {res.stderr.strip()}", stderr=res.stderr)
        real = [
            ln
            for ln in lines
            if not any(p in ln.lower() for p in _GONE_PATTERNS)
            and "deleted" not in ln.lower()
            and "registered" not in ln.lower()
        ]
        if real:
            raise SchedulerError(f"qdel failed: {'; '.join(real)}", stderr=res.stderr)
