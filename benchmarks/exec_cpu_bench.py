"""CPU of one trivial task's job, split by component, without Slurm (issue 18.2).

    .venv/bin/python benchmarks/exec_cpu_bench.py [--runs 20] [--before VENV] [--python PY]

What a Slurm job of ``benchmarks/e2e_bench.py`` costs (sacct's ``TotalCPU``: the job script's
bash, ``hpcagent execute`` and the task's python), measured here on the same job script run by
``bash`` on this machine: the shipped ``templates/slurm.example.template`` rendered by the
submitter's own code (``hpcagent.submitter.blocks.build_context``) for a task that prints
``x*2`` (a literal script, no repository, empty requirements), against a real ``hpcagent
server`` on a free port. Each run is one fresh queued task; the job's CPU is the ``wait4``
rusage of its bash (every process of the job is waited for).

Printed per hpcagent (this one, and with ``--before VENV`` the one installed in VENV, their
runs interleaved so that both see the same load):

* job: the whole job script (median and min over ``--runs``);
* task python: the task's own interpreter alone (the cached venv's python on the same
  ``main.py``), bash: the job script with ``true`` in place of the executor;
* executor: job − task python − bash (what ``hpcagent execute`` itself costs), of which
  "imports" is ``python -c 'import hpcagent.cli, hpcagent.executor.launch'`` (the modules the
  job's command loads before it runs; ``hpcagent.commands.execute`` in versions without
  ``launch``) less a bare ``python -c pass`` of the same interpreter ("python");
* server: the server process's CPU over the runs, per run.

The interpreters are compiled first (``compileall``) as an installed hpcagent is; ``--python``
runs another interpreter than this one for "this" hpcagent (an installed copy, for example).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e_bench import TEMPLATE, machine, write_conf  # noqa: E402
from submitter_bench import KEY, SECRET, start_server  # noqa: E402

from hpcagent.api import ApiClient  # noqa: E402
from hpcagent.submitter.blocks import build_context  # noqa: E402
from hpcagent.templating import render_file  # noqa: E402


def cpu_of(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
           check: bool = True) -> float:  # fmt: skip
    """CPU seconds (user + system) of ``argv`` and everything it waited for."""
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        raise SystemExit(f"{argv[:4]}... exited {proc.returncode}")
    return float(usage.ru_utime + usage.ru_stime)


def compile_python(python: str) -> None:
    """``.pyc`` files for the interpreter's site-packages (and an editable hpcagent's source)."""
    code = (
        "import sysconfig, compileall, hpcagent, os; "
        "compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=1, workers=0); "
        "compileall.compile_dir(os.path.dirname(hpcagent.__file__), quiet=1, workers=0)"
    )
    subprocess.run([python, "-c", code], check=True, stdout=subprocess.DEVNULL)


class Variant:
    """One hpcagent (an interpreter with it installed), its work folder and job template."""

    def __init__(self, name: str, python: str, work: Path, url: str) -> None:
        self.name, self.python, self.work = name, python, work
        work.mkdir(parents=True)
        self.conf = work / "clearml.conf"
        write_conf(self.conf, url, work)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CLEARML_"))}
        self.env["HOME"] = str(work)  # its own parse cache, as a user of its own
        self.job: list[float] = []

    def script(self, task_id: str) -> Path:
        """The job script the submitter would hand to sbatch for this task."""
        ctx = build_context(
            {"id": task_id},
            queue_name="e2e-bench",
            queue_id="q",
            worker_id="bench",
            config=lambda *_a, **_k: None,
            config_file=self.conf,
            hpcagent=[self.python, "-m", "hpcagent"],
            template_text=TEMPLATE.read_text(),
        )
        path = self.work / f"job-{task_id}.sh"
        path.write_text(render_file(TEMPLATE, ctx))
        return path

    def run_job(self, task_id: str) -> float:
        return cpu_of(["bash", str(self.script(task_id))], cwd=self.work, env=self.env)

    def task_python(self) -> Path:
        (python,) = self.work.glob("venv-cache/*/bin/python")
        return python


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--python", default=sys.executable, help="interpreter of 'this' hpcagent")
    ap.add_argument("--before", type=Path, default=None, metavar="VENV")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the template check notes comment placeholders
    work = Path(tempfile.mkdtemp(prefix="exec-cpu-", dir=args.work))
    print(f"# exec_cpu_bench, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    pythons = {"this": args.python}
    if args.before is not None:
        pythons["before"] = str(args.before / "bin" / "python")
    for python in pythons.values():
        compile_python(python)
    server, url = start_server(work / "server")
    client = ApiClient(url, KEY, SECRET)
    try:
        queue = str(client.send("queues.create", {"name": "exec-cpu-bench"})["id"])
        counter = iter(range(10**9))

        def new_task() -> str:
            x = next(counter)
            script = {"entry_point": "main.py", "binary": "python3", "working_dir": ".",
                      "diff": f"x = {x}\nprint(x * 2)\n", "requirements": {"pip": ""}}  # fmt: skip
            body = {"name": f"exec-cpu x={x}", "type": "training", "script": script}
            tid = str(client.send("tasks.create", body)["id"])
            client.send("tasks.enqueue", {"task": tid, "queue": queue})
            return tid

        variants = [Variant(n, p, work / n, url) for n, p in pythons.items()]
        for v in variants:  # warm-up: venv cache, parse cache
            v.run_job(new_task())
        srv = psutil.Process(server.pid)
        server_cpu = dict.fromkeys(pythons, 0.0)
        for _ in range(args.runs):
            for v in variants:
                tid = new_task()
                c0 = sum(srv.cpu_times()[:2])
                v.job.append(v.run_job(tid))
                server_cpu[v.name] += sum(srv.cpu_times()[:2]) - c0
        ids = [t["id"] for t in client.send(
            "tasks.get_all", {"status": ["completed"], "only_fields": ["id"], "page_size": 10000}
        )["tasks"]]  # fmt: skip
        expected = (args.runs + 1) * len(variants)
        if len(ids) != expected:
            raise SystemExit(f"{len(ids)} tasks completed, {expected} expected")
        report(variants, server_cpu, args.runs)
    finally:
        client.close()
        server.terminate()
        server.wait(30)
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def parts(variants: list[Variant], reps: int) -> dict[str, dict[str, list[float]]]:
    """The components measured alone, ``reps`` times each, the variants interleaved."""
    argvs: dict[str, dict[str, tuple[list[str], Path]]] = {}
    imports = (  # what the job's command imports before it runs (older versions: click's)
        "import hpcagent.cli\ntry:\n    import hpcagent.executor.launch\n"
        "except ImportError:\n    import hpcagent.commands.execute"
    )
    for v in variants:
        code = v.work / "code"
        code.mkdir(exist_ok=True)
        (code / "main.py").write_text("x = 1\nprint(x * 2)\n")
        bash = v.work / "bash-only.sh"
        text = v.script("0" * 32).read_text()
        execute = next(line for line in text.splitlines() if " execute --id " in line)
        bash.write_text(text.replace(execute, "true"))
        argvs[v.name] = {
            "task python": ([str(v.task_python()), "-u", "main.py"], code),
            "bash": (["bash", str(bash)], v.work),
            "imports": ([v.python, "-c", imports], v.work),
            "python": ([v.python, "-c", "pass"], v.work),
        }
    out = {v.name: {k: [] for k in argvs[v.name]} for v in variants}
    for _ in range(reps):
        for v in variants:
            for key, (argv, cwd) in argvs[v.name].items():
                out[v.name][key].append(cpu_of(argv, cwd=cwd, env=v.env))
    return out


def report(variants: list[Variant], server_cpu: dict[str, float], runs: int) -> None:
    rows: list[dict[str, Any]] = []
    measured = parts(variants, max(5, runs // 2))
    for v in variants:
        alone = {k: median(xs) for k, xs in measured[v.name].items()}
        job = median(v.job)
        rows.append({
            "hpcagent": v.name,
            "job median": job,
            "job min": min(v.job),
            "task python": alone["task python"],
            "bash": alone["bash"],
            "executor": job - alone["task python"] - alone["bash"],
            "of which imports": alone["imports"] - alone["python"],
            "python -c pass": alone["python"],
            "server per task": server_cpu[v.name] / runs,
        })  # fmt: skip
    keys = list(rows[0])
    print("\nCPU seconds per trivial task (medians unless said):\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [row["hpcagent"], *(f"{row[k]:.3f}" for k in keys[1:])]
        print("| " + " | ".join(cells) + " |")
    print("\n" + json.dumps({"runs": runs, "rows": rows}))


if __name__ == "__main__":
    main()
