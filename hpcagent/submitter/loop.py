"""The submitter loop: queues → templates → scheduler, with a ledger for exactly-once.

One cycle (:meth:`Submitter.cycle`):

1. **track** every submitted job with one batched ``scheduler.status`` call, then one
   batched ``tasks.get_all`` for their tasks (in that order, so the task status is never
   older than the job state). Pending/running jobs update the task's status message;
   a job whose task was aborted or dequeued is cancelled; a job that ended while its task
   is still ``queued``/``in_progress`` fails the task with Slurm's state, reason, exit
   code and output tail (see ``track.py``).
2. **pull** (only when working hours / force switches allow): queues in the given order
   (first queue first), or round-robin with ``order_fairness``; never more than
   ``max_jobs`` live tasks per queue. Each task: ledger ``pulled`` → render → script
   (0700) → ledger ``rendered`` → submit → ledger ``submitted`` → job id on the task.
3. **report** to the server as a worker.

Restart (:meth:`Submitter.recover`, run by :meth:`start` before anything is pulled):
``pulled``/``rendered`` rows are looked up by job name; a found job is adopted, otherwise
the task goes back to the front of its queue. ``submitted`` rows are tracked again.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from hpcagent.api import ApiClient, spool
from hpcagent.errors import (
    ApiError,
    HpcAgentError,
    ImagePullError,
    SchedulerError,
    ServerUnreachable,
    SubmitError,
    SubmitLimitError,
    TemplateError,
    TransientSchedulerError,
    UnconfirmedCall,
)
from hpcagent.scheduler.base import JobStatus, Scheduler
from hpcagent.submitter import taskops
from hpcagent.submitter.blocks import render_for
from hpcagent.submitter.ledger import PULLED, RENDERED, Entry, Ledger
from hpcagent.submitter.options import QueueRef, SubmitterOptions, job_name, legacy_job_name
from hpcagent.submitter.outputs import write_script
from hpcagent.submitter.stranded import StrandedSweep
from hpcagent.submitter.track import Tracker, crashpoint
from hpcagent.submitter.worktime import force_from_properties, force_from_tags, may_pull
from hpcagent.templating import NameCache, api_fetch

log = logging.getLogger("hpcagent.submitter")


class Outcome(enum.Enum):
    """What :meth:`Submitter.submit_task` did with one popped task."""

    SUBMITTED = "submitted"  # the job exists; the ledger row is submitted
    SKIPPED = "skipped"  # the task was no longer queued (deleted, dequeued, ...)
    FAILED = "failed"  # image pull, template or sbatch failure: the task is failed
    LIMIT = "limit"  # a submit limit: the task is back at the head of its queue
    TRANSIENT = "transient"  # the scheduler did not answer: the same

    @property
    def pauses_pulling(self) -> bool:
        """No more pulls this round, nor for ``limit_backoff_s`` seconds."""
        return self in (Outcome.LIMIT, Outcome.TRANSIENT)


class Submitter:
    """The long-running glue (see the module docstring).

    ``options`` holds everything it is told (from the typed settings); ``config`` only answers
    ``${CONFIG.<dotted.key>}`` lookups in templates (``Settings.get``).
    """

    def __init__(
        self,
        client: ApiClient,
        scheduler: Scheduler,
        ledger: Ledger,
        options: SubmitterOptions,
        config: Callable[..., Any],
    ) -> None:
        self.client = client
        self.scheduler = scheduler
        self.ledger = ledger
        self.opts = options
        self.config = config
        self.tracker = Tracker(client, scheduler, ledger, options)
        self._rr = 0  # round-robin start index: the queue after the last one served
        self._backoff_until = 0.0
        self._held_props = True  # False once the server said it keeps no runtime properties
        self._props_sent: dict[str, str] = {}
        self._props_sent_at = 0.0
        self.submitted_total = 0
        self.names = NameCache(api_fetch(client.send))  # project/queue names for templates
        self._orphans: threading.Thread | None = None
        self._orphans_next = 0.0
        self.stranded = StrandedSweep(
            client, ledger, scheduler, options.queues, options.worker_id, options.stranded_grace_s
        )

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Register as a worker and re-adopt what an earlier run left behind."""
        self.client.send(
            "workers.register",
            {"worker": self.opts.worker_id, "queues": [q.id for q in self.opts.queues]},
        )
        self.recover()
        self.ledger.prune(7 * 24 * 3600.0)  # settled rows are kept a week for --status/debugging

    def shutdown(self) -> None:
        """Finish deferred writes and unregister (jobs keep running; a restart re-adopts them).

        A server that is away does not hold the stop up: the worker entry then just expires.
        """
        self.tracker.close()
        try:
            self.client.send(
                "workers.unregister",
                {"worker": self.opts.worker_id, "queues": [q.id for q in self.opts.queues]},
            )
        except HpcAgentError as exc:
            log.info(
                "could not unregister %s (%s); its worker entry expires", self.opts.worker_id, exc
            )

    def run(self, stop: threading.Event, max_cycles: int | None = None) -> None:
        """Run until ``stop`` is set (or ``max_cycles`` tracking rounds ran).

        Pulling and tracking have their own pace: queues are polled every
        ``pull_interval_s`` (a cheap server call, so a new task is submitted within a
        fraction of a second), Slurm is asked about jobs every ``poll_interval_s`` (one
        batched command whatever the number of jobs). A pull that hit the per-round cap
        goes on at once. Tasks left queued without a queue entry are looked for every
        ``stranded_check_s`` (:class:`StrandedSweep`).

        A server or scheduler error ends the round, never the loop; with a client that waits
        out outages (:meth:`ApiClient.wait_out_outages`) a call returns once the server is
        back, and only a stop makes it raise :class:`ServerUnreachable` (that ends the loop).
        """
        cycles = 0
        next_track = 0.0
        next_sweep = 0.0
        while not stop.is_set():
            now = time.monotonic()
            busy = False
            self._orphan_logs(now)
            try:
                if now >= next_track:
                    self.tracker.track()
                    self.report()
                    next_track = now + self.opts.poll_interval_s
                    cycles += 1
                if now >= next_sweep:
                    next_sweep = now + self.opts.stranded_check_s
                    self.stranded.sweep()
                busy = self.pull() >= self.opts.max_pulls_per_cycle
            except (ApiError, UnconfirmedCall, SchedulerError) as exc:
                log.warning("cycle failed: %s", exc)
            if max_cycles is not None and cycles >= max_cycles:
                break
            if not busy:
                wait = min(self.opts.pull_interval_s, max(0.0, next_track - time.monotonic()))
                stop.wait(wait)

    def cycle(self) -> int:
        """One track → pull → report round; returns the number of tasks submitted."""
        self.tracker.track()
        submitted = self.pull()
        self.tracker.flush()
        self.report()
        return submitted

    def _orphan_logs(self, now: float) -> None:
        """Now and then, deliver the log spools executors left behind (in a thread of its
        own: a slow or absent server never holds up tracking)."""
        root = self.opts.log_spool_root
        if root is None or now < self._orphans_next:
            return
        if self._orphans is not None and self._orphans.is_alive():
            return
        self._orphans_next = now + self.opts.orphan_logs_interval_s

        def deliver() -> None:
            try:
                spool.deliver_orphans(self.client, root)
            except Exception as exc:  # never the loop's concern; the next round tries again
                log.warning("left-behind executor logs not delivered: %s", exc)

        self._orphans = threading.Thread(target=deliver, name="hpcagent-orphan-logs", daemon=True)
        self._orphans.start()

    # -- restart -----------------------------------------------------------------
    def recover(self) -> None:
        """Settle what a crash left: a pop in flight, ``pulled``/``rendered`` rows."""
        popping = self.ledger.popping()
        if popping is not None:
            self._recover_pop(popping)
            self.ledger.clear_popping()
        for entry in self.ledger.live():
            if entry.state not in (PULLED, RENDERED):
                continue
            jobs = self._find_jobs(entry.task_id)
            if jobs:
                keep, extra = jobs[0], jobs[1:]
                if extra:  # never two live jobs for one task
                    self.scheduler.cancel(extra)
                self.ledger.mark_submitted(entry.task_id, keep)
                log.info(
                    "task %s queue %s job %s: re-adopted after restart",
                    entry.task_id,
                    entry.queue_name,
                    keep,
                )
                continue
            back = taskops.requeue_front(
                self.client, entry.task_id, entry.queue_id, "submitter restarted before sbatch"
            )
            self.ledger.mark_finished(
                entry.task_id, "requeued after restart" if back else "withdrawn before submit"
            )
            log.info(
                "task %s queue %s: %s",
                entry.task_id,
                entry.queue_name,
                "back at the front of its queue (restart)" if back else "no longer queued",
            )

    def _find_jobs(self, task_id: str) -> list[str]:
        """The task's jobs by name, oldest first, also under the name older versions gave."""
        found = self.scheduler.find_by_name(job_name(task_id))
        legacy = self.scheduler.find_by_name(legacy_job_name(task_id))
        return sorted(set(found) | set(legacy), key=lambda j: (len(j), j))

    def _recover_pop(self, queue_id: str) -> None:
        """The last run died between popping ``queue_id`` and writing the ledger row.

        The popped task is ``queued`` with ``execution.queue`` = that queue, but in no queue
        entry, has no ledger row and no job by its name: put every such task back in front.
        """
        q = next((q for q in self.opts.queues if q.id == queue_id), None)
        if q is None:
            return
        data = self.client.send(
            "tasks.get_all",
            {"status": ["queued"], "only_fields": ["id", "execution.queue"], "search_hidden": True},
        )
        queue = self.client.send("queues.get_by_id", {"queue": queue_id}).get("queue") or {}
        waiting = {str(e.get("task")) for e in queue.get("entries") or []}
        for task in data.get("tasks") or []:
            tid = str(task.get("id"))
            if ((task.get("execution") or {}).get("queue")) != queue_id or tid in waiting:
                continue
            known = self.ledger.get(tid)
            if known is not None and known.state != "finished":
                continue
            if self._find_jobs(tid):
                continue
            if taskops.requeue_front(self.client, tid, queue_id, "submitter restarted after pop"):
                log.info("task %s queue %s: back at the front of its queue (restart)", tid, q.name)

    # -- pulling -----------------------------------------------------------------
    def _switches(self) -> dict[str, bool]:
        """Per queue id: may we pull now (hours, worker ``force``, queue tags)?"""
        hours = self.opts.hours.working(dt.datetime.now())
        worker_force: bool | None = None
        try:  # None: the server has none (open-source ClearML; hpcagent.api.compat)
            props = self.client.workers.get_runtime_properties(self.opts.worker_id)
            worker_force = None if props is None else force_from_properties(props)
        except ApiError:
            log.debug("worker runtime properties unavailable", exc_info=True)
        tags: dict[str, list[str]] = {}
        try:
            data = self.client.send(
                "queues.get_all",
                {"id": [q.id for q in self.opts.queues], "only_fields": ["id", "tags"]},
            )
            tags = {str(q.get("id")): list(q.get("tags") or []) for q in data.get("queues") or []}
        except ApiError:
            log.debug("queue tags unavailable", exc_info=True)
        return {
            q.id: may_pull(hours, worker_force, force_from_tags(tags.get(q.id, [])))
            for q in self.opts.queues
        }

    def _order(self) -> list[QueueRef]:
        queues = list(self.opts.queues)
        if self.opts.order_fairness and queues:
            start = self._rr % len(queues)
            queues = queues[start:] + queues[:start]
        return queues

    def pull(self) -> int:
        """Pull and submit what the limits allow; returns the number submitted."""
        try:
            return self._pull()
        finally:
            # Recording runs beside the submissions of this round; when pull() returns,
            # every task it submitted shows its job (callers and tests rely on that).
            self.tracker.flush()

    def _pull(self) -> int:
        if time.monotonic() < self._backoff_until:
            return 0
        self.names.new_round()
        allowed = self._switches()
        live = self.ledger.live_by_queue()
        limit = self.opts.max_jobs
        open_queues = [q for q in self._order() if allowed.get(q.id)]
        submitted = 0
        pulls = 0
        while open_queues and pulls < self.opts.max_pulls_per_cycle:
            # Strict order drains the first open queue; fairness takes one from each in turn.
            batch = open_queues if self.opts.order_fairness else open_queues[:1]
            for q in list(batch):
                if limit is not None and live.get(q.id, 0) >= limit:
                    open_queues.remove(q)
                    continue
                if self.opts.can_start is not None and not self.opts.can_start(q):
                    open_queues.remove(q)
                    continue
                self.ledger.set_popping(q.id)
                try:
                    entry = self.client.queues.get_next_task(q.id)
                except UnconfirmedCall as exc:
                    # A real ClearML server may have popped a task for a reply we never got:
                    # the stranded-task sweep puts it back (never a second blind pop).
                    self.ledger.clear_popping()
                    log.warning("queue %s: %s; the stranded-task sweep settles it", q.name, exc)
                    return submitted
                if entry is None:
                    self.ledger.clear_popping()
                    open_queues.remove(q)
                    continue
                crashpoint("after_pop")
                pulls += 1
                if self.opts.order_fairness:
                    self._rr = self.opts.queues.index(q) + 1
                live[q.id] = live.get(q.id, 0) + 1
                outcome = self.submit_task(str(entry["task"]), q)
                if outcome is Outcome.SUBMITTED:
                    submitted += 1
                elif outcome.pauses_pulling:
                    return submitted
                else:
                    live[q.id] -= 1
        return submitted

    def submit_task(self, task_id: str, q: QueueRef) -> Outcome:
        """Render and submit one popped task; the ledger row follows each step.

        pulled → still queued? (else skipped) → job script (:func:`render_for`) → rendered →
        sbatch → submitted. A task that cannot be rendered or that sbatch rejects fails with
        the reason; a submit limit or a scheduler that does not answer puts the task back at
        the head of its queue and pauses pulling (unless the job turns out to exist).

        Whatever the task record holds, this task ends here and the queue goes on: anything
        it makes go wrong (a ``container`` that is a string, a field of the wrong type, ...)
        fails the task with the reason, never the submitter. Only a stop during a server
        outage (:class:`ServerUnreachable`) leaves the row ``pulled`` for the restart.
        """
        self.ledger.record_pulled(task_id, q.id, q.name)
        log.info("task %s queue %s: pulled", task_id, q.name)
        try:
            return self._submit(task_id, q)
        except ServerUnreachable:
            raise
        except SchedulerError as exc:
            return self._back_off(task_id, q, f"scheduler error: {exc}", transient=True)
        except ApiError as exc:
            why = f"the server refused a call about this task: {exc}"
        except HpcAgentError as exc:  # e.g. ContainerError: a container field that is no object
            why = f"invalid task record: {exc}"
        except Exception as exc:  # a task record no one foresaw: it must not stop the queue
            log.exception("task %s queue %s: cannot be handled", task_id, q.name)
            why = f"hpcagent-slurm cannot handle this task record ({type(exc).__name__}: {exc})"
        try:
            return self._fail(task_id, q, "invalid task", why)
        except ApiError as exc:
            self.ledger.mark_finished(task_id, f"abandoned: {_one_line(why)}")
            log.warning(
                "task %s queue %s: %s; could not fail it either: %s", task_id, q.name, why, exc
            )
            return Outcome.FAILED

    def _submit(self, task_id: str, q: QueueRef) -> Outcome:
        task = taskops.get_task(self.client, task_id)
        if task is None or task.get("status") != "queued":
            status = task.get("status") if task else "deleted"
            self.ledger.mark_finished(task_id, f"skipped: task {status}")
            log.info("task %s queue %s: skipped (task %s)", task_id, q.name, status)
            return Outcome.SKIPPED
        extra = self.opts.task_vars(task_id, q) if self.opts.task_vars is not None else None
        try:
            script = render_for(task, q, self.opts, self.config, extra, names=self.names)
        except ImagePullError as exc:
            return self._fail(task_id, q, "image pull failed", str(exc))
        except TemplateError as exc:
            return self._fail(task_id, q, "template error", f"template error: {exc}")
        path = write_script(self.opts.state_dir / "scripts" / f"{job_name(task_id)}.sh", script)
        self.ledger.mark_rendered(task_id, path)
        crashpoint("after_render")
        try:
            job_id = self.scheduler.submit(path, job_name=job_name(task_id))
        except SubmitLimitError as exc:
            return self._back_off(task_id, q, f"submit limit: {exc.stderr.strip() or exc}")
        except TransientSchedulerError as exc:
            # The scheduler may have taken the job before it failed to answer: look it up
            # by name before putting the task back (never two jobs for one task).
            found = self.scheduler.find_by_name(job_name(task_id))
            if not found:
                return self._back_off(task_id, q, f"scheduler unavailable: {exc}", transient=True)
            job_id = found[0]
            log.info("task %s queue %s job %s: found after %s", task_id, q.name, job_id, exc)
        except SubmitError as exc:
            # The scheduler's message names its command and keeps its words ("sbatch rejected
            # the job: ...", "qsub rejected the job: ...").
            return self._fail(task_id, q, "submit rejected", _one_line(str(exc)))
        crashpoint("after_sbatch")
        self.ledger.mark_submitted(task_id, job_id)
        self.submitted_total += 1
        log.info("task %s queue %s job %s: submitted", task_id, q.name, job_id)
        # Recording the job on the task (2 server calls) runs beside the next submissions;
        # the tracker waits for these writes before it writes anything about the same tasks.
        self.tracker.defer(self._record, task_id, job_id, q.name)
        return Outcome.SUBMITTED

    def _fail(self, task_id: str, q: QueueRef, reason: str, message: str) -> Outcome:
        """Fail the task (status reason ``reason``, status message ``message``), settle its
        ledger row and log it (both on one line)."""
        taskops.fail(self.client, task_id, reason, message)
        self.ledger.mark_finished(task_id, f"failed: {_one_line(message)}")
        log.info("task %s queue %s: failed (%s)", task_id, q.name, _one_line(message))
        return Outcome.FAILED

    def _record(self, task_id: str, job_id: str, queue_name: str) -> None:
        try:
            taskops.record_job(
                self.client,
                task_id,
                job_id=job_id,
                scheduler=self.scheduler.name,
                queue_name=queue_name,
                worker_id=self.opts.worker_id,
            )
            # Beside the loop, so the job may have run and ended already: only while queued.
            taskops.set_queued_message(
                self.client, task_id, f"{self.scheduler.job_label} {job_id}: PENDING"
            )
        except ApiError as exc:
            log.warning(
                "task %s job %s: could not record the job on the task: %s", task_id, job_id, exc
            )

    def _back_off(self, task_id: str, q: QueueRef, why: str, *, transient: bool = False) -> Outcome:
        """Put the task back at the head of its queue and pause pulling for a while."""
        back = taskops.requeue_front(self.client, task_id, q.id, why)
        self.ledger.mark_finished(task_id, f"requeued: {why}" if back else "withdrawn")
        self._backoff_until = time.monotonic() + self.opts.limit_backoff_s
        log.info(
            "task %s queue %s: back in queue (%s); pausing pulls for %.0f s",
            task_id,
            q.name,
            why,
            self.opts.limit_backoff_s,
        )
        return Outcome.TRANSIENT if transient else Outcome.LIMIT

    # -- reporting ---------------------------------------------------------------
    def report(self) -> None:
        """``workers.status_report`` with the queues it serves and the jobs it holds.

        No ``task`` field: the server would take it as "this worker runs that task",
        which is the executor's claim to make, not the submitter's. The jobs go where a
        real ClearML server keeps them for a worker: a tag ``slurm_jobs:<n>`` on the report,
        and the worker's runtime properties (:func:`held_jobs`; ``hpcagent_role``;
        ``hpcagent_jobs``: :func:`job_rows` as JSON, what the web UI's workers page shows),
        sent when they change and at least every ``PROPS_REFRESH_S`` (they expire, so a dead
        submitter's vanish).
        """
        live = self.ledger.live()
        held = held_jobs(live, self.scheduler.job_label)
        count_key = next(iter(held))
        held[PROP_ROLE] = self.opts.role
        rows = job_rows(live, self.tracker.last_status)
        held[PROP_JOBS] = json.dumps(rows, separators=(",", ":"))
        body: dict[str, Any] = {
            "worker": self.opts.worker_id,
            "timestamp": int(time.time() * 1000),
            "queues": [q.id for q in self.opts.queues],
            "tags": [f"{count_key}:{held[count_key]}"],
        }
        if self.opts.report_extra is not None:
            body.update(self.opts.report_extra())
        try:
            self.client.send("workers.status_report", body)
        except ApiError:
            log.debug("status report failed", exc_info=True)
        now = time.monotonic()
        if not self._held_props or (
            held == self._props_sent and now - self._props_sent_at < PROPS_REFRESH_S
        ):
            return
        props = [{"key": k, "value": v, "expiry": PROPS_EXPIRY_S} for k, v in held.items()]
        try:
            if not self.client.workers.set_runtime_properties(props, self.opts.worker_id):
                self._held_props = False  # no such endpoint (compat logged it): jobs in tags
                return
        except ApiError:
            log.debug("could not set the worker runtime properties", exc_info=True)
            return
        self._props_sent, self._props_sent_at = held, now


def _one_line(text: str) -> str:
    """``text``'s non-blank lines joined with `` | `` (for the ledger and the log)."""
    return " | ".join(x.strip() for x in text.splitlines() if x.strip())


#: Runtime properties of the worker expire after this long unless sent again.
PROPS_EXPIRY_S = 600
#: The held-jobs runtime properties are sent again at least this often.
PROPS_REFRESH_S = 120.0
#: At most this many ``job:task`` pairs are listed (the count is always exact).
MAX_LISTED_JOBS = 200


def held_jobs(live: list[Entry], job_label: str = "slurm job") -> dict[str, str]:
    """The worker runtime properties naming the jobs the submitter holds (string values).

    ``{"slurm_jobs": "<n>", "slurm_job_ids": "<job>:<task>,..."}`` for the label "slurm job"
    ("local job" gives ``local_jobs``/``local_job_ids``); the count comes first. Only rows
    with a job id count; the list is cut at ``MAX_LISTED_JOBS`` with a ``+N more`` note.
    """
    base = job_label.strip().replace(" ", "_") or "job"
    pairs = sorted(f"{e.job_id}:{e.task_id}" for e in live if e.job_id)
    listed = ",".join(pairs[:MAX_LISTED_JOBS])
    if len(pairs) > MAX_LISTED_JOBS:
        listed += f",+{len(pairs) - MAX_LISTED_JOBS} more"
    return {f"{base}s": str(len(pairs)), f"{base}_ids": listed}


#: Worker runtime property: "submitter" (hpcagent-slurm) or "daemon" (hpcagent daemon).
PROP_ROLE = "hpcagent_role"
#: Worker runtime property: the held jobs as a JSON array of :func:`job_rows`.
PROP_JOBS = "hpcagent_jobs"


def job_rows(live: list[Entry], statuses: Mapping[str, JobStatus]) -> list[dict[str, str]]:
    """The held jobs with the scheduler's last word on each (the first ``MAX_LISTED_JOBS``):
    ``{job, task, queue, state, node, reason}``; ``state`` is "" until the first tracking round
    after the submission, ``reason`` is why a pending job waits (``BeginTime``, ``Resources``).
    """
    rows = []
    for entry in sorted((e for e in live if e.job_id), key=lambda e: (e.pulled_at, e.task_id)):
        js = statuses.get(entry.task_id)
        reason = js.reason if js is not None and js.reason not in ("None", "(null)") else ""
        rows.append(
            {
                "job": str(entry.job_id),
                "task": entry.task_id,
                "queue": entry.queue_name,
                "state": js.state.value if js is not None else "",
                "node": js.nodes if js is not None else "",
                "reason": reason,
            }
        )
    return rows[:MAX_LISTED_JOBS]
