"""Benchmark of hpcagent-slurm's submitter on the local cluster (or the LocalScheduler).

Phases, against a real ``hpcagent server`` process and real Slurm:

1. idle: the submitter runs with default pacing; tasks are enqueued one at a time at random
   moments; enqueue → sbatch-returned latency p50/p99.
2. burst: N trivial tasks (default 1,000) enqueued at once; latency p50/p99 over all of
   them, submissions per second (first to last submission).
3. tracking: until every job ended; Slurm commands per tracking round (and how it varies
   with the number of live jobs), Slurm commands per minute.

Also: CPU seconds of the submitter (this process minus the time spent in the server, which
runs in its own process) and its peak RSS. Prints a Markdown table for docs/performance.md.

    .venv/bin/python benchmarks/submitter_bench.py [--tasks 1000] [--scheduler slurm|local]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from hpcagent.api import ApiClient
from hpcagent.process import CommandResult, run_command
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.scheduler.slurm import SlurmScheduler
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions

KEY, SECRET = "BENCHKEY0123456789AB", "bench-secret-0123456789abcdefghijklmnop"
TEMPLATE = "#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --time=00:05:00\ntrue\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, python: str = sys.executable) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, HPCAGENT_SERVER_ACCESS_KEY=KEY, HPCAGENT_SERVER_SECRET_KEY=SECRET)
    argv = [python, "-m", "hpcagent.commands.server", "--port", str(port),
            "--data-dir", str(data), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            requests.get(url + "/debug.ping", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit("server did not start")


class Counting:
    """The subprocess seam, counting Slurm commands by name (and when)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        with self.lock:
            self.calls.append((time.monotonic(), Path(argv[0]).name))
        return run_command(list(argv), **kw)


class TimedScheduler:
    """Wraps a scheduler to note when each job's submit returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.submitted: dict[str, float] = {}

    def submit(self, script_path: Path, *, job_name: str) -> str:
        job = str(self.inner.submit(script_path, job_name=job_name))
        self.submitted[job_name.removeprefix("clearml_task_")] = time.monotonic()
        return job

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--idle-tasks", type=int, default=20)
    ap.add_argument("--scheduler", choices=["slurm", "local"], default="slurm")
    ap.add_argument("--poll-interval", type=float, default=5.0, help="tracking (default setting)")
    args = ap.parse_args()
    if args.scheduler == "slurm" and shutil.which("sbatch") is None:
        raise SystemExit("sbatch not found (tests/slurm/cluster.sh up, or --scheduler local)")

    work = Path(tempfile.mkdtemp(prefix="hpcagent-subbench-", dir="/var/tmp"))
    server, url = start_server(work / "server")
    client = ApiClient(url, KEY, SECRET)
    counting = Counting()
    inner: Any = (
        SlurmScheduler(runner=counting)
        if args.scheduler == "slurm"
        else LocalScheduler(output_dir=work / "out", max_parallel=2)
    )
    sched = TimedScheduler(inner)
    tmpl = work / "bench.template"
    tmpl.write_text(TEMPLATE)
    qid = str(client.send("queues.create", {"name": "bench"})["id"])
    ledger = Ledger(work / "state" / "ledger.sqlite")
    opts = SubmitterOptions(
        queues=[QueueRef(qid, "bench", tmpl)],
        state_dir=work / "state",
        worker_id="bench:hpcagent-slurm",
        poll_interval_s=args.poll_interval,
        hpcagent_argv=["true"],
    )
    sub = Submitter(client, sched, ledger, opts, lambda p, d=None: d)  # type: ignore[arg-type]
    sub.start()
    stop = threading.Event()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_run0 = time.monotonic()
    runner = threading.Thread(target=sub.run, args=(stop,), daemon=True)
    runner.start()

    def make(n: int, tag: str) -> list[str]:
        return [
            str(client.send("tasks.create", {"name": f"{tag}-{i}", "type": "training"})["id"])
            for i in range(n)
        ]

    def wait_submitted(ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(t in sched.submitted for t in ids):
            time.sleep(0.02)

    # 1. idle latency
    enq: dict[str, float] = {}
    for tid in make(args.idle_tasks, "idle"):
        time.sleep(random.uniform(0.2, 1.0))
        client.send("tasks.enqueue", {"task": tid, "queue": qid})
        enq[tid] = time.monotonic()
        wait_submitted([tid], 30)
    idle = [sched.submitted[t] - enq[t] for t in enq if t in sched.submitted]

    # 2. burst
    burst_ids = make(args.tasks, "burst")
    calls_before = len(counting.calls)
    benq: dict[str, float] = {}
    for tid in burst_ids:
        client.send("tasks.enqueue", {"task": tid, "queue": qid})
        benq[tid] = time.monotonic()
    wait_submitted(burst_ids, 600)
    got = [t for t in burst_ids if t in sched.submitted]
    lat = [sched.submitted[t] - benq[t] for t in got]
    span = max(sched.submitted[t] for t in got) - min(sched.submitted[t] for t in got)
    rate = (len(got) - 1) / span if span > 0 else float("nan")

    # 3. tracking until all jobs ended
    per_round: list[tuple[int, int]] = []
    t_track0 = time.monotonic()
    last_cmds = len(counting.calls)
    deadline = time.monotonic() + 1800
    reader = Ledger(work / "state" / "ledger.sqlite")  # the submitter's own is its thread's
    while reader.live() and time.monotonic() < deadline:
        live = len(reader.live())
        time.sleep(args.poll_interval)
        now_cmds = len(counting.calls)
        per_round.append((live, now_cmds - last_cmds))
        last_cmds = now_cmds
    t_track1 = time.monotonic()
    stop.set()
    runner.join(timeout=60)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    wall = time.monotonic() - t_run0
    track_calls = [c for t, c in counting.calls if t_track0 <= t <= t_track1 and c != "sbatch"]
    kinds = Counter(c for _, c in counting.calls[calls_before:])
    minutes = max((t_track1 - t_track0) / 60, 1e-9)

    print(f"# submitter_bench ({args.scheduler}), {time.strftime('%Y-%m-%d')}")
    print(
        f"machine: nproc={os.cpu_count()} {platform.platform()} python {platform.python_version()}"
    )
    print(f"command: {' '.join(sys.argv)}")
    print("| figure | value |\n|---|---|")
    print(
        f"| idle enqueue→sbatch latency p50 / p99 ({len(idle)} tasks) | "
        f"{pct(idle, 0.5):.3f} s / {pct(idle, 0.99):.3f} s |"
    )
    print(f"| burst of {args.tasks}: submitted | {len(got)} |")
    print(
        "| burst enqueue→sbatch latency p50 / p99 | "
        f"{pct(lat, 0.5):.2f} s / {pct(lat, 0.99):.2f} s |"
    )
    print(f"| submissions per second (burst) | {rate:.1f} |")
    print(f"| Slurm commands per minute while tracking | {len(track_calls) / minutes:.1f} |")
    rounds = [c for _, c in per_round]
    if rounds:
        big = [c for live, c in per_round if live >= max(1, args.tasks // 2)]
        small = [c for live, c in per_round if live < max(1, args.tasks // 10)]
        print(
            f"| Slurm commands per {args.poll_interval:.0f} s round: median"
            f" (≥{args.tasks // 2} live"
            f" / <{args.tasks // 10} live) | {statistics.median(big) if big else '-'} / "
            f"{statistics.median(small) if small else '-'} |"
        )
    print(f"| Slurm commands by kind (burst+tracking) | {dict(kinds)} |")
    print(f"| submitter CPU (user+sys) / wall | {cpu:.1f} s / {wall:.1f} s |")
    print(f"| submitter peak RSS | {ru1.ru_maxrss / 1024:.0f} MB |")
    server.terminate()
    server.wait(timeout=30)
    reader.close()


if __name__ == "__main__":
    main()
