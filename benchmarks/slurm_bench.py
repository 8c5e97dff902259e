"""Benchmark the Slurm adapter on the real cluster (tests/slurm/cluster.sh up).

    .venv/bin/python benchmarks/slurm_bench.py [--jobs 1000] [--submit-sample 200]

Figures:
* submissions per second through SlurmScheduler.submit (held jobs, so nothing runs);
* Slurm commands and seconds per tracking cycle (SlurmScheduler.status) with 10, 100 and
  1,000 live jobs, counted at the run_command seam (goal: constant, at most 2);
* the same after the jobs were cancelled (finished jobs: cached after one cycle).
Everything submitted is cancelled at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcagent.process import counting, run_command
from hpcagent.scheduler.slurm import SlurmScheduler


def machine() -> str:
    cpus = os.cpu_count()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    version = run_command(["sbatch", "--version"], timeout=30).stdout.strip()
    return f"{platform.node()}: {cpus} CPUs, {mem_gib:.0f} GiB, {platform.platform()}, {version}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000, help="live jobs for the largest cycle")
    ap.add_argument("--cycles", type=int, default=3, help="tracking cycles per size")
    opts = ap.parse_args()

    runner, calls = counting(run_command)
    sched = SlurmScheduler(runner=runner, sbatch_args=["--hold"])
    folder = Path(tempfile.mkdtemp(prefix="hpcagent-bench-", dir="/var/tmp"))
    folder.chmod(0o777)
    script = folder / "held.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={folder}/%j.out\nsleep 1\n")
    name = f"bench_{os.getpid()}"
    ids: list[str] = []
    lines = [
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
    ]
    try:
        start = time.perf_counter()
        for _ in range(opts.jobs):
            ids.append(sched.submit(script, job_name=name))
        elapsed = time.perf_counter() - start
        lines.append(
            f"- submit: {opts.jobs} held jobs in {elapsed:.1f} s = "
            f"**{opts.jobs / elapsed:.0f} submissions/s** (one sbatch each)"
        )
        lines.append("")
        lines.append("| live jobs | Slurm commands per cycle | commands | seconds per cycle |")
        lines.append("|---:|---:|---|---:|")
        for n in (10, 100, opts.jobs):
            subset = ids[:n]
            per_cycle: list[int] = []
            secs: list[float] = []
            names: set[str] = set()
            for _ in range(opts.cycles):
                calls.clear()
                t0 = time.perf_counter()
                out = sched.status(subset)
                secs.append(time.perf_counter() - t0)
                per_cycle.append(len(calls))
                names.update(c[0] for c in calls)
                assert all(s.is_active for s in out.values()), "jobs should still be held"
            lines.append(
                f"| {n} | {max(per_cycle)} | {', '.join(sorted(names))} | {min(secs):.3f} |"
            )
    finally:
        calls.clear()
        sched.cancel(ids)
        lines.append("")
        lines.append(f"- cancel: {len(ids)} jobs with {len(calls)} scancel call(s)")
    deadline = time.monotonic() + 120
    while True:
        calls.clear()
        out = sched.status(ids)
        if all(s.is_terminal for s in out.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    calls.clear()
    sched.status(ids)
    lines.append(f"- a cycle over {len(ids)} finished jobs (cached): {len(calls)} Slurm commands")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
