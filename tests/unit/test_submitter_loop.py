"""The submitter loop against the real embedded server and the LocalScheduler.

The job's ``${CLEARML_AGENT_EXECUTE}`` runs ``fake_executor.py`` here (it marks the task
started and completed through the API, like ``hpcagent execute`` would); the e2e tests
under tests/slurm use the real executor.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpcagent.api import ApiClient
from hpcagent.daemon.run import stop_running
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.submitter.ledger import FINISHED, SUBMITTED, Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions, job_name

FAKE_EXECUTOR = """
import os, sys, time
from hpcagent.api import ApiClient
from hpcagent.daemon.run import stop_running
task = sys.argv[sys.argv.index("--id") + 1]
c = ApiClient(os.environ["T_URL"], os.environ["T_KEY"], os.environ["T_SECRET"])
time.sleep(float(os.environ.get("T_DELAY", "0")))
c.send("tasks.started", {"task": task, "force": True})
print("fake executor ran", task, flush=True)
time.sleep(float(os.environ.get("T_SLEEP", "0")))
c.send("tasks.completed", {"task": task, "force": True})
"""

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
${CLEARML_PRE_SETUP}
echo "hello from job for" ${CLEARML_TASK.name}
${CLEARML_AGENT_EXECUTE}
"""

NO_EXEC_TEMPLATE = """#!/bin/bash
echo "job output line for" ${CLEARML_TASK.name}
exit ${CLEARML_TASK.hyperparams.properties.rc.value:3}
"""


class Rig:
    """A submitter wired to a server, a LocalScheduler and a ledger in tmp_path."""

    def __init__(self, tmp_path: Path, client: ApiClient, server: Any) -> None:
        self.tmp = tmp_path
        self.client = client
        self.server = server
        fake = tmp_path / "fake_executor.py"
        fake.write_text(FAKE_EXECUTOR)
        self.fake = fake
        self.scheduler = LocalScheduler(output_dir=tmp_path / "out", max_parallel=4)
        self.ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
        self.pre = ""

    def queue(self, name: str) -> str:
        return str(self.client.send("queues.create", {"name": name})["id"])

    def task(self, name: str, queue_id: str, **fields: Any) -> str:
        tid = str(
            self.client.send("tasks.create", {"name": name, "type": "training", **fields})["id"]
        )
        self.client.send("tasks.enqueue", {"task": tid, "queue": queue_id})
        return tid

    def template(self, text: str, name: str = "t.template") -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p

    def submitter(self, queues: list[QueueRef], **kw: Any) -> Submitter:
        srv = self.server
        pre = f"export T_URL={srv.url} T_KEY={srv.access_key} T_SECRET={srv.secret_key}"
        opts = SubmitterOptions(
            queues=queues,
            state_dir=self.tmp / "state",
            worker_id="test:hpcagent-slurm",
            poll_interval_s=0.1,
            hpcagent_argv=[sys.executable, str(self.fake)],
            pre_setup=f"{pre}\n{self.pre}",
            **kw,
        )
        s = Submitter(self.client, self.scheduler, self.ledger, opts, lambda p, d=None: d)
        s.start()
        return s

    def get(self, tid: str) -> dict[str, Any]:
        return dict(self.client.send("tasks.get_all", {"id": [tid]})["tasks"][0])

    def until_settled(self, s: Submitter, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.cycle()
            if not self.ledger.live():
                return
            time.sleep(0.1)
        raise AssertionError(f"still live: {self.ledger.live()}")


def test_task_runs_to_completion(rig: Rig) -> None:
    rig.pre = "export T_DELAY=3"  # the task stays queued while we look at it
    qid = rig.queue("queue-1")
    tid = rig.task("my task; $(touch pwned)", qid)
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])
    assert s.cycle() == 1
    entry = rig.ledger.get(tid)
    assert entry is not None
    assert entry.state == SUBMITTED
    assert entry.job_id
    task = rig.get(tid)
    assert task["status"] == "queued"
    assert task["status_message"].startswith(f"local job {entry.job_id}: ")  # its job_label
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    assert (props["job-id"], props["job-scheduler"]) == (entry.job_id, "local")
    assert (props["job-queue"], props["job-worker"]) == ("queue-1", "test:hpcagent-slurm")
    assert not task.get("runtime")  # runtime is the executor's and the SDK's, never ours
    script = Path(str(entry.script_path))
    assert script.stat().st_mode & 0o777 == 0o700
    rig.until_settled(s)
    assert rig.get(tid)["status"] == "completed", rig.get(tid)["status_message"]
    path = rig.scheduler.output_path(str(entry.job_id))
    assert path is not None
    out = path.read_text()
    assert "hello from job for my task; $(touch pwned)" in out
    assert not (Path.cwd() / "pwned").exists()
    # how the job ended and its output's tail, on the task (the web UI's Info tab shows them)
    props = {k: v["value"] for k, v in rig.get(tid)["hyperparams"]["properties"].items()}
    assert props["job-end"] == "COMPLETED"
    assert props["job-output"] == str(path)
    assert props["job-output-tail"].splitlines()[-1] == f"fake executor ran {tid}"
    assert "hello from job for my task; $(touch pwned)" in props["job-output-tail"]
    finished = rig.ledger.get(tid)
    assert finished is not None
    assert finished.state == FINISHED


def test_job_ending_without_report_fails_task_with_tail(rig: Rig) -> None:
    qid = rig.queue("queue-1")
    tid = rig.task("no executor", qid)
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(NO_EXEC_TEMPLATE))])
    rig.until_settled(s)
    task = rig.get(tid)
    assert task["status"] == "failed"
    assert "FAILED" in task["status_reason"]
    assert "exit code: 3" in task["status_message"]
    assert "job output line for no executor" in task["status_message"]
    props = {k: v["value"] for k, v in task["hyperparams"]["properties"].items()}
    assert props["job-end"] == "FAILED (exit code 3)"
    assert props["job-output-tail"] == "job output line for no executor"


def test_missing_template_value_fails_task_without_job(rig: Rig) -> None:
    qid = rig.queue("queue-1")
    tid = rig.task("one task", qid)
    tmpl = rig.template(
        "#!/bin/bash\n\n#SBATCH --partition=${CLEARML_TASK.hyperparams.x.y.value}\n"
    )
    s = rig.submitter([QueueRef(qid, "queue-1", tmpl)])
    assert s.cycle() == 0
    task = rig.get(tid)
    assert task["status"] == "failed"
    assert "${CLEARML_TASK.hyperparams.x.y.value}" in task["status_message"]
    assert f"{tmpl}:3" in task["status_message"]
    assert rig.scheduler.find_by_name(job_name(tid)) == []


def test_max_jobs_per_queue(rig: Rig) -> None:
    qid = rig.queue("queue-1")
    tids = [rig.task(f"task {i}", qid) for i in range(5)]
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))], max_jobs=2)
    assert s.cycle() == 2
    assert rig.client.send("queues.get_num_entries", {"queue": qid})["num"] == 3
    seen_max = 0
    deadline = time.monotonic() + 90
    while rig.ledger.live() or rig.client.send("queues.get_num_entries", {"queue": qid})["num"]:
        assert time.monotonic() < deadline
        s.cycle()
        seen_max = max(seen_max, len(rig.ledger.live()))
        assert len(rig.ledger.live()) <= 2
        time.sleep(0.05)
    assert seen_max == 2
    assert all(rig.get(t)["status"] == "completed" for t in tids)


def _pull_order(rig: Rig, fairness: bool) -> list[str]:
    qids = [rig.queue(f"{'fair' if fairness else 'prio'}-{i}") for i in range(3)]
    names = {}
    for i, qid in enumerate(qids):
        for j in range(2):
            names[rig.task(f"q{i}-t{j}", qid)] = f"q{i}"
    tmpl = rig.template(TEMPLATE)
    s = rig.submitter(
        [QueueRef(q, f"q{i}", tmpl) for i, q in enumerate(qids)], order_fairness=fairness
    )
    s.cycle()
    entries = sorted(rig.ledger.recent(100), key=lambda e: e.pulled_at)
    return [names[e.task_id] for e in entries if e.task_id in names]


def test_priority_order(rig: Rig) -> None:
    assert _pull_order(rig, fairness=False) == ["q0", "q0", "q1", "q1", "q2", "q2"]


def test_order_fairness(rig: Rig) -> None:
    assert _pull_order(rig, fairness=True) == ["q0", "q1", "q2", "q0", "q1", "q2"]


def test_abort_while_pending_cancels_job(rig: Rig) -> None:
    rig.scheduler.max_parallel = 1
    qid = rig.queue("queue-1")
    first = rig.task("blocker", qid)
    second = rig.task("aborted", qid)
    tmpl = rig.template("#!/bin/bash\nsleep 30\n")
    s = rig.submitter([QueueRef(qid, "queue-1", tmpl)])
    assert s.cycle() == 2
    s.cycle()
    job2 = str(rig.ledger.get(second).job_id)  # type: ignore[union-attr]
    assert rig.scheduler.status([job2])[job2].state.value == "PENDING"
    assert "PENDING" in rig.get(second)["status_message"]
    rig.client.send("tasks.stop", {"task": second})
    rig.client.send("tasks.stop", {"task": first})
    rig.until_settled(s, timeout=30)
    assert rig.scheduler.status([job2])[job2].state.value == "CANCELLED"
    assert rig.get(second)["status"] == "stopped"


def test_restart_requeues_pulled_but_unsubmitted(rig: Rig) -> None:
    qid = rig.queue("queue-1")
    tid = rig.task("crashed", qid)
    entry = rig.client.queues.get_next_task(qid)
    assert entry is not None
    assert entry["task"] == tid
    rig.ledger.record_pulled(tid, qid, "queue-1")  # the crash came right after this
    assert rig.client.send("queues.get_num_entries", {"queue": qid})["num"] == 0
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])  # start() recovers
    queue = rig.client.send("queues.get_by_id", {"queue": qid})["queue"]
    assert [e["task"] for e in queue["entries"]] == [tid]
    rig.until_settled(s)
    assert rig.get(tid)["status"] == "completed"


def test_restart_requeued_task_is_popped_first(rig: Rig) -> None:
    qid = rig.queue("queue-1")
    tid = rig.task("popped before the crash", qid)
    entry = rig.client.queues.get_next_task(qid)
    assert entry is not None
    assert entry["task"] == tid
    rig.ledger.record_pulled(tid, qid, "queue-1")  # the crash came right after this
    later = [rig.task(f"enqueued while down {i}", qid) for i in range(2)]
    rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])  # start() recovers, no pull
    queue = rig.client.send("queues.get_by_id", {"queue": qid})["queue"]
    assert [e["task"] for e in queue["entries"]] == [tid, *later]
    popped = rig.client.queues.get_next_task(qid)
    assert popped is not None
    assert popped["task"] == tid


@pytest.mark.parametrize("legacy", [False, True], ids=["name", "legacy-name"])
def test_restart_adopts_submitted_job_by_name(rig: Rig, legacy: bool) -> None:
    """A job found by its name is adopted; so is one an older version named
    ``clearml_task_<id>`` (an upgrade re-adopts the jobs it left running)."""
    qid = rig.queue("queue-1")
    tid = rig.task("adopt me", qid)
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])
    rig.client.queues.get_next_task(qid)
    rig.ledger.record_pulled(tid, qid, "queue-1")
    job = rig.scheduler.submit(
        rig.template(TEMPLATE.replace("${CLEARML_AGENT_EXECUTE}", "true"), "x.sh"),
        job_name=f"clearml_task_{tid}" if legacy else job_name(tid),
    )
    s.recover()  # as after a crash right after sbatch returned
    e = rig.ledger.get(tid)
    assert e is not None
    assert e.state == SUBMITTED
    assert e.job_id == job
    assert rig.scheduler.find_by_name(job_name(tid)) == ([] if legacy else [job])


def test_job_names_tell_tasks_apart_in_8_characters() -> None:
    """squeue's default format shows 8 characters of a job's name: they are the task id's."""
    a, b = "3f2a1c9e" + "0" * 24, "77aa01bc" + "0" * 24
    assert job_name(a)[:8] == a[:8]
    assert job_name(a)[:8] != job_name(b)[:8]
    assert job_name(a).endswith(f"clearml_task_{a}")


def test_submit_limit_puts_task_back_and_backs_off(rig: Rig) -> None:
    """sbatch refusing with a submit limit (faked at the subprocess seam only)."""
    from hpcagent.process import CommandResult
    from hpcagent.scheduler.slurm import SlurmScheduler

    calls: list[list[str]] = []

    def runner(argv: list[str], **_: Any) -> CommandResult:
        calls.append(list(argv))
        err = (
            "sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
            "(job submit limit, user's size and/or time limits)\n"
        )
        return CommandResult(tuple(argv), 1, "", err)

    rig.scheduler = SlurmScheduler(runner=runner)  # type: ignore[assignment]
    qid = rig.queue("queue-1")
    first = rig.task("limited-1", qid)
    second = rig.task("limited-2", qid)
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])
    assert s.cycle() == 0
    sbatches = [c for c in calls if c[0] == "sbatch"]
    assert len(sbatches) == 1  # backed off after the first refusal: the second task waits
    queue = rig.client.send("queues.get_by_id", {"queue": qid})["queue"]
    # both in the queue, the refused one back at the head: it is the next one popped
    assert [e["task"] for e in queue["entries"]] == [first, second]
    task = rig.get(first)
    assert task["status"] == "queued"
    assert task["status_message"].startswith("back in queue: submit limit")
    assert s.cycle() == 0  # still backing off: no new sbatch
    assert len([c for c in calls if c[0] == "sbatch"]) == 1


def _worker(rig: Rig, worker_id: str) -> dict[str, Any]:
    workers = rig.client.send("workers.get_all", {})["workers"]
    return next(w for w in workers if w["id"] == worker_id)


def test_worker_report_lists_held_jobs(rig: Rig) -> None:
    rig.pre = "export T_DELAY=2"  # the jobs stay alive for the first report
    qid = rig.queue("queue-1")
    tids = [rig.task(f"held {i}", qid) for i in range(2)]
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])
    assert s.cycle() == 2  # submits both, then reports
    jobs = {e.task_id: str(e.job_id) for e in rig.ledger.live()}
    assert set(jobs) == set(tids)
    worker = _worker(rig, "test:hpcagent-slurm")
    assert worker["tags"] == ["local_jobs:2"]  # named after the scheduler's job_label
    assert [q["id"] for q in worker["queues"]] == [qid]
    props = rig.client.send("workers.get_runtime_properties", {"worker": "test:hpcagent-slurm"})
    held = {p["key"]: p["value"] for p in props["runtime_properties"]}
    assert held["local_jobs"] == "2"
    assert sorted(held["local_job_ids"].split(",")) == sorted(f"{j}:{t}" for t, j in jobs.items())
    # the web UI's job list: job, task, queue and the scheduler's state of each
    assert held["hpcagent_role"] == "submitter"
    rows = json.loads(held["hpcagent_jobs"])
    assert {r["task"]: r["job"] for r in rows} == jobs
    assert {r["queue"] for r in rows} == {"queue-1"}
    assert all(set(r) == {"job", "task", "queue", "state", "node", "reason"} for r in rows)
    s.cycle()  # a tracking round: the local scheduler's state of each job
    props = rig.client.send("workers.get_runtime_properties", {"worker": "test:hpcagent-slurm"})
    held = {p["key"]: p["value"] for p in props["runtime_properties"]}
    states = {r["state"] for r in json.loads(held["hpcagent_jobs"])}
    assert states
    assert states <= {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"}
    rig.until_settled(s)
    s.report()  # the jobs are gone: the count and the list follow at once
    assert _worker(rig, "test:hpcagent-slurm")["tags"] == ["local_jobs:0"]
    props = rig.client.send("workers.get_runtime_properties", {"worker": "test:hpcagent-slurm"})
    held = {p["key"]: p["value"] for p in props["runtime_properties"]}
    assert held == {
        "local_jobs": "0",
        "local_job_ids": "",
        "hpcagent_role": "submitter",
        "hpcagent_jobs": "[]",
    }


def test_held_jobs_properties_are_capped() -> None:
    from hpcagent.submitter.ledger import Entry
    from hpcagent.submitter.loop import MAX_LISTED_JOBS, held_jobs

    def entry(i: int, job: str | None) -> Entry:
        return Entry(f"{i:032x}", "q", "q", "submitted", job, None, None, None, 0.0, 0.0)

    live = [entry(i, str(1000 + i)) for i in range(MAX_LISTED_JOBS + 5)] + [entry(9999, None)]
    held = held_jobs(live)
    assert held["slurm_jobs"] == str(MAX_LISTED_JOBS + 5)  # a row without a job does not count
    listed = held["slurm_job_ids"].split(",")
    assert len(listed) == MAX_LISTED_JOBS + 1
    assert listed[-1] == "+5 more"
    assert listed[0] == f"1000:{0:032x}"
    assert set(held_jobs(live, "local job")) == {"local_jobs", "local_job_ids"}


def test_requeue_on_server_without_move_warns_and_keeps_task(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An older server answers 404 to queues.move_task_to_front: the task waits at the tail."""
    from hpcagent.errors import ApiError
    from hpcagent.submitter import taskops

    def unsupported(queue_id: str, task_id: str) -> int:
        raise ApiError("queues.move_task_to_front", 404, 0, "Unknown endpoint")

    qid = rig.queue("queue-1")
    tid = rig.task("old server", qid)
    assert rig.client.queues.get_next_task(qid) is not None
    other = rig.task("enqueued meanwhile", qid)
    monkeypatch.setattr(rig.client.queues, "move_task_to_front", unsupported)
    with caplog.at_level("WARNING", logger="hpcagent.submitter"):
        assert taskops.requeue_front(rig.client, tid, qid, "test") is True
    queue = rig.client.send("queues.get_by_id", {"queue": qid})["queue"]
    assert [e["task"] for e in queue["entries"]] == [other, tid]
    assert any("cannot move it to the front" in r.getMessage() for r in caplog.records)


def test_daemon_stop_ends_a_silent_task_stopped_not_failed(rig: Rig) -> None:
    """The daemon's own stop cancels the job; an executor killed before it reported (here:
    one with no signal handler) leaves its task stopped with the reason, never failed."""
    rig.pre = "export T_SLEEP=600"  # started, then never reports on its own
    qid = rig.queue("queue-1")
    tid = rig.task("silent", qid)
    s = rig.submitter([QueueRef(qid, "queue-1", rig.template(TEMPLATE))])
    assert s.cycle() == 1
    deadline = time.monotonic() + 60
    while rig.get(tid)["status"] != "in_progress" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rig.get(tid)["status"] == "in_progress"
    stop_running(s, rig.scheduler, wait_s=60)
    task = rig.get(tid)
    assert task["status"] == "stopped", task["status_message"]
    reason = "terminated by signal SIGTERM (daemon test:hpcagent-slurm stopped)"
    assert task["status_reason"] == reason
    assert "CANCELLED" in task["status_message"]
    assert not rig.ledger.live()
