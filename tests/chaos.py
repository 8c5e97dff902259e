"""The fault suite (issue 14.8): real server, real ``hpcagent daemon``, real executors, faults
made on purpose, and per fault the count of tasks submitted, completed, failed with a reason,
lost (must be 0) and duplicated (must be 0).

``make chaos`` runs the full form (``python tests/chaos.py``); ``make test`` runs the short
form through ``tests/e2e/test_chaos.py``. Every random choice comes from one seed, printed
first (``--seed`` repeats a run).

Faults (each on its own queue, with a fresh daemon state folder, one server for the suite):

* ``server-kill9`` — kill -9 of the server at a random moment while tasks run, back after a
  random pause;
* ``daemon-kill9`` — kill -9 of the daemon at a random moment, started again (it re-adopts its
  running tasks);
* ``executor-kill9`` — kill -9 of one running ``hpcagent execute`` (its task must fail with a
  reason, the others complete);
* ``server-sigstop`` — the server paused (SIGSTOP) at random moments for longer than the
  client's read timeout while the daemon pops and tracks, then resumed (pops whose replies are
  lost: the pop id makes them safe);
* ``disk-full`` — the daemon's state folder and the executors' work folder (log spool) on a
  tmpfs of a few MiB, filled to the last byte while tasks arrive and run, then freed (root
  only: without root this fault is reported as not run, never as passed);
* ``submitter-kill9`` — kill -9 of ``hpcagent-slurm`` at random points (its exact crash
  points among them), started again each time: it re-adopts its jobs (tests/chaos_slurm.py);
* ``slurm-outage`` — slurmctld and slurmdbd stopped for 120 s (``--slurm-outage``) while
  tasks run and more are submitted, then started again; the submitter waits, one log line per
  state change, and reconciles (tests/chaos_slurm.py). Both Slurm faults run on a private
  Slurm of their own (tests/private_slurm.py), never on the shared one-host cluster;
* ``hostile-records`` — the task-record corpus (tests/hostile_tasks.py) planted in the
  server's database and run through the daemon; then the server-side corpus
  (tests/hostile_corpus.py, :func:`server_corpus`): bad payloads through every endpoint of the
  same server, then every read for every stored task (a 5xx, an answer without envelope or a
  failed read counts as an error and fails the fault).

A task's script appends one line to ``runs/<label>`` when it starts: more than one line is a
duplicate; a task ends "completed" only if its script ran; "failed with reason" needs a
``status_reason``. Anything else at the deadline (still queued or running, failed without a
reason, completed without a run) is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chaos_slurm import slurm_outage, submitter_kill9  # noqa: E402
from embedded import EmbeddedServer  # noqa: E402
from hostile_corpus import run_corpus  # noqa: E402
from hostile_tasks import CORPUS, plant  # noqa: E402

FINAL = ("completed", "failed", "stopped")


@dataclass
class Tally:
    fault: str
    submitted: int = 0
    completed: int = 0
    failed: int = 0  # failed or stopped, with a reason
    lost: int = 0
    duplicated: int = 0
    errors: int = 0  # broken rules: 5xx, no envelope, failed read; a log line per attempt
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"{self.fault:16} submitted {self.submitted:3}  completed {self.completed:3}  "
            f"failed-with-reason {self.failed:3}  lost {self.lost}  duplicated {self.duplicated}"
            + (f"  errors {self.errors}" if self.errors else "")
            + (f"  ({'; '.join(self.notes)})" if self.notes else "")
        )

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.errors == 0


def _script(runs: Path, label: str, seconds: float) -> dict[str, Any]:
    body = (
        "import pathlib, time\n"
        f"with open(pathlib.Path({str(runs)!r}) / {label!r}, 'a') as fh:\n"
        "    fh.write('run\\n')\n"
        "for i in range(10):\n"
        f"    print({label!r}, 'line', i, flush=True)\n"
        f"    time.sleep({seconds / 10:.3f})\n"
    )
    return {
        "entry_point": "chaos.py",
        "binary": "python3",
        "diff": body,
        "requirements": {"pip": ""},
    }


class Rig:
    """One server for the suite; per fault a queue, a daemon state folder and tasks."""

    def __init__(self, root: Path, seed: int, log: Callable[[str], None] = print,
                 slurm_outage_s: float = 120.0) -> None:  # fmt: skip
        self.root = root
        self.seed = seed
        self.log = log
        self.runs = root / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        #: the private Slurm of the submitter's faults (tests/chaos_slurm.py), once started
        self.slurm: Any = None
        self.slurm_outage_s = slurm_outage_s
        self.server = EmbeddedServer(root / "server-data")
        self.server.start()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_args: list[str] = []
        self.daemon_restarts = 0

    # -- configuration ---------------------------------------------------------------------
    def conf(self, name: str, venvs_dir: Path) -> Path:
        conf = self.root / f"{name}.conf"
        conf.write_text(json.dumps({
            "api": {"api_server": self.server.url,
                    "credentials": {"access_key": self.server.access_key,
                                    "secret_key": self.server.secret_key},
                    # the default retries; a short read timeout, so a paused server
                    # loses replies (pops among them) instead of only slowing them
                    "http": {"timeout_sec": 3}},
            "agent": {"venvs_dir": str(venvs_dir),
                      "venvs_cache": {"path": str(self.root / "venv-cache"),
                                      "free_space_threshold_gb": 0},
                      "package_manager": {"type": "uv", "extra_args": ["--no-index"]},
                      "abort_poll_interval_sec": 1},
            "executor": {"final_flush_timeout_sec": 5, "kill_grace_sec": 3},
        }))  # fmt: skip
        return conf

    def env(self, conf: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "CUDA"))}
        env["CLEARML_CONFIG_FILE"] = str(conf)
        return env

    # -- tasks -----------------------------------------------------------------------------
    def queue(self, name: str) -> str:
        return str(self.server.send("queues.create", {"name": name})["id"])

    def submit(self, qid: str, fault: str, n: int, rng: random.Random) -> dict[str, str]:
        """``n`` tasks (0.5-3 s each) on ``qid``: {task id: label}."""
        out = {}
        for i in range(n):
            label = f"{fault}-{i}"
            body = {"name": label, "type": "training",
                    "script": _script(self.runs, label, rng.uniform(0.5, 3.0))}  # fmt: skip
            tid = str(self.server.send("tasks.create", body)["id"])
            self.server.send("tasks.enqueue", {"task": tid, "queue": qid})
            out[tid] = label
        return out

    def statuses(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        data = self.server.send(
            "tasks.get_all",
            {"id": ids, "only_fields": ["id", "status", "status_reason", "status_message"]},
        )
        return {str(t["id"]): t for t in data["tasks"]}

    def settle(self, ids: list[str], timeout: float,
               keep: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Wait until every task of ``ids`` ended; ``keep`` (the daemon's by default) starts
        again a worker that exited by itself."""
        deadline = time.monotonic() + timeout
        states: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            (keep or self.keep_daemon)()
            with contextlib.suppress(Exception):
                states = self.statuses(ids)
                if len(states) == len(ids) and all(s["status"] in FINAL for s in states.values()):
                    return states
            time.sleep(1.0)
        return states

    def tally(self, fault: str, tasks: dict[str, str], states: dict[str, dict[str, Any]],
              expect_failed: set[str] | None = None) -> Tally:  # fmt: skip
        t = Tally(fault, submitted=len(tasks))
        for tid, label in tasks.items():
            s = states.get(tid) or {}
            runs_file = self.runs / label
            ran = len(runs_file.read_text().splitlines()) if runs_file.exists() else 0
            if ran > 1:
                t.duplicated += 1
                t.notes.append(f"{label} ran {ran} times")
            status = s.get("status")
            if status == "completed" and ran >= 1:
                t.completed += 1
            elif status in ("failed", "stopped") and s.get("status_reason"):
                t.failed += 1
                if expect_failed is not None and label not in expect_failed:
                    t.notes.append(f"{label}: {status} ({s.get('status_reason')})")
            else:
                t.lost += 1
                t.notes.append(f"{label} LOST: {status} ({s.get('status_reason')}), ran {ran}")
        if self.daemon_restarts:
            t.notes.append(f"daemon exited by itself {self.daemon_restarts}x, restarted")
        return t

    # -- the daemon ------------------------------------------------------------------------
    def start_daemon(self, state: Path, conf: Path, queue: str) -> None:
        self.daemon_args = [
            sys.executable, "-c", "from hpcagent.cli import main; main()", "daemon",
            "--state-dir", str(state), "--cpu-only", "--services-mode", "3",
            "--queue", queue, "--poll-interval", "0.3",
        ]  # fmt: skip
        self._daemon_env = self.env(conf)
        self._daemon_log = self.root / f"daemon-{queue}.log"
        self.daemon_restarts = 0
        self._spawn_daemon()

    def _spawn_daemon(self) -> None:
        with self._daemon_log.open("ab") as out:
            self.daemon = subprocess.Popen(
                self.daemon_args, env=self._daemon_env, stdout=out, stderr=subprocess.STDOUT
            )

    def keep_daemon(self) -> None:
        """A daemon that exited by itself is started again (as systemd's Restart= would)."""
        if self.daemon is not None and self.daemon.poll() is not None:
            self.daemon_restarts += 1
            self.log(f"  daemon exited with {self.daemon.returncode}; starting it again")
            self._spawn_daemon()

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            self.daemon.wait(60)

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
                try:
                    self.daemon.wait(90)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            self.daemon = None

    def close(self) -> None:
        self.stop_daemon()
        if self.slurm is not None:
            self.slurm.close()
        if self.server.proc is not None:  # never leave it paused
            with contextlib.suppress(OSError):
                self.server.proc.send_signal(signal.SIGCONT)
        self.server.stop()


# -- the faults ---------------------------------------------------------------------------------


def _run_fault(rig: Rig, fault: str, n: int, rng: random.Random,
               act: Callable[[dict[str, str]], None], *, venvs: Path | None = None,
               state: Path | None = None, timeout: float = 300.0,
               expect_failed: set[str] | None = None) -> Tally:  # fmt: skip
    qid = rig.queue(f"chaos-{fault}")
    conf = rig.conf(fault, venvs or rig.root / f"builds-{fault}")
    tasks = rig.submit(qid, fault, n, rng)
    rig.start_daemon(state or rig.root / f"state-{fault}", conf, f"chaos-{fault}")
    try:
        act(tasks)
        states = rig.settle(list(tasks), timeout)
    finally:
        rig.stop_daemon()
    return rig.tally(fault, tasks, states, expect_failed)


def _started(rig: Rig, tasks: dict[str, str], timeout: float = 180.0) -> None:
    """Wait until one of ``tasks`` runs (its script wrote its line): the faults hit work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((rig.runs / label).exists() for label in tasks.values()):
            return
        rig.keep_daemon()
        time.sleep(0.1)


def server_kill9(rig: Rig, n: int, rng: random.Random) -> Tally:
    def act(tasks: dict[str, str]) -> None:
        _started(rig, tasks)
        time.sleep(rng.uniform(0.0, 2.0))
        assert rig.server.proc is not None
        rig.server.proc.send_signal(signal.SIGKILL)
        rig.server.proc.wait()
        time.sleep(rng.uniform(1.0, 8.0))
        rig.server.start()
        rig.server._token = None

    return _run_fault(rig, "server-kill9", n, rng, act)


def daemon_kill9(rig: Rig, n: int, rng: random.Random) -> Tally:
    def act(tasks: dict[str, str]) -> None:
        _started(rig, tasks)
        for delay in (rng.uniform(0.0, 1.5), rng.uniform(1.5, 5.0)):
            time.sleep(delay)
            rig.kill_daemon(signal.SIGKILL)
            time.sleep(rng.uniform(0.2, 3.0))
            rig._spawn_daemon()

    return _run_fault(rig, "daemon-kill9", n, rng, act)


def _executors(task_ids: set[str]) -> dict[int, str]:
    """pid -> task id of the running ``hpcagent execute --id TASK`` processes of these tasks."""
    out: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = proc.read_bytes().split(b"\0")
            if b"execute" in argv and b"--id" in argv:
                tid = argv[argv.index(b"--id") + 1].decode()
                if tid in task_ids:
                    out[int(proc.parent.name)] = tid
    return out


def executor_kill9(rig: Rig, n: int, rng: random.Random) -> Tally:
    killed: set[str] = set()

    def act(tasks: dict[str, str]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = _executors(set(tasks))
            if found:
                time.sleep(rng.uniform(0.0, 1.5))
                found = _executors(set(tasks)) or found
                pid = rng.choice(sorted(found))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(tasks[found[pid]])
                return
            time.sleep(0.1)

    t = _run_fault(rig, "executor-kill9", n, rng, act, expect_failed=killed)
    t.notes.append(f"killed the executor of {', '.join(sorted(killed)) or 'none'}")
    return t


def server_sigstop(rig: Rig, n: int, rng: random.Random) -> Tally:
    def act(_: dict[str, str]) -> None:
        for _round in range(3):
            time.sleep(rng.uniform(0.2, 3.0))
            assert rig.server.proc is not None
            rig.server.proc.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(3.5, 8.0))  # longer than the client's 3 s read timeout
            rig.server.proc.send_signal(signal.SIGCONT)

    return _run_fault(rig, "server-sigstop", n, rng, act)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "6m") -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path`` (root only); yields False when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield False
        return
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as fh:
        while True:
            fh.write(b"\0" * 65536)
    return filler


def disk_full(rig: Rig, n: int, rng: random.Random) -> Tally:
    disk = rig.root / "small-disk"
    with small_disk(disk) as mounted:
        if not mounted:
            t = Tally("disk-full")
            t.notes.append("NOT RUN: needs root to mount a tmpfs")
            return t

        def act(tasks: dict[str, str]) -> None:
            _started(rig, tasks)  # then full while the others are popped, run and tracked
            filler = _fill(disk)
            time.sleep(rng.uniform(5.0, 12.0))
            filler.unlink()

        # more tasks than the daemon runs at once (3): some are popped while the disk is full
        return _run_fault(rig, "disk-full", n + 3, rng, act, venvs=disk / "builds",
                          state=disk / "state")  # fmt: skip


def hostile_records(rig: Rig, n: int, rng: random.Random) -> Tally:
    fault = "hostile-records"
    qid = rig.queue(f"chaos-{fault}")
    conf = rig.conf(fault, rig.root / f"builds-{fault}")
    picked = CORPUS if n >= len(CORPUS) else rng.sample(CORPUS, n)
    good = rig.submit(qid, fault, 2, rng)  # clean tasks behind the corpus
    bad: dict[str, tuple[str, dict[str, Any], str]] = {}
    for label, patch, end in picked:
        body = {"name": label, "type": "training", "script": _script(rig.runs, label, 0.2)}
        tid = str(rig.server.send("tasks.create", body)["id"])
        rig.server.send("tasks.enqueue", {"task": tid, "queue": qid})
        bad[tid] = (label, patch, end)
    # the good tasks go to the back of the queue
    for tid in good:
        rig.server.send("tasks.dequeue", {"task": tid})
        rig.server.send("tasks.enqueue", {"task": tid, "queue": qid})
    rig.server.stop()
    plant(rig.server.data_dir, {tid: patch for tid, (_, patch, _) in bad.items()})
    rig.server.start()
    rig.server._token = None
    rig.start_daemon(rig.root / f"state-{fault}", conf, f"chaos-{fault}")
    ids = [*bad, *good]
    try:
        states = rig.settle(ids, 600.0)
    finally:
        rig.stop_daemon()
    t = Tally(fault, submitted=len(ids))
    for tid in ids:
        s = states.get(tid) or {}
        label = bad[tid][0] if tid in bad else good[tid]
        runs_file = rig.runs / label
        ran = len(runs_file.read_text().splitlines()) if runs_file.exists() else 0
        if ran > 1:
            t.duplicated += 1
        if s.get("status") == "completed":
            t.completed += 1
        elif s.get("status") in ("failed", "stopped") and s.get("status_reason"):
            t.failed += 1
        else:
            t.lost += 1
            t.notes.append(f"{label} LOST: {s.get('status')}")
        if tid in bad and s.get("status") != bad[tid][2]:
            t.notes.append(f"{label}: {s.get('status')}, expected {bad[tid][2]}")
    server_corpus(rig, t, rng)
    return t


def server_corpus(rig: Rig, t: Tally, rng: random.Random, sample: int = 2) -> None:
    """The server-side hostile corpus (tests/hostile_corpus.py) through every endpoint of the
    rig's server, ``sample`` hostile values per field, then every read for every stored task;
    its counts go to the notes, anything against the rule to ``t.errors``."""
    server = rig.server
    result = run_corpus(server.url, server.access_key, server.secret_key, sample=sample,
                        seed=rng.randrange(2**31))  # fmt: skip
    t.errors += result.server_errors + result.bad_envelopes + result.failed_reads
    t.notes.append(
        f"server corpus: {result.sent} requests, {result.accepted} 2xx, {result.refused} 4xx, "
        f"{result.server_errors} 5xx, {result.bad_envelopes} without envelope, "
        f"{result.reads} reads ({result.failed_reads} failed)"
    )
    t.notes.extend(result.failures[:5])


FAULTS: dict[str, Callable[[Rig, int, random.Random], Tally]] = {
    "server-kill9": server_kill9,
    "daemon-kill9": daemon_kill9,
    "executor-kill9": executor_kill9,
    "server-sigstop": server_sigstop,
    "disk-full": disk_full,
    "submitter-kill9": submitter_kill9,
    "slurm-outage": slurm_outage,
    "hostile-records": hostile_records,
}


def run_suite(root: Path, seed: int, tasks: int, faults: list[str],
              log: Callable[[str], None] = print,
              slurm_outage_s: float = 120.0) -> list[Tally]:  # fmt: skip
    """Run ``faults`` with ``tasks`` tasks each (slurmctld and slurmdbd down for
    ``slurm_outage_s`` in ``slurm-outage``); the tallies in order."""
    log(f"chaos: seed {seed} (repeat with --seed {seed}); {tasks} tasks per fault; "
        f"host {socket.gethostname()}, {os.cpu_count()} CPUs")  # fmt: skip
    rig = Rig(root, seed, log, slurm_outage_s)
    out = []
    try:
        for i, name in enumerate(faults):
            rng = random.Random(seed * 1000 + i)
            started = time.monotonic()
            tally = FAULTS[name](rig, tasks if name != "hostile-records" else 2 * tasks, rng)
            log(tally.row() + f"  [{time.monotonic() - started:.0f} s]")
            out.append(tally)
    finally:
        rig.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--tasks", type=int, default=6, help="tasks per fault")
    ap.add_argument("--faults", nargs="*", default=list(FAULTS), choices=list(FAULTS))
    ap.add_argument("--slurm-outage", type=float, default=120.0, metavar="SECONDS",
                    help="how long slurmctld and slurmdbd stay stopped")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    root = Path(tempfile.mkdtemp(prefix="hpcagent-chaos-"))
    try:
        tallies = run_suite(root, seed, args.tasks, args.faults,
                            slurm_outage_s=args.slurm_outage)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work folder kept: {root}")
    bad = [t for t in tallies if not t.ok]
    print(f"chaos: seed {seed}: " + ("all faults: nothing lost, nothing duplicated" if not bad
          else "FAILED: " + ", ".join(t.fault for t in bad)))  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
