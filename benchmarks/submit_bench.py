"""Benchmark: task submissions per second against the embedded server, idle and while jobs run.

A submission is what ``hpcagent task create ... && hpcagent task enqueue`` does, through
hpcagent's own client (``ApiClient``, requests, keep-alive): ``taskbuild.create_task`` (the
project looked up, ``tasks.create`` with the script and its arguments) and ``tasks.enqueue``:
three requests (four before ``create_task`` sent the fields with ``tasks.create``).

For each ``--workers`` value a real ``hpcagent server --workers W`` starts on a fresh data dir,
then two phases of ``--duration`` seconds each, ``--submitters`` client processes submitting:

* idle: nothing else runs;
* jobs: ``--jobs`` running jobs on the same host, each one process that computes (burns CPU
  ``--job-cpu`` of the time, in 50 ms slices) and talks to the server as the executor does:
  a batch of 20 log lines (``events.add_batch``) every second, the abort watcher's
  ``tasks.get_all`` of its task every 2 s with a ``tasks.ping``, ``workers.status_report``
  every 10 s; plus one submitter that polls its queue (``queues.get_next_task`` every 0.25 s).

Each server runs once per ``--nice`` value, niceness set before it starts as systemd's
``Nice=`` does (``nice -n``), and with ``--session`` also written to its session's
``/proc/PID/autogroup`` as the unit's ``ExecStartPost=`` does; ``deploy`` is the value of the
server's unit in docs/deploy.md, so the figures "with the documented setting" are those of that
very value, and the default ``--nice 0 deploy`` prints both in the same run.

Prints submissions/s per phase and, per submission, what the kernel counted (/proc, per
thread: ``schedstat`` and ``status``) for the submitting clients and for the server's loop
thread and its other threads (the database thread, ...): CPU, time spent runnable but waiting
for a CPU, and context switches (voluntary: a hand-off or a wait; preempted: the time slice
went to another process). With jobs running, the server's figures include their requests.

    .venv/bin/python benchmarks/submit_bench.py [--workers 1 2] [--nice 0 deploy]
        [--submitters 4] [--jobs 8] [--job-cpu 0.25] [--duration 20] [--others 0] [--session]
        [--job-sessions]

``--others N`` adds N processes that each compute a full core, each in its own session, for the
whole run: the load other users put on a shared host (the load average this work was first
measured at, 10-12 on two cores, came from other engineers' test suites); ``--session`` starts
the server in a session of its own, as systemd starts a service, and ``--job-sessions`` each job
in one, as Slurm's slurmstepd runs a job (on this host's Slurm a batch script's session is its
slurmstepd's): with the kernel's autogroup on, each session is a scheduling group of its own.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import platform
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server_bench import ACCESS_KEY, SECRET_KEY, free_port, server_pids, start_server

from hpcagent.api.client import ApiClient
from hpcagent.taskbuild import TaskSpec, create_task

SCRIPT = "import argparse\np = argparse.ArgumentParser()\np.add_argument('--x', type=int)\n" \
    "print(p.parse_args().x * 2)\n"  # fmt: skip


@dataclass
class Sched:
    """What the kernel counted for a set of threads (from /proc): CPU seconds, seconds spent
    runnable but waiting for a CPU (``schedstat``'s run delay), and context switches."""

    cpu: float = 0.0
    wait: float = 0.0
    voluntary: int = 0
    involuntary: int = 0

    def __sub__(self, other: Sched) -> Sched:
        return Sched(
            self.cpu - other.cpu,
            self.wait - other.wait,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
        )

    def __add__(self, other: Sched) -> Sched:
        return Sched(
            self.cpu + other.cpu,
            self.wait + other.wait,
            self.voluntary + other.voluntary,
            self.involuntary + other.involuntary,
        )


def thread_sched(pid: int) -> dict[str, Sched]:
    """The :class:`Sched` of the threads of ``pid`` and of its children (the server's worker
    processes), summed per kind: each process's main thread (the server's event loop) and the
    other threads (its database thread, the thread pool, the checkpointer)."""
    out: dict[str, Sched] = {}
    for p in server_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            base = Path(f"/proc/{p}/task/{tid}")
            try:
                run_ns, wait_ns, _ = (int(x) for x in (base / "schedstat").read_text().split())
                lines = (base / "status").read_text().splitlines()
                status = dict(line.split(":", 1) for line in lines if ":" in line)
            except (OSError, ValueError):
                continue
            name = "loop thread" if tid == str(p) else "other threads"
            now = Sched(run_ns / 1e9, wait_ns / 1e9, int(status["voluntary_ctxt_switches"]),
                        int(status["nonvoluntary_ctxt_switches"]))  # fmt: skip
            out[name] = out.get(name, Sched()) + now
    return out


def _own_sched() -> Sched:
    return sum(thread_sched(os.getpid()).values(), Sched())


DEPLOY_DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"


def documented_nice() -> int:
    """The ``Nice=`` of the server's systemd unit in docs/deploy.md: what the benchmark applies
    for ``--nice deploy``, so the figure is that of the documented setting."""
    unit = DEPLOY_DOC.read_text().split("hpcagent-server.service`:", 1)[1].split("```ini", 1)[1]
    unit = unit.split("```", 1)[0]
    match = re.search(r"^Nice=(-?\d+)$", unit, re.MULTILINE)
    autogroup = re.search(r"^ExecStartPost=.*echo (-?\d+) > /proc/\$MAINPID/autogroup", unit, re.M)
    if match is None or autogroup is None or autogroup.group(1) != match.group(1):
        raise SystemExit(f"{DEPLOY_DOC}: the server unit's Nice= and autogroup line differ")
    return int(match.group(1))


def _client(url: str) -> ApiClient:
    return ApiClient(url, ACCESS_KEY, SECRET_KEY)


def _submitter(url: str, queue: str, index: int, start: Any, stop: Any, out: Any) -> None:
    client = _client(url)
    client.send("debug.ping", {})
    done = 0
    start.wait()
    sched0 = _own_sched()
    while not stop.is_set():
        spec = TaskSpec(project="bench submit", name=f"x2 {index}-{done}", script_text=SCRIPT,
                        script_name="x2.py", args={"x": str(done)})  # fmt: skip
        task_id, _ = create_task(client, spec)
        client.tasks.enqueue(task_id, queue)
        done += 1
    out.put((done, _own_sched() - sched0))


def _job(url: str, task: str, cpu: float, stop: Any, session: bool) -> None:
    """One running job: its compute and its executor's traffic; with ``session``, in a session
    of its own, as Slurm's slurmstepd runs each job."""
    if session:
        os.setsid()
    client = _client(url)
    worker = f"bench:{task[:8]}"
    tick = 0
    next_talk = time.monotonic()
    while not stop.is_set():
        slice_end = time.monotonic() + 0.05 * cpu
        while time.monotonic() < slice_end:  # the task's computation
            pass
        time.sleep(0.05 * (1 - cpu))
        if time.monotonic() < next_talk:
            continue
        next_talk += 1.0
        tick += 1
        base = int(time.time() * 1000)
        lines = [{"type": "log", "level": "info", "task": task, "worker": worker,
                  "msg": f"step {tick}.{i}: loss=0.{i:04d}", "timestamp": base + i}
                 for i in range(20)]  # fmt: skip
        client.send_lines("events.add_batch", lines)
        if tick % 2 == 0:
            client.send("tasks.get_all", {"id": [task], "only_fields": ["status", "status_reason"]})
            client.send("tasks.ping", {"task": task})
        if tick % 10 == 0:
            client.send("workers.status_report", {"worker": worker, "task": task,
                        "timestamp": base, "machine_stats": {"cpu_usage": [50.0]}})  # fmt: skip


def _other_user(stop: Any) -> None:
    """Another user's work on the host (``--others``): a full core's worth of computation in
    a session of its own, as a login shell's would be."""
    parent = os.getppid()
    os.setsid()
    while not stop.is_set() and os.getppid() == parent:  # never outlives the benchmark
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            pass


def _poller(url: str, queue: str, stop: Any) -> None:
    client = _client(url)
    while not stop.is_set():
        client.send("queues.get_next_task", {"queue": queue})
        time.sleep(0.25)


def _phase(url: str, server_pid: int, queue: str, args: argparse.Namespace, jobs: int) -> str:
    ctx = mp.get_context("fork")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    load_stop = ctx.Event()
    load: list[Any] = []
    if jobs:
        client = _client(url)
        idle_queue = client.queues.create(f"bench poll {time.time()}")
        for i in range(jobs):
            task = client.tasks.create(f"running job {i}")
            load.append(
                ctx.Process(
                    target=_job, args=(url, task, args.job_cpu, load_stop, args.job_sessions)
                )
            )
        load.append(ctx.Process(target=_poller, args=(url, idle_queue, load_stop)))
        for proc in load:
            proc.start()
        time.sleep(3.0)  # the load settles
    subs = [ctx.Process(target=_submitter, args=(url, queue, i, start, stop, out))
            for i in range(args.submitters)]  # fmt: skip
    for proc in subs:
        proc.start()
    time.sleep(2.0)  # every client signed in
    load_avg = os.getloadavg()[0]
    server0 = thread_sched(server_pid)
    t0 = time.perf_counter()
    start.set()
    time.sleep(args.duration)
    stop.set()
    results = [out.get(timeout=120) for _ in subs]
    elapsed = time.perf_counter() - t0
    server = thread_sched(server_pid)
    done = sum(r[0] for r in results)
    client: Sched = sum((r[1] for r in results), Sched())
    for proc in subs:
        proc.join()
    load_stop.set()
    for proc in load:
        proc.join(timeout=30)
    n = max(done, 1)
    what = f"{jobs} jobs running" if jobs else "idle"
    each = 1000 * args.submitters * elapsed / n
    lines = [
        f"submissions/s {what:16s}: {done / elapsed:7.1f}  ({done} in {elapsed:.1f} s, "
        f"{args.submitters} clients: {each:.1f} ms per submission each; load avg {load_avg:.1f})"
    ]
    rows = [("client", client)]
    total = Sched()
    for name in sorted(server):
        part = server[name] - server0.get(name, Sched())
        total = total + part
        if part.cpu or part.wait:
            rows.append((f"server {name}", part))
    rows.append(("server (all)", total))
    for label, part in rows:
        lines.append(
            f"    per submission {label:24s} CPU {1000 * part.cpu / n:5.1f} ms, waiting for a CPU "
            f"{1000 * part.wait / n:6.1f} ms, switches {part.voluntary / n:5.1f} voluntary "
            f"{part.involuntary / n:5.1f} preempted"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--job-cpu", type=float, default=0.25, help="share of a core per job")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--nice", nargs="+", default=["0", "deploy"],
                        help="the server's niceness, each in turn, as systemd's Nice= sets it; "
                             "'deploy': the Nice= of docs/deploy.md's unit")  # fmt: skip
    parser.add_argument("--others", type=int, default=0,
                        help="other users' processes computing a full core each, in their own "
                             "sessions, through every phase")  # fmt: skip
    parser.add_argument("--session", action="store_true", help="the server in its own session")
    parser.add_argument("--job-sessions", action="store_true",
                        help="each job in its own session, as slurmstepd runs it")  # fmt: skip
    args = parser.parse_args()
    print(f"# machine: nproc={os.cpu_count()} {platform.platform()} "
          f"python={platform.python_version()}")  # fmt: skip
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    nices = [documented_nice() if n == "deploy" else int(n) for n in args.nice]
    others_stop = mp.get_context("fork").Event()
    others = [mp.get_context("fork").Process(target=_other_user, args=(others_stop,))
              for _ in range(args.others)]  # fmt: skip
    for other in others:
        other.start()
    try:
        _run(args, nices)
    finally:
        others_stop.set()
        for other in others:
            other.join(timeout=30)


def _run(args: argparse.Namespace, nices: list[int]) -> None:
    for workers, nice in itertools.product(args.workers, nices):
        with tempfile.TemporaryDirectory(prefix="hpcagent-submit-bench-") as tmp:
            port = free_port()
            proc = start_server(Path(tmp) / "data", port, workers, nice=nice,
                                session=args.session)  # fmt: skip
            if args.session and nice:  # the unit's ExecStartPost= (docs/deploy.md)
                Path(f"/proc/{proc.pid}/autogroup").write_text(f"{nice}\n")
            url = f"http://127.0.0.1:{port}"
            try:
                client = _client(url)
                queue = client.queues.create("bench submit")
                client.projects.get_or_create("bench submit")  # not raced by the submitters
                for jobs in (0, args.jobs):
                    figures = _phase(url, proc.pid, queue, args, jobs)
                    print(f"workers={workers} nice={nice} {figures}", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)


if __name__ == "__main__":
    main()
