"""Benchmark of the executor (``hpcagent execute``); prints one line per figure.

Starts a real ``hpcagent server`` subprocess on a free port (fresh temporary data dir), then:

1. **warm start**: process start of ``hpcagent execute`` → the first line of user code, with the
   venv and repository caches warm (a literal one-line script; median of ``--warm-runs``);
2. **cold venv**: building a venv for the same requirements with uv and with pip, empty caches
   (``UV_CACHE_DIR``/``PIP_CACHE_DIR`` fresh, venv cache fresh), installs offline from a wheelhouse
   downloaded once with ``pip download`` (``--reqs``); ratio pip/uv;
3. **log throughput**: the task prints ``--lines`` lines as fast as it can; figures: lines per
   second shipped (all lines confirmed on the server through events.get_task_log, divided by the
   executor's wall time from child start to end of delivery), and the task's own loop time under
   the executor against the same script run bare with its output going to a file (the executor's
   own output goes to a file too, as in a Slurm job).

    .venv/bin/python benchmarks/executor_bench.py [--lines 1000000] [--warm-runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ACCESS_KEY = "BENCHACCESSKEY"
SECRET_KEY = "bench-secret-key-0123456789abcdefghijklmnop"  # >= 32 characters
HPCAGENT = [sys.executable, "-c", "from hpcagent.cli import main; main()"]


class Server:
    def __init__(self, data_dir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HPCAGENT_SERVER_ACCESS_KEY=ACCESS_KEY)
        env["HPCAGENT_SERVER_SECRET_KEY"] = SECRET_KEY
        argv = [sys.executable, "-m", "hpcagent.commands.server", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--data-dir", str(data_dir), "--log-level", "warning"]
        self.proc = subprocess.Popen(argv, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/debug.ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        token = requests.get(f"{self.url}/auth.login", auth=(ACCESS_KEY, SECRET_KEY), timeout=10)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token.json()['data']['token']}"

    def send(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.session.post(f"{self.url}/{endpoint}", json=body, timeout=120)
        if reply.status_code != 200:
            raise RuntimeError(f"{endpoint}: {reply.text[:300]}")
        data: dict[str, Any] = reply.json()["data"]
        return data

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def write_conf(path: Path, server: Server, tmp: Path, extra_args: list[str]) -> Path:
    conf = {
        "api": {
            "api_server": server.url,
            "credentials": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
        },
        "agent": {
            "venvs_dir": str(tmp / "builds"),
            "venvs_cache": {"path": str(tmp / "venv-cache"), "free_space_threshold_gb": 0},
            "vcs_cache": {"path": str(tmp / "vcs-cache")},
            "package_manager": {"type": "uv", "extra_args": extra_args},
            "metrics_interval_sec": 10,
        },
    }
    path.write_text(json.dumps(conf))
    return path


def literal_task(server: Server, code: str, name: str, reqs: str = "") -> str:
    script = {
        "entry_point": "main.py",
        "binary": "python3",
        "diff": code,
        "requirements": {"pip": reqs},
    }
    return str(
        server.send("tasks.create", {"name": name, "type": "training", "script": script})["id"]
    )


def execute(task_id: str, conf: Path, *extra: str) -> tuple[float, str]:
    """Run the executor with its output going to a file (as in a Slurm job); returns
    (start time, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    env["CLEARML_CONFIG_FILE"] = str(conf)
    with tempfile.TemporaryFile() as out:
        t0 = time.time()
        code = subprocess.call(
            [*HPCAGENT, "execute", "--id", task_id, "--force", *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=3600,
        )
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if code != 0:
        raise RuntimeError(f"execute failed ({code}): {text[-3000:]}")
    return t0, text


def bench_warm_start(server: Server, conf: Path, runs: int) -> None:
    code = "import time\nprint('FIRST', repr(time.time()), flush=True)\n"
    latencies = []
    for i in range(runs + 1):  # the first run fills the venv cache
        task_id = literal_task(server, code, f"warm-{i}")
        t0, out = execute(task_id, conf, "--disable-monitoring")
        first = next(line for line in out.splitlines() if line.startswith("FIRST "))
        if i:
            latencies.append(float(first.split()[1]) - t0)
    print(
        "warm start (process start -> first user line):"
        f" median {statistics.median(latencies):.3f} s, min {min(latencies):.3f} s,"
        f" max {max(latencies):.3f} s over {runs} runs"
    )


def bench_cold_venv(tmp: Path, reqs: list[str]) -> None:
    from hpcagent.executor.venv import VenvBuilder, VenvSpec

    wheels = tmp / "wheelhouse"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), *reqs],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        print(f"cold venv: skipped (pip download failed: {res.stderr.strip()[-300:]})")
        return
    times: dict[str, float] = {}
    for manager in ("uv", "pip"):
        root = Path(tempfile.mkdtemp(dir=tmp, prefix=f"cold-{manager}-"))
        os.environ["UV_CACHE_DIR"] = str(root / "uv-cache")
        os.environ["PIP_CACHE_DIR"] = str(root / "pip-cache")
        spec = VenvSpec(
            python=sys.executable,
            python_version=platform.python_version(),
            requirements=tuple(reqs),
            manager=manager,
            extra_args=("--no-index", "--find-links", str(wheels)),
        )
        builder = VenvBuilder(
            cache_dir=root / "cache", free_space_threshold_gb=0, log=lambda _m: None
        )
        t0 = time.perf_counter()
        builder.prepare(spec, root)
        times[manager] = time.perf_counter() - t0
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"cold venv ({', '.join(reqs)}; offline wheelhouse, empty caches): uv {times['uv']:.2f} s,"
        f" pip {times['pip']:.2f} s, pip/uv = {times['pip'] / times['uv']:.1f}x"
    )


LOOP = """\
import sys, time
n = {n}
t0 = time.perf_counter()
w = sys.stdout.write
for i in range(n):
    w(f"line {{i}} of the benchmark output\\n")
sys.stdout.flush()
sys.stderr.write(f"LOOP {{time.perf_counter() - t0:.4f}}\\n")
"""


def bench_logs(server: Server, conf: Path, tmp: Path, n: int, reps: int) -> None:
    code = LOOP.format(n=n)
    script = tmp / "loop.py"
    script.write_text(code)
    bare = []
    for _ in range(reps):
        # bare: the output goes straight to a file, as a Slurm job without the executor
        with tempfile.TemporaryFile() as out:
            res = subprocess.run(
                [sys.executable, "-u", str(script)], stdout=out, stderr=subprocess.PIPE, text=True
            )
        bare.append(float(res.stderr.split()[-1]))
    under, walls, rates = [], [], []
    for r in range(reps):
        task_id = literal_task(server, code, f"logs-{r}")
        t0, out = execute(task_id, conf, "--disable-monitoring")
        wall = time.time() - t0
        loop = float(next(x for x in out.splitlines() if x.startswith("LOOP ")).split()[1])
        total = 0
        data = server.send(
            "events.get_task_log", {"task": task_id, "batch_size": 10000, "navigate_earlier": False}
        )
        for event in data["events"]:
            total += sum(1 for x in str(event.get("msg", "")).split("\n") if x.startswith("line "))
        if total != n:
            raise RuntimeError(f"{total} of {n} lines arrived")
        under.append(loop)
        walls.append(wall)
        rates.append(n / wall)
    b, u = statistics.median(bare), statistics.median(under)
    print(
        f"logs: {n:,} lines, all delivered; shipped {statistics.median(rates):,.0f} lines/s"
        f" (executor wall {statistics.median(walls):.2f} s incl. start and final flush)"
    )
    print(
        f"logs: task loop bare {b:.3f} s vs under the executor {u:.3f} s:"
        f" slowdown {100 * (u - b) / b:+.1f} % (median of {reps})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--warm-runs", type=int, default=5)
    ap.add_argument("--log-reps", type=int, default=3)
    ap.add_argument("--reqs", nargs="*", default=["requests", "pyyaml", "tqdm"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["warm", "cold", "logs"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hpcagent-exec-bench-"))
    print(
        f"machine: nproc={os.cpu_count()} {platform.platform()} Python {platform.python_version()}"
    )
    server = Server(tmp / "server-data")
    try:
        conf = write_conf(tmp / "clearml.conf", server, tmp, [])
        if "warm" not in args.skip:
            bench_warm_start(server, conf, args.warm_runs)
        if "cold" not in args.skip:
            bench_cold_venv(tmp, args.reqs)
        if "logs" not in args.skip:
            bench_logs(server, conf, tmp, args.lines, args.log_reps)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
