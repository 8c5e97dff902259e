"""The submitter's faults of the fault suite (tests/chaos.py), on a private Slurm
(tests/private_slurm.py: its own slurmctld, slurmdbd and slurmd, so that stopping them
disturbs no one else on the machine):

* ``submitter-kill9`` — ``hpcagent-slurm`` killed with SIGKILL at random points: its first run
  kills itself at one of its exact crash points (``HPCAGENT_TEST_CRASH_AT``, picked at random:
  after a pop, after rendering, right after sbatch, while tracking, while writing a status),
  later runs are killed from outside at random moments; each time it is started again on the
  same state folder and re-adopts its jobs;
* ``slurm-outage`` — slurmctld and slurmdbd stopped (SIGTERM, as an administrator does) for
  ``rig.slurm_outage_s`` seconds (120 in ``make chaos``) while tasks run and more are
  submitted, then started again; the submitter waits, says so in one line per state change
  (hpcagent/outage.py), and reconciles.

Every job runs the real ``hpcagent execute`` (the task's script writes its ``runs/`` line).
Besides the runs, a task is duplicated when the private cluster's accounting holds more than
one job for it; for ``slurm-outage`` a submitter log with more than one "unreachable" line per
daemon, or without the matching "back after" line, counts as an error.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from typing import Any

from helpers import stop_process
from private_slurm import PrivateSlurm

from hpcagent.submitter.options import job_name

TEMPLATE = """#!/bin/bash
#SBATCH --output={out}/job-%j.out
#SBATCH --time=00:15:00
${{CLEARML_AGENT_EXECUTE}}
"""

CRASH_POINTS = ["after_pop", "after_render", "after_sbatch", "tracking", "writing_status"]


def private_slurm(rig: Any) -> PrivateSlurm:
    """The rig's private Slurm, started on first use (closed by ``rig.close``)."""
    if rig.slurm is None:
        rig.slurm = PrivateSlurm(rig.log)  # set first: rig.close removes a half-started one
        rig.slurm.start()
    slurm: PrivateSlurm = rig.slurm
    return slurm


class Submitter:
    """One ``hpcagent-slurm`` serving ``queue`` on the private Slurm; started again on the same
    state folder after every kill; its output appended to one log."""

    def __init__(self, rig: Any, fault: str, queue: str) -> None:
        self.slurm = private_slurm(rig)
        work = rig.root / f"submitter-{fault}"
        (work / "jobs").mkdir(parents=True)
        self.template = work / "chaos.template"
        self.template.write_text(TEMPLATE.format(out=work / "jobs"))
        conf = rig.conf(fault, rig.root / f"builds-{fault}")
        data = json.loads(conf.read_text())
        data["slurm"] = {"state_dir": str(work / "state")}
        conf.write_text(json.dumps(data))
        self.conf = conf
        env = {k: v for k, v in rig.env(conf).items() if not k.startswith("SLURM_")}
        self.env = {**env, **self.slurm.env}
        self.argv = [
            sys.executable, "-c", "from hpcagent.cli import slurm_main; slurm_main()",
            "--config-file", str(conf), "--scheduler", "slurm", "--poll-interval", "1",
            "--template-files", str(self.template), "--queue", queue,
        ]  # fmt: skip
        self.log = work / "submitter.log"
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits = 0  # exits the suite did not cause

    def start(self, crash_at: str | None = None) -> None:
        env = dict(self.env)
        if crash_at:
            env["HPCAGENT_TEST_CRASH_AT"] = crash_at
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=env, cwd=self.work, stdout=out, stderr=subprocess.STDOUT
            )

    def keep(self) -> None:
        """A submitter that ended by itself is started again (systemd's Restart=); one that
        killed itself at its crash point is expected to."""
        if self.proc is not None and self.proc.poll() is not None:
            if self.proc.returncode != -signal.SIGKILL:
                self.exits += 1
            self.start()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=120)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _jobs_per_task(slurm: PrivateSlurm, tasks: dict[str, str]) -> dict[str, int]:
    """How many jobs the private cluster's accounting holds for each task (slurmdbd records
    asynchronously: waits up to a minute for every task to have one)."""
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while True:
        res = slurm.cmd("sacct", "-X", "-n", "-P", "-a", "-o", "JobID,JobName", "-S", "now-1days")
        names = [line.split("|", 1)[1] for line in res.stdout.splitlines() if "|" in line]
        counts = {tid: names.count(job_name(tid)) for tid in tasks}
        if all(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(2)


def _finish(rig: Any, fault: str, sub: Submitter, tasks: dict[str, str], timeout: float) -> Any:
    """Settle, stop the submitter, count (``rig.tally``) and add the duplicates that sacct
    shows (a second job for a task, whether or not its script ran twice)."""
    try:
        states = rig.settle(list(tasks), timeout, keep=sub.keep)
    finally:
        sub.stop()
    t = rig.tally(fault, tasks, states)
    runs = {label: rig.runs / label for label in tasks.values()}
    for tid, jobs in _jobs_per_task(sub.slurm, tasks).items():
        ran = len(runs[tasks[tid]].read_text().splitlines()) if runs[tasks[tid]].exists() else 0
        if jobs > 1 and ran <= 1:
            t.duplicated += 1
        if jobs != 1:
            t.notes.append(f"{tasks[tid]}: {jobs} Slurm jobs")
    if sub.exits:
        t.notes.append(f"submitter exited by itself {sub.exits}x, restarted")
    return t


def submitter_kill9(rig: Any, n: int, rng: random.Random) -> Any:
    fault = "submitter-kill9"
    qid = rig.queue(f"chaos-{fault}")
    sub = Submitter(rig, fault, f"chaos-{fault}")
    tasks = rig.submit(qid, fault, n, rng)
    point = rng.choice(CRASH_POINTS)
    sub.start(crash_at=point)  # kills itself there, or at the latest is killed below
    kills = 0
    try:
        deadline = time.monotonic() + 180
        while sub.proc is not None and sub.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        sub.kill9()
        kills += 1
        sub.start()
        for _ in range(2):  # then from outside, at random moments
            time.sleep(rng.uniform(1.0, 8.0))
            sub.kill9()
            kills += 1
            time.sleep(rng.uniform(0.2, 2.0))
            sub.start()
    except BaseException:
        sub.stop()
        raise
    t = _finish(rig, fault, sub, tasks, 600.0)
    t.notes.append(f"{kills} kill -9 (the first at its crash point {point})")
    return t


def _log_lines(text: str, what: str) -> tuple[int, int]:
    return text.count(f"{what} unreachable since"), text.count(f"{what} back after")


def slurm_outage(rig: Any, n: int, rng: random.Random) -> Any:
    fault = "slurm-outage"
    qid = rig.queue(f"chaos-{fault}")
    sub = Submitter(rig, fault, f"chaos-{fault}")
    outage_s = float(rig.slurm_outage_s)
    tasks = rig.submit(qid, fault, n, rng)
    sub.start()
    try:
        deadline = time.monotonic() + 300
        while not any((rig.runs / label).exists() for label in tasks.values()):
            if time.monotonic() > deadline:
                break
            sub.keep()
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 2.0))
        sub.slurm.stop_controllers()  # slurmctld answers for some seconds after SIGTERM
        down = time.monotonic()
        rig.log(f"  slurmctld and slurmdbd stopped for {outage_s:.0f} s")
        # more tasks while they are down, at random moments of the outage
        for i, when in enumerate(sorted(rng.uniform(0.0, outage_s * 0.8) for _ in range(n))):
            time.sleep(max(0.0, down + when - time.monotonic()))
            tasks.update(rig.submit(qid, f"{fault}-during{i}", 1, rng))
            sub.keep()
        time.sleep(max(0.0, down + outage_s - time.monotonic()))
        sub.slurm.start_controllers()
        rig.log(f"  slurmctld and slurmdbd back after {time.monotonic() - down:.0f} s")
    except BaseException:
        sub.stop()
        raise
    t = _finish(rig, fault, sub, tasks, 600.0 + outage_s)
    text = sub.text()
    for what in ("slurmctld", "slurmdbd (sacct)"):
        gone, back = _log_lines(text, what)
        t.notes.append(f"{what}: {gone} 'unreachable' / {back} 'back' line(s)")
        if gone > 1 or gone != back:
            t.errors += 1
    if _log_lines(text, "slurmctld")[0] == 0:
        t.errors += 1  # the outage must have been seen, not slept through
        t.notes.append("the submitter never saw slurmctld go")
    return t
