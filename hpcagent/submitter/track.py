"""Following submitted jobs and keeping their tasks' statuses true.

Per cycle: one ``scheduler.status`` for all submitted jobs, then one ``tasks.get_all``
for their tasks, then one ``scheduler.cancel`` for every job to cancel. The executor
owns the task's outcome; this module writes a final status only when a job ended while
its task was still ``queued`` or ``in_progress`` (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL,
CANCELLED by an admin, a failing pre-setup, ...), or when a job vanished for longer
than ``lost_grace_s`` (never read as success).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hpcagent.api import ApiClient
from hpcagent.errors import ApiError, SchedulerError, ServerUnreachable
from hpcagent.scheduler.base import (
    KILLED_BY_SCHEDULER,
    JobState,
    JobStatus,
    Scheduler,
    unknown_status,
)
from hpcagent.submitter import taskops
from hpcagent.submitter.ledger import SUBMITTED, Entry, Ledger
from hpcagent.submitter.options import SubmitterOptions, job_name
from hpcagent.submitter.outputs import tail


def crashpoint(name: str) -> None:
    """Test hook: ``HPCAGENT_TEST_CRASH_AT=<name>`` makes the process kill -9 itself here
    (the crash tests stop the submitter at exact points this way). Off by default."""
    if os.environ.get("HPCAGENT_TEST_CRASH_AT") == name:
        log.warning("HPCAGENT_TEST_CRASH_AT=%s: killing myself with SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


log = logging.getLogger("hpcagent.submitter")


def _signalled(task: dict[str, Any]) -> bool:
    """The task ended because its executor got a signal (not by its own exit or an abort)."""
    if task.get("status") == "failed":
        return True
    reason = str(task.get("status_reason") or "")
    return task.get("status") == "stopped" and reason.startswith("terminated by signal")


def describe(js: JobStatus) -> str:
    """``PENDING (Resources)``, ``RUNNING on node1``, ``TIMEOUT``."""
    text = js.state.value
    if js.state in (JobState.RUNNING, JobState.COMPLETING) and js.nodes:
        return f"{text} on {js.nodes}"
    if js.reason and js.reason not in ("None", "(null)"):
        return f"{text} ({js.reason})"
    return text


class Tracker:
    """Tracks the ledger's submitted jobs (see the module docstring)."""

    def __init__(
        self, client: ApiClient, scheduler: Scheduler, ledger: Ledger, options: SubmitterOptions
    ) -> None:
        self.client = client
        self.scheduler = scheduler
        self.ledger = ledger
        self.opts = options
        self._unknown_since: dict[str, float] = {}
        self._stopping_since: dict[str, float] = {}
        self._never_since: dict[str, float] = {}
        self._cancelled: dict[str, str] = {}  # task id -> status_reason of its stop
        self._nodes_recorded: set[str] = set()
        self._last_message: dict[str, str] = {}
        #: The scheduler's last answer per task id (the worker report lists them: loop.job_rows).
        self.last_status: dict[str, JobStatus] = {}
        self.commands = 0  # scheduler calls made (for the benchmark)
        self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hpcagent-record")
        self._pending: list[Future[object]] = []

    def defer(self, fn: Callable[..., object], *args: Any) -> None:
        """Run a server write in the background (see :meth:`flush`)."""
        self._pending.append(self._writer.submit(fn, *args))

    def flush(self) -> None:
        """Wait for every deferred write (the tracker calls this before it writes)."""
        pending, self._pending = self._pending, []
        for fut in pending:
            exc = fut.exception()
            if exc is not None:
                log.warning("a deferred server write failed: %s", exc)

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    def track(self) -> None:
        """One tracking round over every submitted job."""
        self.flush()
        entries = [e for e in self.ledger.live() if e.state == SUBMITTED and e.job_id]
        if not entries:
            self.last_status = {}
            return
        jobs = [str(e.job_id) for e in entries]
        try:
            statuses = self.scheduler.status(jobs)
            self.commands += 1
        except SchedulerError as exc:
            log.warning("job status unavailable this cycle: %s", exc)
            return
        crashpoint("tracking")
        self.last_status = {
            e.task_id: statuses.get(str(e.job_id)) or unknown_status(str(e.job_id), "not found")
            for e in entries
        }
        tasks = taskops.get_statuses(self.client, [e.task_id for e in entries])
        to_cancel: list[Entry] = []
        for entry in entries:
            js = statuses.get(str(entry.job_id)) or unknown_status(str(entry.job_id), "not found")
            task = tasks.get(entry.task_id)
            try:
                if self._follow(entry, js, task):
                    to_cancel.append(entry)
            except ApiError as exc:
                log.warning("task %s job %s: server call failed: %s", entry.task_id, js.job_id, exc)
            except ServerUnreachable:
                raise
            except Exception:  # one odd task record must not stop the others' tracking
                log.exception("task %s job %s: cannot be followed", entry.task_id, js.job_id)
        if to_cancel:
            self._cancel(to_cancel, tasks)

    # -- one job -----------------------------------------------------------------
    def _follow(self, entry: Entry, js: JobStatus, task: dict[str, Any] | None) -> bool:
        """Handle one job; True when it must be cancelled."""
        tid, job = entry.task_id, str(entry.job_id)
        status = str(task.get("status")) if task else "deleted"
        if js.state.is_active:
            self._unknown_since.pop(tid, None)
            if task is None or (status in taskops.WITHDRAWN_STATUSES and not _signalled(task)):
                return True
            if status == "in_progress" and task.get("status_message") == "stopping":
                first = self._stopping_since.setdefault(tid, time.monotonic())
                return time.monotonic() - first >= self.opts.stop_grace_s
            self._progress(entry, js, status)
            return self._never_runs(entry, js, status)

        if js.state.is_terminal:
            self._finish(entry, js, task)
            return False
        if js.source == "cache":
            # The scheduler did not answer (slurmctld or slurmdbd away): not knowing is not
            # "gone", so the lost clock starts only once it answers "not found".
            self._unknown_since.pop(tid, None)
            return False
        first = self._unknown_since.setdefault(tid, time.monotonic())
        if time.monotonic() - first >= self.opts.lost_grace_s:
            self._finish(entry, js, task, lost=True)
        else:
            log.debug("task %s job %s: not found yet (%s)", tid, job, js.reason)
        return False

    def _never_runs(self, entry: Entry, js: JobStatus, status: str) -> bool:
        """A job Slurm will never start: after ``never_runs_fail_s`` fail its task with Slurm's
        reason and have the job cancelled (True)."""
        tid = entry.task_id
        if (
            not self.scheduler.never_runs(js)
            or status != "queued"
            or self.opts.never_runs_fail_s <= 0
        ):
            self._never_since.pop(tid, None)
            return False
        first = self._never_since.setdefault(tid, time.monotonic())
        if time.monotonic() - first < self.opts.never_runs_fail_s:
            return False
        label = f"{self.scheduler.job_label} {entry.job_id} cannot start ({js.reason})"
        taskops.fail(
            self.client,
            tid,
            label,
            f"{label}: Slurm keeps the job pending for {js.reason}, which means it asks for "
            "more than the partition or any of its nodes offers (CPUs, GPUs, memory, nodes, "
            "time) or for an account, QOS or constraint that does not exist; the job was "
            f"cancelled after {self.opts.never_runs_fail_s:g} s (slurm.never_runs_fail_sec). "
            "Change the task's resource properties or the queue's template.",
        )
        log.info(
            "task %s queue %s job %s: %s, task failed", tid, entry.queue_name, entry.job_id, label
        )
        return True

    def _progress(self, entry: Entry, js: JobStatus, status: str) -> None:
        tid, job = entry.task_id, str(entry.job_id)
        text = describe(js)
        if entry.job_state != text:
            self.ledger.set_job_state(tid, text)
            log.info("task %s queue %s job %s: %s", tid, entry.queue_name, job, text)
        if js.nodes and js.state is JobState.RUNNING and tid not in self._nodes_recorded:
            self._nodes_recorded.add(tid)
            taskops.record_job(
                self.client,
                tid,
                job_id=job,
                scheduler=self.scheduler.name,
                queue_name=entry.queue_name,
                worker_id=self.opts.worker_id,
                nodes=js.nodes,
            )
        message = f"{self.scheduler.job_label} {job}: {text}"
        if status == "queued" and self._last_message.get(tid) != message:
            # Beside the loop (two calls per task and state change: with a hundred pending
            # jobs a round held up submissions for seconds); the next round waits for it.
            self.defer(self._queued_message, tid, message)

    def _queued_message(self, tid: str, message: str) -> None:
        crashpoint("writing_status")
        if taskops.set_queued_message(self.client, tid, message):
            self._last_message[tid] = message

    def _finish(
        self, entry: Entry, js: JobStatus, task: dict[str, Any] | None, *, lost: bool = False
    ) -> None:
        tid, job = entry.task_id, str(entry.job_id)
        status = str(task.get("status")) if task else "deleted"
        state = "LOST" if lost else js.state.value
        self._forget(tid)
        settled = task is None or status in taskops.FINAL_STATUSES or status == "created"
        killed = task is not None and js.state in KILLED_BY_SCHEDULER and _signalled(task)
        if settled and not killed:
            # The task reported its own end (the usual case): how the job ended and its
            # output's tail are written beside the loop, which goes on submitting.
            if task is not None:
                self.defer(self._record_end, entry, js, state)
            self.ledger.mark_finished(tid, f"job {state}; task {status}")
            log.info(
                "task %s queue %s job %s: %s (task %s)", tid, entry.queue_name, job, state, status
            )
            return
        out = self._record_end(entry, js, state) if task is not None else ""
        if settled and task is not None:
            # Killed: the executor saw only a signal (and may have said "stopped"); Slurm killed
            # the job (TIMEOUT, OUT_OF_MEMORY, ...): the task failed, and says why.
            label = f"{self.scheduler.job_label} {job} {state}"
            old = str(task.get("status_message") or "")
            message = self._failure_message(
                entry, js, state, out, lead=f"{label} (the job was ended by Slurm)"
            )
            if old:
                message += f"\nexecutor: {old}"
            taskops.fail(self.client, tid, label, message)
            self.ledger.mark_finished(tid, f"job {state}; task failed")
            log.info("task %s queue %s job %s: %s (task failed)", tid, entry.queue_name, job, state)
            return
        if tid in self._cancelled:
            reason = self._cancelled.pop(tid)
            text = f"{self.scheduler.job_label} {job} ended {state}"
            if js.signal:
                text += f" (signal {js.signal})"
            self.client.send(
                "tasks.stopped",
                {"task": tid, "force": True, "status_reason": reason, "status_message": text},
            )
            self.ledger.mark_finished(tid, f"job {state}; task stopped")
            log.info("task %s queue %s job %s: %s, task stopped", tid, entry.queue_name, job, state)
            return
        message = self._failure_message(entry, js, state, out)
        crashpoint("writing_final_status")
        taskops.fail(self.client, tid, f"{self.scheduler.job_label} {job} {state}", message)
        taskops.add_log(self.client, tid, message)
        self.ledger.mark_finished(tid, f"failed: job {state}")
        log.info("task %s queue %s job %s: %s, task failed", tid, entry.queue_name, job, state)

    def _failure_message(
        self, entry: Entry, js: JobStatus, state: str, out: str, lead: str | None = None
    ) -> str:
        label = self.scheduler.job_label
        parts = [lead or f"{label} {entry.job_id} ended {state} before the task reported a result"]
        if js.reason and js.reason not in ("None", "(null)"):
            parts.append(f"reason: {js.reason}")
        if js.exit_code is not None:
            code = f"exit code: {js.exit_code}"
            if js.signal:
                code += f" (signal {js.signal})"
            parts.append(code)
        if js.cancelled_by:
            parts.append(f"cancelled by uid {js.cancelled_by}")
        text = "; ".join(parts)
        if out:
            text += "\n--- job output (tail) ---\n" + out
        return text

    def _record_end(self, entry: Entry, js: JobStatus, state: str) -> str:
        """Write how the job ended and the tail of its output file on the task, whatever its
        status (the web UI's Info tab shows them: the server cannot read the cluster's files);
        returns the tail. Best effort: a failed write is logged, the tracking goes on."""
        path = self._output_path(entry)
        out = tail(path) if path is not None else ""
        end = state
        if js.exit_code is not None and js.exit_code != 0:
            end += f" (exit code {js.exit_code})"
        elif js.signal:
            end += f" (signal {js.signal})"
        try:
            taskops.record_end(
                self.client, entry.task_id, end=end, output=str(path or ""), tail=out
            )
        except ApiError as exc:
            log.warning(
                "task %s job %s: could not record its end: %s", entry.task_id, entry.job_id, exc
            )
        return out

    def _output_path(self, entry: Entry) -> Path | None:
        script = ""
        if entry.script_path:
            try:
                script = Path(entry.script_path).read_text(encoding="utf-8")
            except OSError:
                script = ""
        return self.scheduler.output_path(
            str(entry.job_id),
            job_name=job_name(entry.task_id),
            script=script,
            submit_dir=Path.cwd(),
        )

    def _forget(self, tid: str) -> None:
        for d in (self._unknown_since, self._stopping_since, self._last_message, self._never_since):
            d.pop(tid, None)
        self._nodes_recorded.discard(tid)

    def stopping(self, task_ids: list[str], reason: str) -> None:
        """These tasks' jobs are being cancelled on purpose (the daemon stops): a job that
        ends before its executor reported stops its task with ``reason``; it never fails it."""
        for tid in task_ids:
            self._cancelled[tid] = reason

    def _cancel(self, entries: list[Entry], tasks: dict[str, dict[str, Any]]) -> None:
        try:
            self.scheduler.cancel([str(e.job_id) for e in entries])
            self.commands += 1
        except SchedulerError as exc:
            log.warning("scancel failed (retried next cycle): %s", exc)
            return
        for e in entries:
            status = str((tasks.get(e.task_id) or {}).get("status", "deleted"))
            self._cancelled[e.task_id] = "aborted"
            log.info(
                "task %s queue %s job %s: cancelling (task %s)",
                e.task_id,
                e.queue_name,
                e.job_id,
                status if status != "in_progress" else "stopping",
            )
