"""``hpcagent daemon`` end to end: embedded server + daemon(s) + the real ``hpcagent execute``.

Tasks are created the way a user would (``hpcagent task create --script ... --enqueue Q``);
the script prints its GPU environment (checked through the task log) and writes small files
into a shared folder:

* ``gpu<N>.held`` is created with O_EXCL for every GPU in ``CUDA_VISIBLE_DEVICES`` and removed
  at the end, so two tasks holding one GPU at the same time make the second one fail
  ("CLASH") — over-allocation cannot go unnoticed;
* ``<name>.started`` records what the task saw; ``--wait-for a,b`` makes a task wait until
  those tasks have started too (a rendezvous: it only completes when they ran at the same
  time), so concurrency is shown without looking at a clock;
* ``order.txt`` gets one line per task start (the execution order) and ``running/<name>``
  exists while a task runs (for the services-mode limit).

GPU ids are only environment values here (no GPU on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import api_section, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DYNAMIC = {"quad": "4", "dual": "2", "opportunistic": "1-4"}

TASK_SCRIPT = r"""
import argparse, json, os, pathlib, signal, sys, time
p = argparse.ArgumentParser()
p.add_argument("--dir", required=True)
p.add_argument("--name", required=True)
p.add_argument("--wait-for", default="")
p.add_argument("--sleep", type=float, default=0.0)
a = p.parse_args()
d = pathlib.Path(a.dir)
cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
nvd = os.environ.get("NVIDIA_VISIBLE_DEVICES", "<unset>")
wid = os.environ.get("CLEARML_WORKER_ID", "")
venv = int(sys.prefix != sys.base_prefix)
print(f"ENV name={a.name} CVD={cvd} NVD={nvd} WID={wid} VENV={venv}", flush=True)
gpus = [g for g in cvd.split(",") if g and cvd != "<unset>"]
held = []


def _stopped(signum, _frame):  # an aborted task hands its GPU files back too
    for g in held:
        (d / f"gpu{g}.held").unlink(missing_ok=True)
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _stopped)
for g in gpus:
    try:
        os.close(os.open(d / f"gpu{g}.held", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        print(f"CLASH on GPU {g}", flush=True)
        for h in held:
            os.unlink(d / f"gpu{h}.held")
        sys.exit(3)
    held.append(g)
(d / "running").mkdir(exist_ok=True)
(d / "running" / a.name).touch()
running = sorted(x.name for x in (d / "running").iterdir())
with open(d / "order.txt", "a") as fh:
    fh.write(a.name + "\n")
(d / f"{a.name}.started").write_text(json.dumps({"gpus": gpus, "cvd": cvd, "nvd": nvd,
                                                 "wid": wid, "running": running,
                                                 "pid": os.getpid()}))
for other in filter(None, a.wait_for.split(",")):
    deadline = time.monotonic() + 90
    while not (d / f"{other}.started").exists():
        if time.monotonic() > deadline:
            print(f"RENDEZVOUS-TIMEOUT waiting for {other}", flush=True)
            sys.exit(4)
        time.sleep(0.05)
time.sleep(a.sleep)
(d / "running" / a.name).unlink()
for g in held:
    os.unlink(d / f"gpu{g}.held")
print(f"DONE {a.name}", flush=True)
"""


class Rig:
    """Server, config and helpers to run the ``hpcagent`` CLI as a user would."""

    def __init__(self, tmp: Path, server: Any) -> None:
        self.tmp = tmp
        self.server = server
        self.shared = tmp / "shared"
        self.shared.mkdir()
        self.script = tmp / "envtask.py"
        self.script.write_text(TASK_SCRIPT)
        self.state = tmp / "daemon-state"
        conf = {
            "api": api_section(server, http={"retries": 2, "timeout_sec": 10}),
            "agent": {
                "venvs_dir": str(tmp / "builds"),
                "venvs_cache": {"path": str(tmp / "venv-cache"), "free_space_threshold_gb": 0},
                "vcs_cache": {"enabled": True, "path": str(tmp / "vcs-cache")},
                "package_manager": {"type": "uv", "extra_args": ["--no-index"]},
                "metrics_interval_sec": 1,
                "abort_poll_interval_sec": 0.5,
            },
            "executor": {"kill_grace_sec": 5},
        }
        self.conf = tmp / "clearml.conf"
        self.conf.write_text(json.dumps(conf))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "CUDA"))}
        self.env["CLEARML_CONFIG_FILE"] = str(self.conf)
        self.procs: list[subprocess.Popen[bytes]] = []

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-c", "from hpcagent.cli import main; main()", *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{args} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def task(self, queue: str, name: str, *, wait_for: str = "", sleep: float = 0.0) -> str:
        args = [f"dir={self.shared}", f"name={name}", f"sleep={sleep}"]
        if wait_for:
            args.append(f"wait-for={wait_for}")
        res = self.cli(
            "task", "create", "--project", "daemon-e2e", "--name", f"task-{name}",
            "--script", str(self.script), "--enqueue", queue,
            *[x for kv in args for x in ("--args", kv)],
        )  # fmt: skip
        return res.stdout.strip().splitlines()[-1].strip()

    def daemon(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.argv(
                    "daemon", "--state-dir", str(self.state), "--poll-interval", "0.3", *args
                ),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        files = [*self.tmp.glob("daemon-*.log"), *self.state.glob("*/daemon.log")]
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(files))

    def status(self, task_id: str) -> str:
        task = self.server.send("tasks.get_by_id", {"task": task_id})["task"]
        return str(task["status"])

    def wait_done(self, task_ids: list[str], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {t: self.status(t) for t in task_ids}
            if all(s in ("completed", "failed", "stopped") for s in states.values()):
                bad = {t: s for t, s in states.items() if s != "completed"}
                tails = ["\n".join(self.log_lines(t)[-15:]) for t in bad]
                assert not bad, f"{bad}\n" + "\n".join(tails) + "\n" + self.logs()
                return
            time.sleep(0.3)
        raise AssertionError(f"not done: {states}\n{self.logs()}")

    def log_lines(self, task_id: str) -> list[str]:
        data = self.server.send(
            "events.get_task_log", {"task": task_id, "batch_size": 10000, "navigate_earlier": False}
        )
        return [line for e in data["events"] for line in str(e.get("msg", "")).split("\n")]

    def env_line(self, task_id: str) -> dict[str, str]:
        """The task's ``ENV ...`` line from its log, as a dict."""
        for line in self.log_lines(task_id):
            if line.startswith("ENV "):
                return dict(part.split("=", 1) for part in line[4:].split())
        raise AssertionError(f"no ENV line in the log of {task_id}: {self.log_lines(task_id)}")

    def started(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.shared / f"{name}.started").read_text()))

    def stop_all(self) -> None:
        for pid_file in self.state.glob("*/daemon.pid"):  # detached daemons
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def rig(tmp_path: Path, embedded_server: Any) -> Iterator[Rig]:
    r = Rig(tmp_path, embedded_server)
    try:
        yield r
    finally:
        r.stop_all()


def _pid(state_root: Path, worker_dir: str) -> int:
    return int((state_root / worker_dir / "daemon.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of nobody in particular counts as gone
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False


def test_two_daemons_own_gpus_concurrently_and_stop_only_own(rig: Rig) -> None:
    host = socket.gethostname()
    common = ["--queue", "shared", "--create-queue", "--poll-interval", "0.3"]
    for gpu in ("0", "1"):
        rig.cli("daemon", "--state-dir", str(rig.state), "--gpus", gpu, *common, "--detached")
    pid0 = _pid(rig.state, f"{host}_gpu0")
    pid1 = _pid(rig.state, f"{host}_gpu1")
    assert pid0 != pid1
    # the same GPUs again: refused, the running daemon is left alone
    dup = rig.cli("daemon", "--state-dir", str(rig.state), "--gpus", "0", *common, "--detached",
                  check=False)  # fmt: skip
    assert dup.returncode == 2
    assert "already runs" in dup.stderr
    assert _pid(rig.state, f"{host}_gpu0") == pid0
    # Each daemon runs one task at a time; each task waits for the other, so both complete
    # only when they ran at the same time, on different daemons.
    wait_for(lambda: rig.server.send("queues.get_all", {"name": "^shared$"})["queues"], timeout=60)
    t_a = rig.task("shared", "a", wait_for="b")
    t_b = rig.task("shared", "b", wait_for="a")
    rig.wait_done([t_a, t_b])
    envs = {rig.env_line(t)["WID"]: rig.env_line(t) for t in (t_a, t_b)}
    assert set(envs) == {f"{host}:gpu0", f"{host}:gpu1"}
    for gpu in ("0", "1"):
        assert envs[f"{host}:gpu{gpu}"]["CVD"] == gpu
        assert envs[f"{host}:gpu{gpu}"]["NVD"] == gpu
    # both workers are registered and report machine stats
    workers = {w["id"]: w for w in rig.server.send("workers.get_all", {})["workers"]}
    for gpu in ("0", "1"):
        w = workers[f"{host}:gpu{gpu}"]
        assert w["machine_stats"]["memory_free"] > 0
        assert [q["name"] for q in w["queues"]] == ["shared"]
    # --stop with --gpus 0 stops that daemon only
    res = rig.cli("daemon", "--state-dir", str(rig.state), "--gpus", "0", "--stop")
    assert f"stopped daemon {host}:gpu0" in res.stdout
    wait_for(lambda: not _alive(pid0), timeout=60)
    assert _alive(pid1)
    t_c = rig.task("shared", "c")
    rig.wait_done([t_c])
    assert rig.env_line(t_c)["CVD"] == "1"
    workers = {w["id"] for w in rig.server.send("workers.get_all", {})["workers"]}
    assert f"{host}:gpu0" not in workers
    assert f"{host}:gpu1" in workers
    rig.cli("daemon", "--state-dir", str(rig.state), "--gpus", "1", "--stop")
    wait_for(lambda: not _alive(pid1), timeout=60)
    # a second --stop finds nothing to stop and says so
    again = rig.cli("daemon", "--state-dir", str(rig.state), "--gpus", "1", "--stop", check=False)
    assert again.returncode == 2
    assert "not running" in (again.stderr + again.stdout)


def test_dynamic_gpus_pack_as_specified_without_overallocation(rig: Rig) -> None:
    for q in ("quad", "dual", "opportunistic"):
        rig.server.send("queues.create", {"name": q})
    # quad tasks wait for each other: they complete only if both held 4 GPUs at once.
    tasks = {
        "q1": rig.task("quad", "q1", wait_for="q2", sleep=0.5),
        "q2": rig.task("quad", "q2", wait_for="q1", sleep=0.5),
        "d1": rig.task("dual", "d1", wait_for="d2", sleep=0.5),
        "d2": rig.task("dual", "d2", wait_for="d1", sleep=0.5),
    }
    for i in range(4):
        tasks[f"o{i}"] = rig.task("opportunistic", f"o{i}", sleep=0.3)
    rig.daemon(
        "--dynamic-gpus", "--gpus", "0-7", "--queue", "quad=4", "dual=2", "opportunistic=1-4"
    )
    rig.wait_done(list(tasks.values()), timeout=240)
    seen: dict[str, list[str]] = {n: rig.started(n)["gpus"] for n in tasks}
    for name, gpus in seen.items():
        assert set(gpus) <= {str(i) for i in range(8)}
        assert len(set(gpus)) == len(gpus)
        want = {"q": (4, 4), "d": (2, 2), "o": (1, 4)}[name[0]]
        assert want[0] <= len(gpus) <= want[1], (name, gpus)
        assert rig.env_line(tasks[name])["CVD"] == ",".join(gpus)
    assert set(seen["q1"]).isdisjoint(seen["q2"])
    assert set(seen["d1"]).isdisjoint(seen["d2"])
    for tid in tasks.values():
        assert not any("CLASH" in line for line in rig.log_lines(tid))
    # every GPU is back in the pool (the saved allocations are empty once all settled)
    host = socket.gethostname()
    gpu_file = rig.state / f"{host}_dgpu0,1,2,3,4,5,6,7" / "gpus.json"
    wait_for(lambda: json.loads(gpu_file.read_text()) == {}, timeout=60)


def test_order_fairness_alternates_queues(rig: Rig) -> None:
    for q in ("fair-a", "fair-b"):
        rig.server.send("queues.create", {"name": q})
    ids = [rig.task("fair-a", f"a{i}") for i in range(3)]
    ids += [rig.task("fair-b", f"b{i}") for i in range(3)]
    rig.daemon("--cpu-only", "--order-fairness", "--queue", "fair-a", "fair-b")
    rig.wait_done(ids)
    order = (rig.shared / "order.txt").read_text().split()
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]
    env = rig.env_line(ids[0])  # --cpu-only: no GPU visible
    assert (env["CVD"], env["NVD"]) == ("", "none")
    assert env["WID"] == f"{socket.gethostname()}:cpu"


def test_priority_order_without_fairness(rig: Rig) -> None:
    for q in ("high", "low"):
        rig.server.send("queues.create", {"name": q})
    ids = [rig.task("low", f"l{i}") for i in range(2)]
    ids += [rig.task("high", f"h{i}") for i in range(2)]
    rig.daemon("--cpu-only", "--queue", "high", "low")
    rig.wait_done(ids)
    assert (rig.shared / "order.txt").read_text().split() == ["h0", "h1", "l0", "l1"]


def test_services_mode_keeps_at_most_n_running(rig: Rig) -> None:
    rig.server.send("queues.create", {"name": "svc"})
    # pairs that wait for each other show that 2 do run at once; the running/ folder shows
    # that never more than 2 do.
    ids = [
        rig.task("svc", "s0", wait_for="s1", sleep=0.5),
        rig.task("svc", "s1", wait_for="s0", sleep=0.5),
        rig.task("svc", "s2", wait_for="s3", sleep=0.5),
        rig.task("svc", "s3", wait_for="s2", sleep=0.5),
        rig.task("svc", "s4", sleep=0.5),
    ]
    rig.daemon("--cpu-only", "--services-mode", "2", "--queue", "svc")
    rig.wait_done(ids)
    for i in range(5):
        running = rig.started(f"s{i}")["running"]
        assert f"s{i}" in running
        assert len(running) <= 2, running
    host = socket.gethostname()
    for tid in ids:  # services mode with venvs (the seed allows it with Docker only)
        assert rig.env_line(tid)["WID"] == f"{host}:cpu:service"
        assert rig.env_line(tid)["VENV"] == "1"


def test_working_hours_and_force_switch_apply(rig: Rig) -> None:
    """Outside working hours the daemon pulls nothing; the worker's ``force`` property (as
    the submitter reads it) lets it pull anyway."""
    rig.server.send("queues.create", {"name": "hours"})
    tid = rig.task("hours", "h0")
    rig.daemon("--cpu-only", "--queue", "hours", "--downtime", "0-23")
    host = socket.gethostname()
    wid = f"{host}:cpu"
    wait_for(
        lambda: wid in {w["id"] for w in rig.server.send("workers.get_all", {})["workers"]},
        timeout=60,
    )
    log = rig.tmp / "daemon-0.log"
    # several cycles ran (each reports the worker) and the task is still waiting
    wait_for(lambda: "queues hours" in log.read_text(), timeout=60)
    time.sleep(1.5)
    assert rig.status(tid) == "queued"
    assert not (rig.shared / "order.txt").exists()
    rig.server.send(
        "workers.set_runtime_properties",
        {"worker": wid, "runtime_properties": [{"key": "force", "value": "on"}]},
    )
    rig.wait_done([tid])
    assert rig.env_line(tid)["WID"] == wid


def test_stopping_the_daemon_stops_its_running_task(rig: Rig) -> None:
    rig.server.send("queues.create", {"name": "long"})
    tid = rig.task("long", "long0", sleep=300)
    proc = rig.daemon("--gpus", "3", "--queue", "long")
    wait_for(lambda: (rig.shared / "long0.started").exists(), timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0
    assert rig.status(tid) == "stopped"
    task = rig.server.send("tasks.get_by_id", {"task": tid})["task"]
    assert "signal" in str(task.get("status_reason", "")) + str(task.get("status_message", ""))
    assert (rig.shared / "running" / "long0").exists()  # the task did not finish on its own
    wait_for(lambda: not _alive(rig.started("long0")["pid"]), timeout=30)  # no orphan left
    assert not any(line.startswith("DONE") for line in rig.log_lines(tid))
    workers = {w["id"] for w in rig.server.send("workers.get_all", {})["workers"]}
    assert f"{socket.gethostname()}:gpu3" not in workers


@pytest.mark.slow
def test_dynamic_gpus_fifty_random_tasks_never_overallocate(rig: Rig) -> None:
    """50 tasks from the three queues in a random order (seed printed on failure), created
    through the API for speed; the GPU files would make any shared GPU fail its task."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    qids = {q: rig.server.send("queues.create", {"name": q})["id"] for q in DYNAMIC}
    rig.daemon(
        "--dynamic-gpus", "--gpus", "0-7", "--queue", *[f"{q}={d}" for q, d in DYNAMIC.items()]
    )
    tasks: dict[str, tuple[str, str]] = {}
    for i in range(50):
        queue = rng.choice(list(DYNAMIC))
        args = {"dir": str(rig.shared), "name": f"r{i}", "sleep": str(rng.choice([0, 0.2, 0.5]))}
        body = {
            "name": f"random-{i}",
            "type": "training",
            "script": {
                "binary": "python3",
                "working_dir": ".",
                "entry_point": "envtask.py",
                "diff": TASK_SCRIPT,
                "requirements": {"pip": ""},
            },
            "hyperparams": {
                "Args": {k: {"section": "Args", "name": k, "value": v} for k, v in args.items()},
                "properties": {"args-on-argv": {"name": "args-on-argv", "value": "true"}},
            },
        }
        tid = str(rig.server.send("tasks.create", body)["id"])
        rig.server.send("tasks.enqueue", {"task": tid, "queue": qids[queue]})
        tasks[f"r{i}"] = (tid, queue)
    rig.wait_done([t for t, _ in tasks.values()], timeout=480)
    bounds = {"quad": (4, 4), "dual": (2, 2), "opportunistic": (1, 4)}
    for name, (_, queue) in tasks.items():
        gpus = rig.started(name)["gpus"]
        assert bounds[queue][0] <= len(gpus) <= bounds[queue][1], (seed, name, queue, gpus)
        assert set(gpus) <= {str(i) for i in range(8)}, seed
    assert not list(rig.shared.glob("gpu*.held")), seed
    # the pool was shared: several tasks ran at once
    assert max(len(rig.started(n)["running"]) for n in tasks) >= 2, seed


def test_daemon_survives_a_server_restart(rig: Rig) -> None:
    rig.server.send("queues.create", {"name": "blip"})
    proc = rig.daemon("--cpu-only", "--queue", "blip")
    wid = f"{socket.gethostname()}:cpu"
    wait_for(
        lambda: wid in {w["id"] for w in rig.server.send("workers.get_all", {})["workers"]},
        timeout=60,
    )
    rig.server.stop()
    log = rig.tmp / "daemon-0.log"
    wait_for(lambda: "unreachable since" in log.read_text(), timeout=120)
    assert proc.poll() is None
    rig.server.start()
    rig.server._token = None  # a restarted server: log in again
    tid = rig.task("blip", "after")
    rig.wait_done([tid])
    assert rig.env_line(tid)["WID"] == wid
    text = log.read_text()
    # one line when the server went, one when it came back; none per attempt
    assert text.count("unreachable since") == 1, text
    assert text.count("back after") == 1, text


def test_aborted_task_gives_its_gpus_back(rig: Rig) -> None:
    rig.server.send("queues.create", {"name": "pair"})
    first = rig.task("pair", "p0", sleep=300)
    second = rig.task("pair", "p1")
    rig.daemon("--dynamic-gpus", "--gpus", "0,1", "--queue", "pair=2")
    wait_for(lambda: (rig.shared / "p0.started").exists(), timeout=120)
    assert rig.status(second) == "queued"  # both GPUs are taken by p0
    rig.cli("task", "abort", first)
    rig.wait_done([second])
    assert rig.status(first) == "stopped"
    assert rig.started("p1")["gpus"] == ["0", "1"]


def test_daemon_killed_with_sigkill_re_adopts_its_running_task(rig: Rig) -> None:
    """kill -9 of the daemon while its task runs: the task runs on; a new daemon on the same
    state folder re-adopts it (its slot stays taken: the next task waits), sees it end, and
    the task is completed once (one run, one final status); then the next task runs."""
    rig.server.send("queues.create", {"name": "phoenix"})
    first = rig.task("phoenix", "a", wait_for="release")
    second = rig.task("phoenix", "b")
    proc = rig.daemon("--gpus", "2", "--queue", "phoenix")
    wait_for(lambda: (rig.shared / "a.started").exists(), timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    task_pid = rig.started("a")["pid"]
    assert _alive(task_pid)  # the task outlived its daemon
    rig.daemon("--gpus", "2", "--queue", "phoenix")
    wait_for(lambda: "re-adopted" in rig.logs(), timeout=120)
    time.sleep(2.0)  # several pull rounds of the new daemon
    assert rig.status(second) == "queued"  # the adopted task still holds the one slot
    assert rig.status(first) == "in_progress"
    (rig.shared / "release.started").touch()
    rig.wait_done([first, second])
    assert (rig.shared / "order.txt").read_text().split() == ["a", "b"]
    lines = rig.log_lines(first)
    assert sum(line.startswith("ENV ") for line in lines) == 1
    assert sum(line == "DONE a" for line in lines) == 1
    assert "LOST" not in rig.logs()
    task = rig.server.send("tasks.get_by_id", {"task": first})["task"]
    assert task["status"] == "completed"
    assert rig.env_line(first)["CVD"] == rig.env_line(second)["CVD"] == "2"
    ledger = next(rig.state.glob("*/ledger.sqlite"))

    def rows() -> list[tuple[str, str, str]]:
        with contextlib.closing(sqlite3.connect(ledger)) as db:
            return sorted(db.execute("SELECT task_id, state, outcome FROM entries").fetchall())

    done = "job COMPLETED; task completed"
    want = sorted([(first, "finished", done), (second, "finished", done)])
    wait_for(lambda: rows() == want, timeout=60)  # one row per task, each settled once
