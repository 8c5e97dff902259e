"""LocalScheduler: the Scheduler interface without Slurm.

Each job is ``bash SCRIPT`` started as a child process in its own session (so cancel reaches the
whole process group), stdout and stderr to ``<output_dir>/<job name>-<id>.out``. At most
``max_parallel`` jobs run at once; the others stay PENDING and start on the next call to
submit/status/cancel (no background thread). States: PENDING -> RUNNING -> COMPLETED (exit 0) /
FAILED (non-zero exit, or killed by a signal) / CANCELLED (cancel was asked). Cancel sends SIGTERM
to the job's process group and SIGKILL after ``kill_wait_s``; a cancelled job is COMPLETING (not
yet ended) while any process of its group still runs, so the executor inside has written its
task's status before the job counts as ended. Job state lives in
this object only: a new LocalScheduler knows no old jobs (they are UNKNOWN).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcagent.errors import SubmitError
from hpcagent.process import Process, group_alive, signal_group, start_process
from hpcagent.scheduler.base import (
    JobIdentity,
    JobState,
    JobStatus,
    Scheduler,
    env_int,
    unknown_status,
)

log = logging.getLogger(__name__)


@dataclass
class _LocalJob:
    job_id: str
    name: str
    script: Path
    output: Path
    state: JobState = JobState.PENDING
    proc: Process | None = None
    exit_code: int | None = None
    signal: int | None = None
    cancel_at: float | None = None
    submitted_at: float = field(default_factory=time.monotonic)


class LocalScheduler(Scheduler):
    """Runs job scripts on this machine with bash (see the module docstring)."""

    name = "local"
    job_label = "local job"
    auto_priority = 0  # always available: the fallback of --scheduler auto
    job_env_prefixes = ("HPCAGENT_JOB_",)

    @classmethod
    def available(cls, env: Mapping[str, str]) -> bool:
        return shutil.which("bash", path=env.get("PATH")) is not None

    @classmethod
    def create(cls, *, state_dir: Path) -> LocalScheduler:
        return cls(output_dir=state_dir / "local-jobs")

    @classmethod
    def job_identity(cls, env: Mapping[str, str]) -> JobIdentity | None:
        """``HPCAGENT_JOB_ID`` (set in every job this scheduler starts); the rank is ``RANK``
        when a launcher inside the job sets it (the local scheduler starts one process)."""
        job = env.get("HPCAGENT_JOB_ID", "")
        if not job:
            return None
        return JobIdentity(cls.name, job, "", env_int(env, "RANK"))

    def __init__(
        self,
        *,
        output_dir: Path | None = None,
        max_parallel: int = 4,
        kill_wait_s: float = 5.0,
        env: Mapping[str, str] | None = None,
        bash: str = "bash",
    ) -> None:
        self.output_dir = output_dir
        self.max_parallel = max(1, max_parallel)
        self.kill_wait_s = kill_wait_s
        self._env = dict(os.environ if env is None else env)
        self._bash = bash
        self._jobs: dict[str, _LocalJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ API
    def submit(self, script_path: Path, *, job_name: str) -> str:
        script = Path(script_path)
        if not script.is_file():
            raise SubmitError(f"job script {script} does not exist")
        with self._lock:
            job_id = str(next(self._ids))
            out_dir = self.output_dir or script.parent
            out_dir.mkdir(parents=True, exist_ok=True)
            job = _LocalJob(job_id, job_name, script, out_dir / f"{job_name}-{job_id}.out")
            self._jobs[job_id] = job
            self._poke()
            return job_id

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self._lock:
            self._poke()
            out: dict[str, JobStatus] = {}
            for jid in dict.fromkeys(str(j) for j in job_ids):
                job = self._jobs.get(jid)
                out[jid] = self._to_status(job) if job else unknown_status(jid, "no such local job")
            return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            now = time.monotonic()
            for jid in job_ids:
                job = self._jobs.get(str(jid))
                if job is None or job.state.is_terminal:
                    continue
                if job.proc is None:
                    job.state = JobState.CANCELLED
                    continue
                if job.cancel_at is None:  # a repeated cancel does not postpone the SIGKILL
                    job.cancel_at = now
                self._signal(job, signal.SIGTERM)
            self._poke()

    def find_by_name(self, name: str) -> list[str]:
        with self._lock:
            return [j.job_id for j in self._jobs.values() if j.name == name]

    def output_path(
        self, job_id: str, *, job_name: str = "", script: str = "", submit_dir: Path | None = None
    ) -> Path | None:
        """Where the job's stdout/stderr go (this object started it); None for another's job."""
        job = self._jobs.get(job_id)
        return job.output if job is not None else None

    def wait(self, job_ids: Sequence[str], *, timeout_s: float, poll_s: float = 0.05) -> None:
        """Block until every job is terminal or ``timeout_s`` passed (tests, local runs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.is_terminal for s in self.status(job_ids).values()):
                return
            time.sleep(poll_s)

    # ------------------------------------------------------------------ internals
    def _poke(self) -> None:
        """Reap finished children, escalate slow cancels, start pending jobs."""
        now = time.monotonic()
        running = 0
        for job in self._jobs.values():
            if job.proc is None or job.state.is_terminal:
                continue
            rc = job.proc.poll()
            if rc is None or self._lingers(job, now):
                running += 1
                if rc is not None:
                    job.state = JobState.COMPLETING
                if job.cancel_at is not None and now - job.cancel_at > self.kill_wait_s:
                    self._signal(job, signal.SIGKILL)
                continue
            self._finish(job, rc)
        for job in sorted(self._jobs.values(), key=lambda j: int(j.job_id)):
            if running >= self.max_parallel:
                break
            if job.state is JobState.PENDING and job.proc is None:
                self._start(job)
                running += 1

    def _start(self, job: _LocalJob) -> None:
        env = self.clean_env(self._env)  # a job started from a local job is not that job
        env["HPCAGENT_JOB_ID"] = job.job_id
        env["HPCAGENT_JOB_NAME"] = job.name
        with open(job.output, "ab") as out:
            job.proc = start_process(
                [self._bash, str(job.script)], stdout=out, env=env, cwd=job.script.parent
            )
        job.state = JobState.RUNNING
        log.debug("local job %s (%s) started, pid %d", job.job_id, job.name, job.proc.pid)

    def _lingers(self, job: _LocalJob, now: float) -> bool:
        """A cancelled job whose script has exited but whose process group has not: bash dies
        on SIGTERM at once while the executor it started is still stopping the task and
        writing its status. The job ends when the group is empty (Slurm's COMPLETING), or
        at the latest ``kill_wait_s`` after the SIGKILL (a process that cannot die)."""
        if job.cancel_at is None or job.proc is None:
            return False
        if now - job.cancel_at > 2 * self.kill_wait_s:
            return False
        return group_alive(job.proc.pid)

    def _finish(self, job: _LocalJob, rc: int) -> None:
        if rc < 0:
            job.signal, job.exit_code = -rc, 0
        else:
            job.exit_code, job.signal = rc, 0
        if job.cancel_at is not None:
            job.state = JobState.CANCELLED
        else:
            job.state = JobState.COMPLETED if rc == 0 else JobState.FAILED

    @staticmethod
    def _signal(job: _LocalJob, sig: signal.Signals) -> None:
        if job.proc is not None:
            signal_group(job.proc.pid, sig)

    @staticmethod
    def _to_status(job: _LocalJob) -> JobStatus:
        reason = ""
        if job.state is JobState.FAILED:
            reason = f"signal {job.signal}" if job.signal else "NonZeroExitCode"
        return JobStatus(
            job_id=job.job_id,
            state=job.state,
            raw_state=job.state.value,
            reason=reason,
            exit_code=job.exit_code,
            signal=job.signal,
            nodes="localhost",
            name=job.name,
            source="local",
        )
