"""End-to-end tests of ``hpcagent execute`` against the real embedded server.

Everything is local: a bare git repository made by the test, a wheelhouse with a hand-written
wheel (offline installs through ``agent.package_manager.extra_args``), the embedded server
subprocess (``embedded_server`` fixture) and the executor as a real subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.e2e]

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
        "api": {
            "api_server": server.url,
            "credentials": {"access_key": server.access_key, "secret_key": server.secret_key},
            "http": {"retries": 2, "timeout_sec": 10},
        },
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
    hyper = {
        "Args": {
            k: {"section": "Args", "name": k, "value": v, "type": "str"}
            for k, v in (args or {}).items()
        }
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    env["CLEARML_CONFIG_FILE"] = str(conf)
    return env


def hpcagent_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from hpcagent.cli import main; main()", *args]


def run_execute(
    task_id: str, conf: Path, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hpcagent_argv("execute", "--id", task_id, *extra),
        env=executor_env(conf),
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


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def env_setup(tmp_path: Path, embedded_server: Any) -> dict[str, Any]:
    bare, sha, diff = make_repo(tmp_path / "git")
    wheels = make_wheelhouse(tmp_path / "wheels")
    conf = write_conf(tmp_path / "clearml.conf", embedded_server, tmp_path, wheels)
    return {
        "server": embedded_server,
        "bare": bare,
        "sha": sha,
        "diff": diff,
        "conf": conf,
        "tmp": tmp_path,
    }


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


# -- tests ------------------------------------------------------------------------------------


def test_repo_commit_diff_requirements_args_complete(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    task_id = create_task(
        server,
        script=repo_script(s),
        args={"lr": "0.01", "epochs": "3", "verbose": "true", "sleep": "2.5"},
        setup_shell_script="echo setup-script-ran",
    )
    log_file = s["tmp"] / "exec.log"
    res = run_execute(task_id, s["conf"], "--log-file", str(log_file))
    assert res.returncode == 0, res.stdout + res.stderr
    task = get_task(server, task_id)
    assert task["status"] == "completed", task
    lines = task_log_lines(server, task_id)
    # args took effect, the commit (not the newer one) and the diff were used, the wheel installed
    assert "lr=0.01 epochs=3 verbose=True tiny=tiny-ok mark=patched" in lines
    assert f"task={task_id} tobackend=0" in lines
    assert "progress 100%" in lines  # the carriage-return progress bar collapsed
    assert not any("progress 10%" in line for line in lines)
    assert "setup-script-ran" in lines
    assert any("venv cache: building" in line for line in lines)
    # echoed to the job's own output and the log file
    assert "mark=patched" in res.stdout
    assert "mark=patched" in log_file.read_text()
    # runtime and requirements recorded; the run's own worker entry is gone again
    assert task["runtime"].get("_exec_agent_hostname")
    workers = server.send("workers.get_all", {}).get("workers") or []
    assert task["last_worker"]
    assert task["last_worker"] not in [w.get("id") for w in workers]
    assert "hpca-tiny==1.0" in task["script"]["requirements"]["pip"].lower().replace("_", "-")
    # machine monitoring readable through the API
    scalars = server.send("events.scalar_metrics_iter_histogram", {"task": task_id})
    assert ":monitor:machine" in scalars
    assert "memory_used_gb" in scalars[":monitor:machine"]
    # a second run of a clone hits the caches (repository mirror and venv)
    res2 = run_execute(task_id, s["conf"], "--clone")
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert "venv cache: hit" in res2.stdout
    assert "repository cache: fetching" in res2.stdout


def test_literal_script_failing_marks_failed_with_exit_code(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    script = {
        "entry_point": "fail.py",
        "binary": "python3",
        "diff": "import sys\nprint('about to fail')\nsys.exit(3)\n",
        "requirements": {"pip": ""},
    }
    task_id = create_task(server, script=script)
    res = run_execute(task_id, s["conf"], "--disable-monitoring")
    assert res.returncode == 3, res.stdout + res.stderr
    task = get_task(server, task_id)
    assert task["status"] == "failed"
    assert "exit code 3" in task["status_reason"]
    assert "about to fail" in task["status_message"]


def test_broken_diff_fails_clearly(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    broken = s["diff"].replace('MARK = "original"', 'MARK = "not-there"')
    task_id = create_task(server, script=repo_script(s, diff=broken))
    res = run_execute(task_id, s["conf"])
    assert res.returncode == 10, res.stdout + res.stderr
    task = get_task(server, task_id)
    assert task["status"] == "failed"
    assert "repository" in task["status_reason"]
    assert "diff" in task["status_message"]
    assert any("applying the task's git diff" in line for line in task_log_lines(server, task_id))


def _pids(pid_file: Path) -> list[int]:
    return [int(x) for x in pid_file.read_text().split()] if pid_file.exists() else []


def test_abort_while_running_stops_without_leftovers(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    pid_file = s["tmp"] / "pids"
    task_id = create_task(
        server,
        script=repo_script(s),
        args={"sleep": "300", "pid-file": str(pid_file), "grandchild": "true"},
    )
    proc = start_execute(task_id, s["conf"], log=s["tmp"] / "abort.out")
    try:
        pids = wait_for(lambda: _pids(pid_file))
        assert len(pids) == 2
        server.send("tasks.stop", {"task": task_id})
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    task = get_task(server, task_id)
    assert task["status"] == "stopped"
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_sigterm_to_executor_forwards_marks_and_flushes(env_setup: dict[str, Any]) -> None:
    import signal

    s = env_setup
    server = s["server"]
    pid_file = s["tmp"] / "pids"
    task_id = create_task(
        server, script=repo_script(s), args={"sleep": "300", "pid-file": str(pid_file)}
    )
    proc = start_execute(task_id, s["conf"], log=s["tmp"] / "term.out")
    try:
        wait_for(lambda: _pids(pid_file))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGTERM
    task = get_task(server, task_id)
    assert task["status"] == "stopped"
    assert "terminated by signal SIGTERM" in task["status_reason"]
    lines = task_log_lines(server, task_id)
    assert f"got signal {int(signal.SIGTERM)}, saving checkpoint" in lines  # forwarded + flushed


def test_two_executors_same_venv_key_build_once(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    tasks = [create_task(server, name=f"twin-{i}", script=repo_script(s)) for i in range(2)]
    procs = [
        start_execute(t, s["conf"], "--disable-monitoring", log=s["tmp"] / f"twin{i}.out")
        for i, t in enumerate(tasks)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0]
    builds = hits = 0
    for t in tasks:
        assert get_task(server, t)["status"] == "completed"
        lines = task_log_lines(server, t)
        builds += sum("venv cache: building" in line for line in lines)
        hits += sum("venv cache: hit" in line for line in lines)
    assert (builds, hits) == (1, 1)
    entries = [p for p in (s["tmp"] / "venv-cache").iterdir() if p.is_dir()]
    assert len(entries) == 1


@pytest.mark.slow
def test_server_down_during_run_every_line_once(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    pid_file = s["tmp"] / "pids"
    n = 300
    task_id = create_task(
        server,
        script=repo_script(s),
        args={"lines": str(n), "sleep": "0.1", "pid-file": str(pid_file)},
    )
    proc = start_execute(task_id, s["conf"], log=s["tmp"] / "down.out")
    try:
        wait_for(lambda: _pids(pid_file))
        time.sleep(2)
        server.stop()
        time.sleep(20)
        server.start()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, (s["tmp"] / "down.out").read_text()[-3000:]
    assert get_task(server, task_id)["status"] == "completed"
    lines = [x for x in task_log_lines(server, task_id) if x.startswith("line ")]
    assert lines == [f"line {i}" for i in range(n)]


def test_task_stopped_meanwhile_is_not_run_unless_forced(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    script = {"entry_point": "m.py", "diff": "print('RAN-IT')\n", "requirements": {"pip": ""}}
    task_id = create_task(server, script=script)
    server.send("tasks.stop", {"task": task_id})  # queued -> stopped (aborted while pending)
    res = run_execute(task_id, s["conf"])
    assert res.returncode == 0
    assert "not running task" in res.stdout
    assert "RAN-IT" not in res.stdout
    assert get_task(server, task_id)["status"] == "stopped"
    forced = run_execute(task_id, s["conf"], "--force", "--disable-monitoring")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "RAN-IT" in forced.stdout
    assert get_task(server, task_id)["status"] == "completed"


def test_rank_other_than_zero_writes_no_status(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    script = {"entry_point": "m.py", "diff": "print('RANK-LINE')\n", "requirements": {"pip": ""}}
    task_id = create_task(server, script=script, enqueue=False)
    server.send("tasks.started", {"task": task_id, "force": True})
    env = executor_env(s["conf"])
    env["SLURM_PROCID"] = "1"
    res = subprocess.run(
        hpcagent_argv("execute", "--id", task_id, "--disable-monitoring"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    task = get_task(server, task_id)
    assert task["status"] == "in_progress"  # rank 1 never writes the status
    assert "[rank 1] RANK-LINE" in task_log_lines(server, task_id)


def test_execute_help_lists_options() -> None:
    res = subprocess.run(
        hpcagent_argv("execute", "--help"), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    for option in ("--id", "--force", "--clone", "--log-file", "--disable-monitoring"):
        assert option in res.stdout


def test_abort_during_setup_script_stops(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    marker = s["tmp"] / "setup-started"
    script = {"entry_point": "m.py", "diff": "print('NEVER')\n", "requirements": {"pip": ""}}
    task_id = create_task(server, script=script, setup_shell_script=f"touch {marker}\nsleep 300\n")
    proc = start_execute(task_id, s["conf"], log=s["tmp"] / "setup.out")
    try:
        wait_for(marker.exists)
        server.send("tasks.stop", {"task": task_id})
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert get_task(server, task_id)["status"] == "stopped"
    assert "NEVER" not in (s["tmp"] / "setup.out").read_text()


SDK_TASK = """\
import argparse
from clearml import Task

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.5)
task = Task.init()
a = p.parse_args()
print("sdk-lr", a.lr, "task", task.id)
task.get_logger().report_scalar("loss", "train", value=0.25, iteration=1)
task.flush(wait_for_uploads=True)
"""


def test_clearml_sdk_inside_task_reports_to_same_server(env_setup: dict[str, Any]) -> None:
    """The child env (CLEARML_TASK_ID, config file, keys) makes the SDK attach to this task."""
    pytest.importorskip("clearml")
    import clearml

    s = env_setup
    server = s["server"]
    # The SDK comes from hpcagent's own environment (no network for installing it).
    site = str(Path(clearml.__file__).resolve().parents[1])
    script = {"entry_point": "sdk_task.py", "diff": SDK_TASK, "requirements": {"pip": ""}}
    task_id = create_task(server, script=script, args={"lr": "0.01"})
    server.send(
        "tasks.edit",
        {
            "task": task_id,
            "force": True,
            "hyperparams": {
                "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.01", "type": "str"}},
                "Environment": {
                    "PYTHONPATH": {"section": "Environment", "name": "PYTHONPATH", "value": site}
                },
            },
        },
    )
    res = run_execute(task_id, s["conf"], "--disable-monitoring")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"sdk-lr 0.01 task {task_id}" in res.stdout
    assert get_task(server, task_id)["status"] == "completed"
    scalars = server.send("events.scalar_metrics_iter_histogram", {"task": task_id})
    assert scalars["loss"]["train"]["y"] == [0.25]


class _GitHttp:
    """A smart-HTTP git server (``git http-backend`` as CGI) that requires Basic auth."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        import base64 as b64
        import http.server
        import threading

        expected = "Basic " + b64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth_headers: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                got = self.headers.get("Authorization", "")
                outer.auth_headers.append(got)
                if got != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ["PATH"],
                    "GIT_PROJECT_ROOT": str(root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(length),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "REMOTE_USER": user,
                    "REMOTE_ADDR": "127.0.0.1",
                }
                out = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                if not payload and b"\n\n" in out:
                    head, _, payload = out.partition(b"\n\n")
                status = 200
                headers = []
                for line in head.decode().splitlines():
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_git_credentials_over_http_never_leak(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    secret = "pa55-SECRET-word"
    git = _GitHttp(s["bare"].parent, "alice", secret)
    try:
        url = f"{git.url}/{s['bare'].name}"
        good = write_conf(
            s["tmp"] / "creds.conf",
            server,
            s["tmp"],
            s["tmp"] / "wheels",
            git_user="alice",
            git_pass=secret,
        )
        task_id = create_task(server, script=repo_script(s, repository=url))
        res = run_execute(task_id, good, "--disable-monitoring")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert any(h.startswith("Basic ") for h in git.auth_headers)  # git really authenticated
        lines = task_log_lines(server, task_id)
        assert "lr=0.5 epochs=1 verbose=False tiny=tiny-ok mark=patched" in lines
        mirrors = list((s["tmp"] / "vcs-cache").glob("*.git"))
        assert mirrors
        for text in (res.stdout, res.stderr, "\n".join(lines), (mirrors[0] / "config").read_text()):
            assert secret not in text

        bad = write_conf(
            s["tmp"] / "bad.conf",
            server,
            s["tmp"] / "other",
            s["tmp"] / "wheels",
            git_user="alice",
            git_pass="wrong-" + secret,
        )
        task2 = create_task(server, script=repo_script(s, repository=url))
        res2 = run_execute(task2, bad, "--disable-monitoring")
        assert res2.returncode == 10
        task = get_task(server, task2)
        assert task["status"] == "failed"
        for text in (res2.stdout, res2.stderr, task["status_message"]):
            assert secret not in text
    finally:
        git.close()
