"""End to end on the real Slurm: N trivial tasks through submitit and through hpcagent.

    .venv/bin/python benchmarks/e2e_bench.py [--tasks 200] [--only submitit|hpcagent|floor]
        [--python PY] [--before VENV] [--floor]

Both sides run on the same one-host cluster (tests/slurm/cluster.sh up, accounting on), one
after the other in the same run, each task printing ``x*2`` and asking 1 CPU:

* submitit 1.5.x, installed from PyPI in the benchmark's own venv (created here, kept under
  the work folder for the next run): ``AutoExecutor`` with a pickled function, one
  ``executor.submit`` per task, then every ``job.result()``.
* hpcagent: a real ``hpcagent server`` process, tasks made and enqueued through the API
  client (``tasks.create`` + ``tasks.enqueue``), ``hpcagent-slurm`` with the shipped
  ``templates/slurm.example.template``, ``hpcagent execute`` inside each job; every task's
  log must hold its ``x*2`` line and its status must be ``completed``.

* the floor (``--floor``): what any tool that gives each task its own Slurm job pays here. One
  ``sbatch --wrap "python3 -c 'print(x*2)'"`` per task from a plain loop (the task alone: no
  tool in the job, no result file), then ``squeue`` polled every 0.2 s until no job is left.
  Then the same as one job array of N elements (``--array``, one sbatch: each element is still a
  job to Slurm). If the floor's all-final time is above half of submitit's, no design that gives
  each task its own Slurm job meets the ``<= 0.5`` goal on this cluster.

Each side starts with one warm-up task (not timed: submitit's first job, hpcagent's venv
cache). Printed per side: the submit phase (until the last job's Slurm ``Submit`` time; for
submitit also its client's loop), all final (the tool's own view: every ``result()``
returned / every task completed on the server), Slurm's last ``End``, tasks/s, and the CPU
split: the jobs' ``TotalCPU`` from sacct (executor + task: everything inside the job), the
server's and the submitter's process CPU (psutil, children such as sbatch included) for
hpcagent, the submitting process for submitit. The server's CPU excludes what this
benchmark's own status polling cost it (measured after the run, per poll). The ratio
hpcagent/submitit of the all-final times closes the report.

Bytecode: ``pip install`` writes ``.pyc`` files and the submitit venv has them; an editable or
``uv`` install under ``PYTHONDONTWRITEBYTECODE`` has none, and every ``hpcagent execute`` then
compiles ~400 modules (about 1 s of CPU more per job). The benchmark compiles hpcagent and its
venv first (``compileall``, quick when up to date), as an installed hpcagent would be.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from submitter_bench import KEY, SECRET, start_server  # noqa: E402  (one way to start it)

from hpcagent.api import ApiClient  # noqa: E402

SUBMITIT_SPEC = "submitit>=1.5,<1.6"
TEMPLATE = ROOT / "templates" / "slurm.example.template"

SUBMITIT_DRIVER = r"""
import json, resource, sys, time
import submitit


def double(x):
    print(x * 2)
    return x * 2


folder, n, partition = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
ex.update_parameters(slurm_partition=partition, nodes=1, tasks_per_node=1, cpus_per_task=1,
                     timeout_min=10)
assert ex.submit(double, -1).result() == -2  # warm-up, not timed
r0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.time()
jobs = [ex.submit(double, i) for i in range(n)]
t_sub = time.time()
results = [j.result() for j in jobs]
t_end = time.time()
assert results == [2 * i for i in range(n)], results
r1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = sum(b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime for a, b in zip(r0, r1))
print(json.dumps({"t0": t0, "loop_s": t_sub - t0, "final_s": t_end - t0, "client_cpu": cpu,
                  "jobs": [str(j.job_id) for j in jobs],
                  "version": submitit.__version__}))
"""


def compile_bytecode() -> None:
    """Write the .pyc files of hpcagent and of this venv (see the module docstring)."""
    import sysconfig

    paths = [str(ROOT / "hpcagent"), sysconfig.get_paths()["purelib"]]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *paths],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}, nproc={os.cpu_count()}, {platform.platform()}, "
        f"Python {platform.python_version()}, load average {load}"
    )


def cpu_s(text: str) -> float:
    """sacct's TotalCPU ([D-][HH:]MM:SS[.mmm]) in seconds."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def sacct(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per job: Submit, End (epoch s, 1 s resolution), State and the steps' summed TotalCPU.
    Waits until accounting has every job's end."""
    out: dict[str, dict[str, Any]] = {}
    for _ in range(120):
        text = subprocess.run(
            ["sacct", "-P", "-n", "-o", "JobID,Submit,End,State,TotalCPU", "-j", ",".join(job_ids)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        out = {}
        for line in text.splitlines():
            jid, submit, end, state, total = line.split("|")
            base, _, step = jid.partition(".")
            row = out.setdefault(base, {"cpu": 0.0})
            if step:
                row["cpu"] += cpu_s(total)
            else:
                row.update(state=state, submit=stamp(submit), end=end)
        if len(out) >= len(job_ids) and all(
            r.get("end", "Unknown") != "Unknown" for r in out.values()
        ):
            for row in out.values():
                row["end"] = stamp(row["end"])
            return out
        time.sleep(1)
    raise SystemExit(f"sacct did not report the end of all {len(job_ids)} jobs")


def slurm_view(t0: float, jobs: list[str]) -> dict[str, float]:
    rows = sacct(jobs)
    bad = {j: r["state"] for j, r in rows.items() if r["state"] != "COMPLETED"}
    if bad:
        raise SystemExit(f"jobs not COMPLETED: {bad}")
    return {
        "last_submit_s": max(r["submit"] for r in rows.values()) - t0,
        "last_end_s": max(r["end"] for r in rows.values()) - t0,
        "job_cpu": sum(r["cpu"] for r in rows.values()),
    }


# -- submitit ------------------------------------------------------------------------------


def submitit_python(work: Path) -> Path:
    venv = work / "submitit-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SUBMITIT_SPEC], check=True)
    return python


def run_submitit(work: Path, n: int, partition: str) -> dict[str, Any]:
    python = submitit_python(work)
    folder = Path(tempfile.mkdtemp(prefix="submitit-", dir=work))
    driver = folder / "driver.py"
    driver.write_text(SUBMITIT_DRIVER)
    out = subprocess.run(
        [str(python), str(driver), str(folder / "jobs"), str(n), partition],
        capture_output=True, text=True, check=True, cwd=folder,
    ).stdout  # fmt: skip
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res.update(slurm_view(res["t0"], res["jobs"]))
    return res


# -- the floor: the bare task, one Slurm job each ----------------------------------------


def run_floor(work: Path, n: int, partition: str, *, array: bool = False) -> dict[str, Any]:
    """The bare task, one Slurm job each: one sbatch per task, or (``array``) one job array of
    ``n`` elements submitted at once (each element is still a job to Slurm)."""
    folder = Path(tempfile.mkdtemp(prefix="floor-", dir=work))
    task = "python3 -c 'import os; print(int(os.environ[\"X\"]) * 2)'"

    def submit(x: int | None) -> str:
        where = ["-o", str(folder / "%a.out"), f"--array=0-{n - 1}"] if x is None else [
            "-o", str(folder / f"{x}.out"), f"--export=ALL,X={x}"]  # fmt: skip
        wrap = task.replace('os.environ["X"]', 'os.environ["SLURM_ARRAY_TASK_ID"]')
        return subprocess.run(
            ["sbatch", "--parsable", "-p", partition, "-c", "1", "-t", "10", "-J", "floor",
             *where, "--wrap", wrap if x is None else task],
            capture_output=True, text=True, check=True,
        ).stdout.strip().split(";")[0]  # fmt: skip

    def wait(jobs: list[str]) -> None:
        while subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)],
                             capture_output=True, text=True).stdout.strip():  # fmt: skip
            time.sleep(0.2)

    wait([submit(-1)])  # warm-up, not timed
    r0 = os.times()
    t0 = time.time()
    jobs = [submit(None)] if array else [submit(x) for x in range(n)]
    t_sub = time.time()
    wait(jobs)
    t_end = time.time()
    r1 = os.times()
    for x in range(n):  # every job printed its line
        if (folder / f"{x}.out").read_text().strip() != str(2 * x):
            raise SystemExit(f"floor job {x}: unexpected output")
    res: dict[str, Any] = {"t0": t0, "loop_s": t_sub - t0, "final_s": t_end - t0,
                           "client_cpu": r1.children_user + r1.children_system
                           - r0.children_user - r0.children_system}  # fmt: skip
    res.update(slurm_view(t0, jobs))
    return res


# -- hpcagent ------------------------------------------------------------------------------


def write_conf(path: Path, url: str, work: Path) -> None:
    conf = {
        "api": {"api_server": url, "credentials": {"access_key": KEY, "secret_key": SECRET}},
        "agent": {
            "venvs_dir": str(work / "builds"),
            "venvs_cache": {"path": str(work / "venv-cache"), "free_space_threshold_gb": 0},
            "vcs_cache": {"path": str(work / "vcs-cache")},
        },
        "slurm": {"state_dir": str(work / "state")},
    }
    path.write_text(json.dumps(conf))
    path.chmod(0o600)


class Hpcagent:
    """A server, a queue and a running hpcagent-slurm, and the calls the benchmark makes."""

    def __init__(self, work: Path, python: str) -> None:
        self.work = work
        self.server, url = start_server(work / "server", python)
        self.client = ApiClient(url, KEY, SECRET)
        self.queue = str(self.client.send("queues.create", {"name": "e2e-bench"})["id"])
        self.conf = work / "clearml.conf"
        write_conf(self.conf, url, work)
        env = dict(os.environ, CLEARML_CONFIG_FILE=str(self.conf))
        argv = [str(Path(python).parent / "hpcagent-slurm"),
                "--template-files", str(TEMPLATE), "--queue", "e2e-bench"]  # fmt: skip
        self.log = open(work / "submitter.log", "wb")  # noqa: SIM115
        self.submitter = subprocess.Popen(
            argv, env=env, cwd=work, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.polls = 0

    def make(self, x: int) -> str:
        script = {"entry_point": "main.py", "binary": "python3", "working_dir": ".",
                  "diff": f"x = {x}\nprint(x * 2)\n", "requirements": {"pip": ""}}  # fmt: skip
        tid = str(
            self.client.send(
                "tasks.create", {"name": f"e2e x={x}", "type": "training", "script": script}
            )["id"]
        )
        self.client.send("tasks.enqueue", {"task": tid, "queue": self.queue})
        return tid

    def statuses(self, ids: list[str]) -> dict[str, str]:
        self.polls += 1
        tasks = self.client.send(
            "tasks.get_all", {"id": ids, "only_fields": ["id", "status"], "page_size": len(ids)}
        )["tasks"]
        return {t["id"]: t["status"] for t in tasks}

    def wait_final(self, ids: list[str], timeout: float = 1800) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.statuses(ids)
            if all(got.get(t) in ("completed", "failed", "stopped") for t in ids):
                bad = {t: s for t, s in got.items() if s != "completed"}
                if bad:
                    raise SystemExit(f"tasks not completed: {bad}")
                return time.time()
            time.sleep(0.25)
        raise SystemExit("tasks did not end in time")

    def job_ids(self, ids: list[str]) -> list[str]:
        out = []
        for tid in ids:
            params = self.client.send("tasks.get_hyper_params", {"tasks": [tid]})["params"][0]
            items = {
                p["name"]: p["value"] for p in params["hyperparams"] if p["section"] == "properties"
            }
            out.append(str(items["job-id"]))
        return out

    def check_logs(self, ids: list[str], xs: list[int]) -> None:
        for tid, x in zip(ids, xs, strict=True):
            events = self.client.send(
                "events.get_task_log", {"task": tid, "batch_size": 500, "navigate_earlier": False}
            )["events"]
            text = "\n".join(str(e.get("msg", "")) for e in events)
            if str(2 * x) not in text.split():
                raise SystemExit(f"task {tid}: no line {2 * x} in its log")

    def poll_cost(self, ids: list[str], rounds: int = 40) -> float:
        """Server CPU seconds of one of this benchmark's status polls."""
        proc = psutil.Process(self.server.pid)
        c0 = sum(proc.cpu_times()[:2])
        for _ in range(rounds):
            self.statuses(ids)
        return (sum(proc.cpu_times()[:2]) - c0) / rounds

    def stop(self) -> None:
        for proc in (self.submitter, self.server):
            proc.terminate()
            proc.wait(60)
        self.log.close()
        self.client.close()


def proc_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def run_hpcagent(work: Path, n: int, python: str) -> dict[str, Any]:
    rig = Hpcagent(work, python)
    try:
        warm = rig.make(-1)
        rig.wait_final([warm])
        rig.polls = 0
        srv0, sub0 = proc_cpu(rig.server.pid), proc_cpu(rig.submitter.pid)
        t0 = time.time()
        ids = [rig.make(x) for x in range(n)]
        t_enq = time.time()
        t_end = rig.wait_final(ids)
        srv1, sub1 = proc_cpu(rig.server.pid), proc_cpu(rig.submitter.pid)
        polls = rig.polls
        rig.check_logs(ids, list(range(n)))
        jobs = rig.job_ids(ids)
        res: dict[str, Any] = {"t0": t0, "loop_s": t_enq - t0, "final_s": t_end - t0}
        res.update(slurm_view(t0, jobs))
        res["server_cpu"] = srv1 - srv0 - polls * rig.poll_cost(ids)
        res["submitter_cpu"] = sub1 - sub0
        return res
    finally:
        rig.stop()


def report(name: str, res: dict[str, Any], n: int) -> None:
    print(f"\n{name}:")
    print(f"  submit loop {res['loop_s']:.1f} s; last job submitted to Slurm at "
          f"{res['last_submit_s']:.0f} s (sacct, 1 s resolution)")  # fmt: skip
    print(f"  all final {res['final_s']:.1f} s (Slurm's last End at {res['last_end_s']:.0f} s); "
          f"{n / res['final_s']:.2f} tasks/s")  # fmt: skip
    parts = {
        k: res[k] for k in ("job_cpu", "server_cpu", "submitter_cpu", "client_cpu") if k in res
    }
    total = sum(parts.values())
    split = ", ".join(f"{k.removesuffix('_cpu')} {v / n:.3f}" for k, v in parts.items())
    print(f"  CPU per task {total / n:.3f} s ({split})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--only", choices=["submitit", "hpcagent", "floor"], default=None)
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also run the bare task as one Slurm job each (no tool), the bound of any "
        "one-job-per-task design on this cluster",
    )
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/hpcagent-e2e-bench"))
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of 'this' hpcagent (default: this one; an installed, non-editable "
        "copy of the checkout is what a site runs: no editable-install finder at each start)",
    )
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="VENV",
        help="also run hpcagent from this venv (another version, installed there) in the same "
        "run, after this one: a before/after comparison under the same load",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# e2e_bench, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    results: dict[str, dict[str, Any]] = {}
    if args.only in (None, "submitit"):
        results["submitit"] = run_submitit(args.work, args.tasks, args.partition)
        report(f"submitit {results['submitit']['version']}", results["submitit"], args.tasks)
    if args.floor or args.only == "floor":
        results["floor"] = run_floor(args.work, args.tasks, args.partition)
        report("floor: the bare task, one sbatch --wrap job each", results["floor"], args.tasks)
        results["floor-array"] = run_floor(args.work, args.tasks, args.partition, array=True)
        report("floor: the bare task as one job array", results["floor-array"], args.tasks)
    if args.only in (None, "hpcagent"):
        compile_bytecode()
        run = Path(tempfile.mkdtemp(prefix="hpcagent-", dir=args.work))
        results["hpcagent"] = run_hpcagent(run, args.tasks, args.python)
        report("hpcagent", results["hpcagent"], args.tasks)
    if args.before is not None:
        python = str(args.before / "bin" / "python")
        run = Path(tempfile.mkdtemp(prefix="hpcagent-before-", dir=args.work))
        results["before"] = run_hpcagent(run, args.tasks, python)
        report(f"hpcagent from {args.before}", results["before"], args.tasks)
    for name in ("hpcagent", "before", "floor", "floor-array"):
        if name in results and "submitit" in results:
            ratio = results[name]["final_s"] / results["submitit"]["final_s"]
            print(f"ratio all final {name} / submitit: {ratio:.2f} (goal <= 0.5)")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
