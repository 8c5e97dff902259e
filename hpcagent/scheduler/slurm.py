"""SlurmScheduler: sbatch / squeue / sacct / scontrol / scancel behind the Scheduler interface.

Tracking costs at most two Slurm commands per :meth:`SlurmScheduler.status` call, whatever the
number of jobs: one batched ``squeue`` for every job not yet known to be finished, and one batched
``sacct -X`` only for the jobs that have left squeue. Finished states are cached and never asked
again. Without accounting (``sacct`` says "accounting storage is disabled") jobs that left squeue
are looked up once with ``scontrol show job``; a job found nowhere is UNKNOWN, never a success.
When the controller does not answer, the last known states are returned (source ``cache``) and a
warning is logged: a long-running submitter must not give up on its jobs because of one bad minute.
"""

from __future__ import annotations

import getpass
import logging
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from hpcagent.errors import (
    SchedulerError,
    SubmitError,
    SubmitLimitError,
    TransientSchedulerError,
)
from hpcagent.outage import Outage
from hpcagent.process import CommandResult, CommandRunner, run_command
from hpcagent.scheduler.base import (
    CommandScheduler,
    JobIdentity,
    JobState,
    JobStatus,
    env_int,
    unknown_status,
)
from hpcagent.scheduler.pacer import TokenBucket
from hpcagent.scheduler.slurm_parse import (
    NEVER_RUNS_REASONS,
    SACCT_FORMAT,
    SQUEUE_FORMAT,
    RowIndex,
    SlurmRow,
    aggregate,
    is_limit,
    is_transient,
    parse_sacct,
    parse_sbatch_output,
    parse_scontrol,
    parse_squeue,
    sacct_argv,
    split_job_id,
    squeue_argv,
)

log = logging.getLogger(__name__)

_ACCOUNTING_DISABLED = "accounting storage is disabled"
#: The umask of a job's output files and of the job itself (owner only).
JOB_UMASK = "0077"
_GONE_PATTERNS = ("invalid job id", "already completing or completed", "job has finished")
_OUTPUT = re.compile(r"^#SBATCH\s+(?:--output[=\s]|-o\s*)(\S+)", re.MULTILINE)
_CHDIR = re.compile(r"^#SBATCH\s+(?:--chdir[=\s]|-D\s*)(\S+)", re.MULTILINE)


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class SlurmScheduler(CommandScheduler):
    """Slurm through its command-line tools, all run via ``runner`` (the subprocess seam).

    ``submit_attempts`` / ``backoff_*`` bound the retries of transient sbatch failures;
    ``rate_limiter`` (optional) is acquired before every Slurm command, which caps the commands
    per minute whatever the number of jobs.
    """

    name = "slurm"
    job_label = "slurm job"
    auto_priority = 20
    # XDG_*/DBUS_* belong to the login session the submitter may run in, not to the job.
    job_env_prefixes = ("SLURM_", "XDG_", "DBUS_")
    job_env_keep = ("SLURM_CONF",)

    @classmethod
    def available(cls, env: Mapping[str, str]) -> bool:
        return shutil.which("sbatch", path=env.get("PATH")) is not None

    @classmethod
    def create(cls, *, state_dir: Path) -> SlurmScheduler:
        return cls()

    @classmethod
    def job_identity(cls, env: Mapping[str, str]) -> JobIdentity | None:
        """``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST`` and ``SLURM_PROCID`` (the srun task rank)."""
        job = env.get("SLURM_JOB_ID", "")
        if not job:
            return None
        return JobIdentity(
            cls.name, job, env.get("SLURM_JOB_NODELIST", ""), env_int(env, "SLURM_PROCID")
        )

    @classmethod
    def cancel_own_job(cls, job: JobIdentity) -> bool:
        """``scancel`` it (one attempt): the job ends ``CANCELLED`` in sacct."""
        cls(submit_attempts=1).cancel([job.job_id])
        return True

    def never_runs(self, status: JobStatus) -> bool:
        """Pending for one of :data:`~hpcagent.scheduler.slurm_parse.NEVER_RUNS_REASONS`."""
        return status.state is JobState.PENDING and status.reason in NEVER_RUNS_REASONS

    def output_path(
        self, job_id: str, *, job_name: str, script: str, submit_dir: Path
    ) -> Path | None:
        """The script's ``#SBATCH --output`` (default ``slurm-%j.out``) with ``%j %x %u ...``
        replaced, relative to ``#SBATCH --chdir`` or the folder sbatch ran in."""
        m = _OUTPUT.search(script)
        pattern = shlex.split(m.group(1))[0] if m else "slurm-%j.out"
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = ""
        subs = {"j": job_id, "J": job_id, "A": job_id, "x": job_name, "u": user, "%": "%"}
        name = re.sub(r"%(\d*)([a-zA-Z%])", lambda mm: subs.get(mm.group(2), mm.group(0)), pattern)
        base = submit_dir
        d = _CHDIR.search(script)
        if d:
            base = Path(shlex.split(d.group(1))[0])
        p = Path(name)
        return p if p.is_absolute() else base / p

    def __init__(
        self,
        *,
        runner: CommandRunner = run_command,
        command_timeout_s: float = 60.0,
        submit_attempts: int = 5,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        rate_limiter: TokenBucket | None = None,
        sbatch_args: Sequence[str] = (),
        user: str | None = None,
        squeue_chunk: int = 2000,
        cancel_chunk: int = 500,
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
        self.rate_limiter = rate_limiter
        self.sbatch_args = list(sbatch_args)
        self.squeue_chunk = squeue_chunk
        self.cancel_chunk = cancel_chunk
        self._gone_noacct: set[str] = set()
        #: None until probed; False once sacct reported that accounting is disabled.
        self.accounting: bool | None = None
        #: cluster name from ``sbatch --parsable`` (federation/multi-cluster), if any.
        self.last_cluster: str | None = None
        #: slurmctld (squeue, sbatch, scancel) and slurmdbd (sacct) as the submitter sees
        #: them: one line when one stops answering, one when it is back (hpcagent.outage).
        self.controller = Outage(
            "slurmctld", log, None, "jobs keep their last known states until it answers"
        )
        self.dbd = Outage(
            "slurmdbd (sacct)", log, None, "finished jobs keep their last known states"
        )

    # ------------------------------------------------------------------ plumbing
    def _run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> CommandResult:
        """One Slurm command; a timeout is transient, a command that cannot start a
        :class:`SchedulerError` (the scheduler's callers classify only those)."""
        if self.rate_limiter is not None:
            self.rate_limiter.acquire()
        return self._call(argv, env)

    # ------------------------------------------------------------------ submit
    def submit(self, script_path: Path, *, job_name: str) -> str:
        """``sbatch --parsable --job-name NAME [sbatch_args] SCRIPT`` with safe retries.

        Before every retry the job is looked up by name, so an sbatch that timed out after the
        controller accepted the job does not create a second job.
        """
        argv = ["sbatch", "--parsable", f"--job-name={job_name}", *self.sbatch_args]
        argv.append(str(script_path))
        # While slurmctld is known to be away one attempt will do: the submitter puts the task
        # back and pauses, instead of spending minutes in retries that cannot succeed.
        return self._submit_adopting(
            "sbatch",
            job_name,
            lambda: self._sbatch_once(argv),
            lambda: self._live_ids_by_name(job_name),
            1 if self.controller.is_down else None,
        )

    def _sbatch_once(self, argv: Sequence[str]) -> str:
        # SLURM_UMASK: the umask slurmstepd creates the job's --output/--error files with
        # (and the job runs with): readable by the submitting user only.
        try:
            res = self._run(argv, {**self._env, "SLURM_UMASK": JOB_UMASK})
        except TransientSchedulerError as exc:
            self.controller.down(_first_line(str(exc)))
            raise
        parsed = parse_sbatch_output(res.stdout)
        if is_transient(res.stderr) and not res.ok:
            self.controller.down(_first_line(res.stderr))
        else:
            self.controller.up()
        if res.ok and parsed is not None:
            if res.stderr.strip():
                log.info("sbatch succeeded with messages: %s", res.stderr.strip())
            self.last_cluster = parsed[1]
            return parsed[0]
        err = (res.stderr.strip() or res.stdout.strip()) or f"sbatch exited {res.returncode}"
        if res.ok:
            raise SubmitError(f"sbatch printed no job id: {err}", stderr=res.stderr, returncode=0)
        if is_transient(res.stderr):
            raise TransientSchedulerError(
                f"sbatch: {err}", stderr=res.stderr, returncode=res.returncode
            )
        if is_limit(res.stderr):
            raise SubmitLimitError(f"sbatch: {err}", stderr=res.stderr, returncode=res.returncode)
        raise SubmitError(
            f"sbatch rejected the job: {err}", stderr=res.stderr, returncode=res.returncode
        )

    # ------------------------------------------------------------------ find
    def _squeue_by_name(self, name: str) -> list[SlurmRow]:
        res = self._run(
            [
                "squeue",
                "--noheader",
                "--all",
                "--states=all",
                f"--name={name}",
                f"--user={self.user}",
                f"--Format={SQUEUE_FORMAT}",
            ]
        )
        if not res.ok:
            if is_transient(res.stderr):
                raise TransientSchedulerError(f"squeue: {res.stderr.strip()}", stderr=res.stderr)
            raise SchedulerError(f"squeue failed: {res.stderr.strip()}", stderr=res.stderr)
        return [r for r in parse_squeue(res.stdout) if r.name == name]

    def _live_ids_by_name(self, name: str) -> list[str]:
        rows = [r for r in self._squeue_by_name(name) if r.state.is_active]
        return _sorted_ids({r.base_id for r in rows})

    def find_by_name(self, name: str, *, include_finished: bool = True) -> list[str]:
        """Ids (base ids for arrays/het jobs) of this user's jobs named ``name``, oldest first:
        squeue, plus the last 7 days of sacct when ``include_finished`` and accounting is on."""
        rows = self._squeue_by_name(name)
        if not include_finished:
            rows = [r for r in rows if r.state.is_active]
        ids = {r.base_id for r in rows}
        if include_finished and self.accounting is not False:
            res = self._run(
                [
                    "sacct",
                    "-X",
                    "--parsable2",
                    "--noheader",
                    "--starttime=now-7days",
                    f"--user={self.user}",
                    f"--name={name}",
                    f"--format={SACCT_FORMAT}",
                ]
            )
            if res.ok:
                ids.update(r.base_id for r in parse_sacct(res.stdout) if r.name == name)
            elif _ACCOUNTING_DISABLED in res.stderr.lower():
                self._note_no_accounting()
        return _sorted_ids(ids)

    # ------------------------------------------------------------------ status
    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = list(dict.fromkeys(str(j) for j in job_ids))
        result: dict[str, JobStatus] = {j: self._final[j] for j in wanted if j in self._final}
        todo = [j for j in wanted if j not in result]
        if not todo:
            return result
        try:
            rows = self._squeue_rows(todo)
        except SchedulerError as exc:
            self.controller.down(_first_line(str(exc)))  # logged once, not per cycle
            log.debug(
                "squeue failed (%s); keeping the last known states of %d jobs", exc, len(todo)
            )
            for j in todo:
                last = self._last.get(j)
                result[j] = (
                    replace(last, source="cache")
                    if last is not None
                    else unknown_status(j, f"controller did not answer: {exc}", "cache")
                )
            return result
        self.controller.up()
        missing: list[str] = []
        index = RowIndex(rows)
        for j in todo:
            found = index.match(j)
            if found:
                self._remember(result, aggregate(j, found))
            else:
                missing.append(j)
        if missing:
            self._status_of_departed(missing, result)
        return {j: result[j] for j in wanted}

    def _squeue_rows(self, job_ids: Sequence[str]) -> list[SlurmRow]:
        rows: list[SlurmRow] = []
        for chunk in _chunks(job_ids, self.squeue_chunk):
            res = self._run(squeue_argv(chunk))
            if res.ok:
                rows.extend(parse_squeue(res.stdout))
            elif "invalid job id" in res.stderr.lower():
                continue  # none of these ids is known to the controller any more
            elif is_transient(res.stderr):
                raise TransientSchedulerError(f"squeue: {res.stderr.strip()}", stderr=res.stderr)
            else:
                raise SchedulerError(f"squeue failed: {res.stderr.strip()}", stderr=res.stderr)
        return rows

    def _status_of_departed(self, job_ids: list[str], result: dict[str, JobStatus]) -> None:
        """Jobs that are not (or no longer) in squeue: sacct, else scontrol, else UNKNOWN."""
        rows: list[SlurmRow] = []
        sacct_error = ""
        if self.accounting is not False:
            try:
                for chunk in _chunks(job_ids, self.squeue_chunk):
                    res = self._run(sacct_argv(chunk))
                    if res.ok:
                        self.accounting = True
                        rows.extend(parse_sacct(res.stdout))
                    elif _ACCOUNTING_DISABLED in res.stderr.lower():
                        self._note_no_accounting()
                        break
                    else:
                        sacct_error = res.stderr.strip() or f"sacct exited {res.returncode}"
                        break
            except SchedulerError as exc:
                sacct_error = str(exc)
            if sacct_error:
                self.dbd.down(_first_line(sacct_error))  # logged once, not per cycle
                log.debug("sacct failed (%s); keeping the last known states", sacct_error)
            else:
                self.dbd.up()
        if self.accounting is False:
            rows.extend(self._scontrol_rows([j for j in job_ids if j not in self._gone_noacct]))
        index = RowIndex(rows)
        for j in job_ids:
            found = index.match(j)
            if found:
                self._remember(result, aggregate(j, found))
                continue
            last = self._last.get(j)
            if sacct_error:
                # slurmdbd did not answer: not knowing is not the same as "gone".
                result[j] = (
                    replace(last, source="cache")
                    if last is not None
                    else unknown_status(j, f"sacct failed: {sacct_error}", "cache")
                )
                continue
            where = "squeue or sacct" if self.accounting else "squeue or scontrol (no accounting)"
            result[j] = unknown_status(j, f"job not found in {where}")
            self._last.setdefault(j, result[j])

    def _scontrol_rows(self, job_ids: Sequence[str]) -> list[SlurmRow]:
        rows: list[SlurmRow] = []
        for j in job_ids:
            try:
                res = self._run(["scontrol", "--oneliner", "show", "job", split_job_id(j)[0]])
            except SchedulerError as exc:
                log.warning("scontrol failed: %s", exc)
                break
            if res.ok:
                rows.extend(parse_scontrol(res.stdout))
            else:
                # Gone from the controller and no accounting: nothing will ever know more.
                self._gone_noacct.add(j)
        return rows

    def _note_no_accounting(self) -> None:
        if self.accounting is not False:
            self.accounting = False
            min_age = self._min_job_age()
            log.warning(
                "Slurm accounting is disabled: finished jobs are visible only for MinJobAge=%s "
                "after they end; poll more often than that or their outcome is lost",
                min_age if min_age is not None else "?",
            )

    def _min_job_age(self) -> str | None:
        try:
            res = self._run(["scontrol", "show", "config"])
        except SchedulerError:
            return None
        for line in res.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "MinJobAge":
                return value.strip()
        return None

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_ids: Sequence[str]) -> None:
        """One ``scancel`` per chunk of ``cancel_chunk`` ids; already-finished ids are fine."""
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        for chunk in _chunks(ids, self.cancel_chunk):
            for attempt in self._retrying(attempts=3):
                with attempt:
                    self._scancel_once(chunk)

    def _scancel_once(self, chunk: Sequence[str]) -> None:
        res = self._run(["scancel", *chunk])
        if res.ok:
            return
        errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
        if is_transient(res.stderr):
            raise TransientSchedulerError(f"scancel: {res.stderr.strip()}", stderr=res.stderr)
        real = [ln for ln in errors if not any(p in ln.lower() for p in _GONE_PATTERNS)]
        if real:
            raise SchedulerError(f"scancel failed: {'; '.join(real)}", stderr=res.stderr)


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), text.strip())


def _sorted_ids(ids: set[str]) -> list[str]:
    return sorted(ids, key=lambda s: (int(s) if s.isdigit() else 0, s))
