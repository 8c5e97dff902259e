"""LocalScheduler: the Scheduler interface without Slurm.

Each job is ``bash SCRIPT`` started as a child process in its own session (so cancel reaches the
whole process group), stdout and stderr to ``<output_dir>/<job name>-<id>.out``. At most
``max_parallel`` jobs run at once; the others stay PENDING and start on the next call to
submit/status/cancel (no background thread). States: PENDING -> RUNNING -> COMPLETED (exit 0) /
FAILED (non-zero exit, or killed by a signal) / CANCELLED (cancel was asked). Cancel sends SIGTERM
to the job's process group and SIGKILL after ``kill_wait_s``; a cancelled job is COMPLETING (not
yet ended) while any process of its group still runs, so the executor inside has written its
task's status before the job counts as ended.

With an ``output_dir``, the jobs are also kept in ``<output_dir>/jobs.json`` (rewritten at each
change, atomically), so a new LocalScheduler over the same folder, after the old one's process
was killed, re-adopts them: a job whose process group still lives is RUNNING again (followed
through ``/proc``, its pid checked against its start time; cancel still reaches its group);
a job that ended meanwhile is COMPLETED or FAILED by the exit status its script wrote to
``$HPCAGENT_JOB_STATUS_FILE`` (the daemon's job template does), else FAILED with "exit status
unknown"; a pending one starts. Job ids keep counting from the old ones, never reused.
Without an ``output_dir`` the jobs live in this object only (a new one knows none: UNKNOWN).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcagent.errors import SubmitError
from hpcagent.process import Process, group_alive, signal_group, start_process, start_time
from hpcagent.scheduler.base import (
    JobIdentity,
    JobState,
    JobStatus,
    Scheduler,
    env_int,
    unknown_status,
)

log = logging.getLogger(__name__)

#: The jobs of a LocalScheduler with an output folder, for the next one (module docstring).
STATE_FILE = "jobs.json"
#: Ended jobs kept in the state file (the newest), for a tracker that asks after a restart.
KEEP_ENDED = 500


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
    pid: int | None = None  # the job's process group (its bash), kept across a restart
    started: int | None = None  # the start time of that pid (process.start_time)
    reason: str = ""  # why it ended, when the exit status alone does not say

    @property
    def adopted(self) -> bool:
        """Started by an earlier LocalScheduler: no child to wait for, only a group to watch."""
        return self.proc is None and self.pid is not None

    @property
    def status_file(self) -> Path:
        return self.output.with_suffix(".status")

    def record(self) -> dict[str, object]:
        return {
            "id": self.job_id,
            "name": self.name,
            "script": str(self.script),
            "output": str(self.output),
            "state": self.state.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "cancelled": self.cancel_at is not None,
            "pid": self.pid,
            "started": self.started,
            "reason": self.reason,
        }

    @classmethod
    def from_record(cls, rec: dict[str, object]) -> _LocalJob:
        def opt_int(key: str) -> int | None:
            value = rec.get(key)
            return value if isinstance(value, int) else None

        job = cls(
            str(rec["id"]), str(rec["name"]), Path(str(rec["script"])), Path(str(rec["output"]))
        )
        job.state = JobState(str(rec.get("state") or "UNKNOWN"))
        job.exit_code, job.signal = opt_int("exit_code"), opt_int("signal")
        job.pid, job.started = opt_int("pid"), opt_int("started")
        job.reason = str(rec.get("reason") or "")
        if rec.get("cancelled"):
            job.cancel_at = time.monotonic()  # the kill wait starts again
        return job


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
        self._next_id = 1
        self._lock = threading.RLock()
        self._state = output_dir / STATE_FILE if output_dir is not None else None
        self._load()

    # ------------------------------------------------------------------ API
    def submit(self, script_path: Path, *, job_name: str) -> str:
        script = Path(script_path)
        if not script.is_file():
            raise SubmitError(f"job script {script} does not exist")
        with self._lock:
            job_id = str(self._next_id)
            self._next_id += 1
            out_dir = self.output_dir or script.parent
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            job = _LocalJob(job_id, job_name, script, out_dir / f"{job_name}-{job_id}.out")
            self._jobs[job_id] = job
            self._save()  # before it starts: a restart knows every job that may run
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
                if job.pid is None:
                    job.state = JobState.CANCELLED
                    continue
                if job.cancel_at is None:  # a repeated cancel does not postpone the SIGKILL
                    job.cancel_at = now
                self._signal(job, signal.SIGTERM)
            self._save()
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
        changed = False
        for job in self._jobs.values():
            if job.pid is None or job.state.is_terminal:
                continue
            rc = job.proc.poll() if job.proc is not None else None
            alive = self._adopted_alive(job) if job.adopted else rc is None
            if alive or self._lingers(job, now):
                running += 1
                if not alive:
                    job.state = JobState.COMPLETING
                if job.cancel_at is not None and now - job.cancel_at > self.kill_wait_s:
                    self._signal(job, signal.SIGKILL)
                continue
            if job.adopted:
                self._finish_adopted(job)
            else:
                self._finish(job, rc if rc is not None else 0)
            changed = True
        for job in sorted(self._jobs.values(), key=lambda j: int(j.job_id)):
            if running >= self.max_parallel:
                break
            if job.state is JobState.PENDING and job.pid is None:
                self._start(job)
                running += 1
                changed = True
        if changed:
            self._save()

    def _start(self, job: _LocalJob) -> None:
        env = self.clean_env(self._env)  # a job started from a local job is not that job
        env["HPCAGENT_JOB_ID"] = job.job_id
        env["HPCAGENT_JOB_NAME"] = job.name
        env["HPCAGENT_JOB_STATUS_FILE"] = str(job.status_file)
        # the job's output is the task's console: the owner's only (0600, in a 0700 folder)
        fd = os.open(job.output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            job.proc = start_process(
                [self._bash, str(job.script)], stdout=out, env=env, cwd=job.script.parent
            )
        job.pid, job.started = job.proc.pid, start_time(job.proc.pid)
        job.state = JobState.RUNNING
        log.debug("local job %s (%s) started, pid %d", job.job_id, job.name, job.proc.pid)

    def _lingers(self, job: _LocalJob, now: float) -> bool:
        """A cancelled job whose script has exited but whose process group has not: bash dies
        on SIGTERM at once while the executor it started is still stopping the task and
        writing its status. The job ends when the group is empty (Slurm's COMPLETING), or
        at the latest ``kill_wait_s`` after the SIGKILL (a process that cannot die)."""
        if job.cancel_at is None or job.pid is None:
            return False
        if now - job.cancel_at > 2 * self.kill_wait_s:
            return False
        return group_alive(job.pid)

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
        if job.pid is not None:
            signal_group(job.pid, sig)

    # ------------------------------------------------------------------ across restarts
    @staticmethod
    def _adopted_alive(job: _LocalJob) -> bool:
        """The group of a job started by an earlier LocalScheduler still has a live process.
        Its leader's pid now naming a process started at another time means the job ended
        (a pid still used as a group id is never handed out again while the group lives)."""
        assert job.pid is not None
        now_started = start_time(job.pid)
        if now_started is not None and job.started is not None and now_started != job.started:
            return False
        return group_alive(job.pid)

    @staticmethod
    def _finish_adopted(job: _LocalJob) -> None:
        """An adopted job ended: its exit status from the status file its script wrote."""
        code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            code = int(job.status_file.read_text(encoding="utf-8").split()[0])
        job.exit_code, job.signal = code, 0 if code is not None else None
        if job.cancel_at is not None:
            job.state = JobState.CANCELLED
        elif code is None:
            job.state = JobState.FAILED
            job.reason = "exit status unknown (the job ended while no LocalScheduler watched it)"
        else:
            job.state = JobState.COMPLETED if code == 0 else JobState.FAILED

    def _load(self) -> None:
        """Take over the jobs of an earlier LocalScheduler on the same folder (see above)."""
        if self._state is None:
            return
        try:
            data = json.loads(self._state.read_text(encoding="utf-8"))
            jobs = [_LocalJob.from_record(r) for r in data.get("jobs") or []]
            self._next_id = max(int(data.get("next_id") or 1), 1)
        except FileNotFoundError:
            # No state yet (a first run, or a version that kept none): never reuse the id
            # of an output file already there, a ledger may still name that job.
            ids = [int(m.group(1)) for f in self._state.parent.glob("*.out")
                   if (m := re.search(r"-(\d+)\.out$", f.name))]  # fmt: skip
            self._next_id = max(ids, default=0) + 1
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "local jobs state %s unreadable (%s); starting without it", self._state, exc
            )
            return
        for job in jobs:
            self._jobs[job.job_id] = job
            self._next_id = max(self._next_id, int(job.job_id) + 1)
            if job.adopted and not job.state.is_terminal:
                log.info(
                    "local job %s (%s) re-adopted, process group %d", job.job_id, job.name, job.pid
                )

    def _save(self) -> None:
        """Write the jobs (live ones and the newest ended ones) atomically; never raises."""
        if self._state is None:
            return
        jobs = sorted(self._jobs.values(), key=lambda j: int(j.job_id))
        ended = [j for j in jobs if j.state.is_terminal]
        drop = {j.job_id for j in ended[: max(0, len(ended) - KEEP_ENDED)]}
        for jid in drop:
            del self._jobs[jid]
        data = {
            "next_id": self._next_id,
            "jobs": [j.record() for j in jobs if j.job_id not in drop],
        }
        tmp = self._state.with_suffix(".tmp")
        try:
            self._state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._state)
        except OSError as exc:  # a full disk: the jobs still run, a restart may not know them
            log.warning("cannot save the local jobs state %s: %s", self._state, exc)

    @staticmethod
    def _to_status(job: _LocalJob) -> JobStatus:
        reason = job.reason
        if job.state is JobState.FAILED and not reason:
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
