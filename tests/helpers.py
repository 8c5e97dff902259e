"""Helpers shared by the end-to-end and Slurm tests (import as ``from helpers import ...``;
``tests/`` is on ``sys.path`` through ``tests/conftest.py``).

A test repository and wheelhouse, clearml.conf files for the embedded server, the environment
and argv of the CLI as a user runs it, tasks created, read and waited for through the API, and
whether the one-host Slurm answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcagent.server.auth import Credentials, clearml_conf_snippet
from hpcagent.taskbuild import ARGS_ON_ARGV_PROPERTY as ARGS_ON_ARGV

#: Job scripts and outputs must be readable by slurmd: keep them off pytest's private tmp.
SLURM_WORK_ROOT = Path("/var/tmp/hpcagent-slurm-tests")
#: Job folders of the Grid Engine tests (tests/gridengine).
GRIDENGINE_WORK_ROOT = Path("/var/tmp/hpcagent-gridengine-tests")

#: ``hpcagent-slurm`` as a child process: ``[*SLURM_MAIN, "--queue", ...]``.
SLURM_MAIN = [sys.executable, "-c", "from hpcagent.cli import slurm_main; slurm_main()"]


def slurm_ready() -> str:
    """Why the one-host Slurm cannot be used now ("" when sbatch exists and sinfo answers)."""
    if shutil.which("sbatch") is None:
        return "sbatch not installed"
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0 or not res.stdout.strip():
        return f"Slurm not answering (tests/slurm/cluster.sh up): {res.stderr.strip()[:200]}"
    return ""


def require_slurm() -> None:
    """Skip the test, with the reason, when the one-host Slurm cannot be used now."""
    why = slurm_ready()
    if why:
        pytest.skip(why)


def sacct_jobs_named(name: str) -> list[str]:
    """Ids of this cluster's jobs named ``name`` in the last two hours, from accounting."""
    res = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "now-2hours", "--name", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line for line in res.stdout.split() if line]


def slurm_workdir(name: str, root: Path = SLURM_WORK_ROOT) -> Path:
    """A fresh folder ``<root>/<name>-<ns>`` that slurmd can read and write (mode 0777)."""
    path = root / f"{name}-{time.time_ns()}"
    path.mkdir(parents=True, mode=0o777)
    return path


def clean_env() -> dict[str, str]:
    """This process's environment without ``CLEARML_*`` and ``SLURM_*`` (the child reads only
    the config file it is given, and is not taken for a Slurm job)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}


def api_section(server: Any, **extra: Any) -> dict[str, Any]:
    """The ``api`` section of a clearml.conf for ``server`` (the embedded server fixture)."""
    return {
        "api_server": server.url,
        "credentials": {"access_key": server.access_key, "secret_key": server.secret_key},
        **extra,
    }


def write_server_conf(path: Path, server: Any, **sections: Any) -> Path:
    """Write a clearml.conf (JSON, which is HOCON) for ``server`` with more ``sections``."""
    path.write_text(json.dumps({"api": api_section(server), **sections}))
    return path


def start_logged(
    argv: list[str], log: Path, *, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)


TRAIN_PY = """\
import argparse
import os
import signal
import subprocess
import sys
import time

import hpca_tiny

MARK = "original"

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.5)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--verbose", action="store_true")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--lines", type=int, default=0)
p.add_argument("--exit-code", type=int, default=0)
p.add_argument("--pid-file", default="")
p.add_argument("--grandchild", action="store_true")
a = p.parse_args()


def on_term(signum, frame):
    print(f"got signal {signum}, saving checkpoint", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)
print(f"lr={a.lr} epochs={a.epochs} verbose={a.verbose} tiny={hpca_tiny.VALUE} mark={MARK}")
env = os.environ
print(f"task={env.get('CLEARML_TASK_ID')} tobackend={env.get('CLEARML_LOG_TASK_TO_BACKEND')}")
print("progress 10%\\rprogress 50%\\rprogress 100%")
sys.stdout.flush()
if a.pid_file:
    pids = [os.getpid()]
    if a.grandchild:
        pids.append(subprocess.Popen(["sleep", "300"]).pid)
    with open(a.pid_file + ".tmp", "w") as fh:
        fh.write(" ".join(map(str, pids)))
    os.rename(a.pid_file + ".tmp", a.pid_file)
for i in range(a.lines):
    print(f"line {i}", flush=True)
    time.sleep(a.sleep)
if not a.lines:
    time.sleep(a.sleep)
sys.exit(a.exit_code)
"""


def _git(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t")
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


def make_repo(root: Path) -> tuple[Path, str, str]:
    """A bare repo with train.py and requirements.txt; returns (bare path, commit sha, diff)."""
    work = root / "work"
    work.mkdir(parents=True)
    _git(["init", "-q", "-b", "main"], work)
    (work / "train.py").write_text(TRAIN_PY)
    (work / "requirements.txt").write_text("hpca-tiny==1.0\n")
    _git(["add", "."], work)
    _git(["commit", "-q", "-m", "first"], work)
    sha = _git(["rev-parse", "HEAD"], work).strip()
    bare = root / "repo.git"
    _git(["clone", "-q", "--bare", str(work), str(bare)], root)
    # a later commit on main that the task must NOT get (it pins the first commit)
    (work / "train.py").write_text(TRAIN_PY.replace('MARK = "original"', 'MARK = "newer"'))
    _git(["commit", "-q", "-am", "second"], work)
    _git(["push", "-q", str(bare), "main"], work)
    # the task's uncommitted change, as a diff against the first commit
    _git(["checkout", "-q", sha], work)
    (work / "train.py").write_text(TRAIN_PY.replace('MARK = "original"', 'MARK = "patched"'))
    diff = _git(["diff"], work)
    _git(["checkout", "-q", "--", "."], work)
    return bare, sha, diff


def make_wheelhouse(dest: Path, name: str = "hpca_tiny", version: str = "1.0") -> Path:
    """Write a minimal pure-Python wheel by hand (no build backend, no network)."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 'tiny-ok'\n",
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
        ),
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return dest


def write_conf(path: Path, server: Any, tmp: Path, wheelhouse: Path, **agent: Any) -> Path:
    """A clearml.conf for the executor: server, caches under ``tmp``, offline installs."""
    values: dict[str, Any] = {
        "venvs_dir": str(tmp / "builds"),
        "venvs_cache": {
            "path": str(tmp / "venv-cache"),
            "max_entries": 5,
            "free_space_threshold_gb": 0,
        },
        "vcs_cache": {"enabled": True, "path": str(tmp / "vcs-cache")},
        "package_manager": {
            "type": "uv",
            "extra_args": ["--no-index", "--find-links", str(wheelhouse)],
        },
        "metrics_interval_sec": 1,
        "abort_poll_interval_sec": 0.5,
        "task_ping_interval_sec": 5,
    }
    values.update(agent)
    conf = {
        "api": api_section(server, http={"retries": 2, "timeout_sec": 10}),
        "agent": values,
        "executor": {"kill_grace_sec": 5, "final_flush_timeout_sec": 60},
    }
    path.write_text(json.dumps(conf, indent=1))  # JSON is valid HOCON
    return path


def create_task(
    server: Any,
    *,
    name: str = "exec-test",
    script: dict[str, Any],
    args: dict[str, str] | None = None,
    enqueue: bool = True,
    setup_shell_script: str = "",
) -> str:
    hyper: dict[str, Any] = {
        "Args": {
            k: {"section": "Args", "name": k, "value": v, "type": "str"}
            for k, v in (args or {}).items()
        }
    }
    if args:  # as `hpcagent task create --args` records them: on the script's command line
        hyper["properties"] = {
            ARGS_ON_ARGV: {"section": "properties", "name": ARGS_ON_ARGV, "value": "true"}
        }
    body: dict[str, Any] = {
        "name": name,
        "type": "training",
        "script": script,
        "hyperparams": hyper,
    }
    if setup_shell_script:
        body["container"] = {"setup_shell_script": setup_shell_script}
    task_id = str(server.send("tasks.create", body)["id"])
    if enqueue:
        queues = server.send("queues.get_all", {"name": "^exec-q$"}).get("queues") or []
        qid = queues[0]["id"] if queues else server.send("queues.create", {"name": "exec-q"})["id"]
        server.send("tasks.enqueue", {"task": task_id, "queue": qid})
    return task_id


def executor_env(conf: Path) -> dict[str, str]:
    env = clean_env()
    env["CLEARML_CONFIG_FILE"] = str(conf)
    return env


def hpcagent_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from hpcagent.cli import main; main()", *args]


def run_execute(
    task_id: str,
    conf: Path,
    *extra: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``hpcagent execute --id TASK *extra`` with ``conf``; ``env`` is added to the clean env."""
    return subprocess.run(
        hpcagent_argv("execute", "--id", task_id, *extra),
        env={**executor_env(conf), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_execute(task_id: str, conf: Path, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            hpcagent_argv("execute", "--id", task_id, *extra),
            env=executor_env(conf),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    finally:
        fh.close()


def task_log_lines(server: Any, task_id: str) -> list[str]:
    data = server.send(
        "events.get_task_log", {"task": task_id, "batch_size": 10000, "navigate_earlier": False}
    )
    return [line for e in data["events"] for line in str(e.get("msg", "")).split("\n")]


def get_task(server: Any, task_id: str) -> dict[str, Any]:
    return dict(server.send("tasks.get_by_id", {"task": task_id})["task"])


def wait_for(predicate: Any, timeout: float = 120.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def repo_script(s: dict[str, Any], **over: Any) -> dict[str, Any]:
    script = {
        "repository": str(s["bare"]),
        "version_num": s["sha"],
        "branch": "main",
        "entry_point": "train.py",
        "working_dir": ".",
        "binary": "python3",
        "diff": s["diff"],
        "requirements": {"pip": "hpca-tiny==1.0\n"},
    }
    script.update(over)
    return script


def run_sdk(server: Any, tmp_path: Path, script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` with the official SDK against ``server`` (the embedded server fixture),
    with nothing but a clearml.conf written from the server's own snippet; return its
    ``RESULT {json}`` line."""
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        clearml_conf_snippet(server.url, Credentials(server.access_key, server.secret_key))
    )
    env = clean_env()
    env.update({"CLEARML_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def wait_status(
    server: Any, task_id: str, statuses: tuple[str, ...], *, log: Path, timeout: float = 300
) -> None:
    """Wait until the task's status is one of ``statuses``; on a timeout fail with the task and
    the tail of ``log`` (the submitter's)."""
    try:
        wait_for(lambda: get_task(server, task_id)["status"] in statuses, timeout, 0.5)
    except AssertionError:
        tail = log.read_text()[-4000:]
        raise AssertionError(
            f"task {task_id}: {get_task(server, task_id)}\n--- submitter log ---\n{tail}"
        ) from None


#: A task that prints ``sleeping`` and sleeps 400 s (to abort it while it runs).
SLEEPER: dict[str, Any] = {
    "entry_point": "sleeper.py",
    "binary": "python3",
    "diff": "import time\nprint('sleeping', flush=True)\ntime.sleep(400)\n",
    "requirements": {"pip": ""},
}


class SubmitterRig:
    """Base of the tests' rigs around one real ``hpcagent-slurm``: a subclass makes its queues
    (``qids``: its own key → queue id) and templates, then calls :meth:`start`."""

    work: Path
    server: Any
    conf: Path
    proc: subprocess.Popen[bytes]
    log: Path
    qids: dict[str, str]

    def start(
        self,
        work: Path,
        server: Any,
        *,
        scheduler: str,
        templates: Sequence[str],
        queues: Sequence[str],
        extra: Sequence[str] = (),
    ) -> None:
        """``hpcagent-slurm --scheduler SCHEDULER`` as a user runs it, in ``work`` against
        ``server``: a clearml.conf with the test wheelhouse and the submitter's state in
        ``work/state``, polling every second, ``extra`` options, then ``--template-files
        TEMPLATES --queue QUEUES`` (names); its output in ``work/submitter.log``."""
        self.work, self.server = work, server
        conf = write_conf(work / "clearml.conf", server, work, make_wheelhouse(work / "wheels"))
        data = json.loads(conf.read_text())
        data["slurm"] = {"state_dir": str(work / "state"), "poll_interval_sec": 1}
        conf.write_text(json.dumps(data))
        self.conf, self.log = conf, work / "submitter.log"
        argv = [
            *SLURM_MAIN,
            "--config-file", str(conf), "--scheduler", scheduler, "--poll-interval", "1", *extra,
            "--template-files", *templates, "--queue", *queues,
        ]  # fmt: skip
        self.proc = start_logged(argv, self.log, cwd=work, env=clean_env())

    def enqueue(self, queue: str, name: str, script: dict[str, Any] | None = None) -> str:
        """A new task ``name`` (``script``, default a no-op) in the queue ``qids[queue]``."""
        body: dict[str, Any] = {"name": name, "type": "training"}
        body["script"] = script or {"binary": "python3", "diff": "print('noop')\n"}
        tid = str(self.server.send("tasks.create", body)["id"])
        self.server.send("tasks.enqueue", {"task": tid, "queue": self.qids[queue]})
        return tid

    def task(self, tid: str) -> dict[str, Any]:
        return get_task(self.server, tid)

    def wait_status(self, tid: str, statuses: tuple[str, ...], timeout: float = 300) -> None:
        wait_status(self.server, tid, statuses, log=self.log, timeout=timeout)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a child and wait for it (SIGKILL after ``timeout``)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
