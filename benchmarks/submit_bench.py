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

Prints submissions/s per phase and the CPU per submission of the server (from /proc; with
jobs running it includes their requests) and of the submitting clients.

    .venv/bin/python benchmarks/submit_bench.py [--workers 1 2] [--submitters 4] [--jobs 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server_bench import ACCESS_KEY, SECRET_KEY, free_port, server_cpu, start_server

from hpcagent.api.client import ApiClient
from hpcagent.taskbuild import TaskSpec, create_task

SCRIPT = "import argparse\np = argparse.ArgumentParser()\np.add_argument('--x', type=int)\n" \
    "print(p.parse_args().x * 2)\n"  # fmt: skip


def _client(url: str) -> ApiClient:
    return ApiClient(url, ACCESS_KEY, SECRET_KEY)


def _submitter(url: str, queue: str, index: int, start: Any, stop: Any, out: Any) -> None:
    client = _client(url)
    client.send("debug.ping", {})
    done = 0
    start.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    while not stop.is_set():
        spec = TaskSpec(project="bench submit", name=f"x2 {index}-{done}", script_text=SCRIPT,
                        script_name="x2.py", args={"x": str(done)})  # fmt: skip
        task_id, _ = create_task(client, spec)
        client.tasks.enqueue(task_id, queue)
        done += 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((done, usage.ru_utime + usage.ru_stime - cpu0))


def _job(url: str, task: str, cpu: float, stop: Any) -> None:
    """One running job: its compute and its executor's traffic."""
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
            load.append(ctx.Process(target=_job, args=(url, task, args.job_cpu, load_stop)))
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
    cpu0 = server_cpu(server_pid)
    t0 = time.perf_counter()
    start.set()
    time.sleep(args.duration)
    stop.set()
    results = [out.get(timeout=120) for _ in subs]
    done = sum(r[0] for r in results)
    client_cpu = sum(r[1] for r in results)
    elapsed = time.perf_counter() - t0
    cpu = server_cpu(server_pid) - cpu0
    for proc in subs:
        proc.join()
    load_stop.set()
    for proc in load:
        proc.join(timeout=30)
    rate = done / elapsed
    what = f"{jobs} jobs running" if jobs else "idle"
    return (f"submissions/s {what:16s}: {rate:7.1f}  ({done} in {elapsed:.1f} s; CPU per "
            f"submission: server {1000 * cpu / max(done, 1):.1f} ms, client "
            f"{1000 * client_cpu / max(done, 1):.1f} ms; load avg {load_avg:.1f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--job-cpu", type=float, default=0.25, help="share of a core per job")
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    print(f"# machine: nproc={os.cpu_count()} {platform.platform()} "
          f"python={platform.python_version()}")  # fmt: skip
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="hpcagent-submit-bench-") as tmp:
            port = free_port()
            proc = start_server(Path(tmp) / "data", port, workers)
            url = f"http://127.0.0.1:{port}"
            try:
                client = _client(url)
                queue = client.queues.create("bench submit")
                client.projects.get_or_create("bench submit")  # not raced by the submitters
                for jobs in (0, args.jobs):
                    print(f"workers={workers} {_phase(url, proc.pid, queue, args, jobs)}",
                          flush=True)  # fmt: skip
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)


if __name__ == "__main__":
    main()
