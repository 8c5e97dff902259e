"""End-to-end tests of ``hpcagent execute`` against the real embedded server.

Everything is local: a bare git repository made by the test, a wheelhouse with a hand-written
wheel (offline installs through ``agent.package_manager.extra_args``), the embedded server
subprocess (``embedded_server`` fixture) and the executor as a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import (
    create_task,
    executor_env,
    get_task,
    hpcagent_argv,
    make_repo,
    make_wheelhouse,
    repo_script,
    run_execute,
    start_execute,
    task_log_lines,
    wait_for,
    write_conf,
)

pytestmark = [pytest.mark.e2e]

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
    """A run launched for the task (its job recorded on it) does not start a task aborted
    while the job waited."""
    s = env_setup
    server = s["server"]
    script = {"entry_point": "m.py", "diff": "print('RAN-IT')\n", "requirements": {"pip": ""}}
    task_id = create_task(server, script=script)
    prop = {"section": "properties", "name": "slurm-job-id", "value": "4242"}
    server.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": [prop]})
    server.send("tasks.stop", {"task": task_id})  # queued -> stopped (aborted while pending)
    res = run_execute(task_id, s["conf"], env={"HPCAGENT_JOB_ID": "4242"})
    assert res.returncode == 0
    assert "not running task" in res.stdout
    assert "RAN-IT" not in res.stdout
    assert get_task(server, task_id)["status"] == "stopped"
    forced = run_execute(task_id, s["conf"], "--force", "--disable-monitoring")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "RAN-IT" in forced.stdout
    assert get_task(server, task_id)["status"] == "completed"


def test_execute_by_id_runs_created_stopped_failed_and_clone(env_setup: dict[str, Any]) -> None:
    """Asked for by hand, a task in created, stopped or failed runs as under
    ``clearml-agent execute --id`` (moved to in_progress, then its final status); ``--clone``
    runs a fresh copy and leaves the original as it was."""
    s = env_setup
    server = s["server"]
    script = {"entry_point": "m.py", "diff": "print('RAN-IT')\n", "requirements": {"pip": ""}}
    created = create_task(server, script=script, enqueue=False)
    stopped = create_task(server, script=script)
    server.send("tasks.stop", {"task": stopped})
    failed = create_task(server, script=script, enqueue=False)
    server.send("tasks.failed", {"task": failed, "force": True})
    for task_id, before in ((created, "created"), (stopped, "stopped"), (failed, "failed")):
        assert get_task(server, task_id)["status"] == before
        res = run_execute(task_id, s["conf"], "--disable-monitoring")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "RAN-IT" in res.stdout
        task = get_task(server, task_id)
        assert task["status"] == "completed", (before, task["status"])
        assert task["started"]
    original = get_task(server, failed)
    res = run_execute(failed, s["conf"], "--clone", "--disable-monitoring")
    assert res.returncode == 0, res.stdout + res.stderr
    clones = server.send("tasks.get_all", {"parent": [failed], "only_fields": ["id", "status"]})
    assert [c["status"] for c in clones["tasks"]] == ["completed"]
    assert get_task(server, failed)["status_changed"] == original["status_changed"]


NO_SDK_SCRIPT = """\
import argparse
import json

p = argparse.ArgumentParser()
p.add_argument("src")
p.add_argument("dst")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--no-cache", dest="cache", action="store_false")
p.add_argument("--sizes", type=int, nargs="+", default=[1])
p.add_argument("-v", dest="verbose", action="store_true")
print("SEEN " + json.dumps(vars(p.parse_args()), sort_keys=True))
"""


def test_cli_args_reach_a_script_without_the_sdk(env_setup: dict[str, Any]) -> None:
    """``hpcagent task create --args`` (option strings as typed, positionals by number, flags,
    a nargs list) on the command line of a script that does not use the SDK."""
    s = env_setup
    script = s["tmp"] / "nosdk.py"
    script.write_text(NO_SDK_SCRIPT)
    argv = ["task", "create", "--project", "proj", "--name", "no sdk", "--script", str(script)]
    for arg in ("2=out dir", "1=in.csv", "--batch-size=16", "no-cache=true", "sizes=[3, 4]"):
        argv += ["--args", arg]
    argv += ["--args", "-v=true", "--json"]
    made = subprocess.run(
        hpcagent_argv(*argv), env=executor_env(s["conf"]), capture_output=True, text=True
    )
    assert made.returncode == 0, made.stdout + made.stderr
    task_id = json.loads(made.stdout)["id"]
    res = run_execute(task_id, s["conf"], "--disable-monitoring")
    assert res.returncode == 0, res.stdout + res.stderr
    seen = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("SEEN "))[5:])
    assert seen == {
        "src": "in.csv",
        "dst": "out dir",
        "batch_size": 16,
        "cache": False,
        "sizes": [3, 4],
        "verbose": True,
    }
    assert get_task(s["server"], task_id)["status"] == "completed"


def test_rank_other_than_zero_writes_no_status(env_setup: dict[str, Any]) -> None:
    s = env_setup
    server = s["server"]
    script = {"entry_point": "m.py", "diff": "print('RANK-LINE')\n", "requirements": {"pip": ""}}
    task_id = create_task(server, script=script, enqueue=False)
    server.send("tasks.started", {"task": task_id, "force": True})
    env = executor_env(s["conf"])
    env.update(SLURM_JOB_ID="77", SLURM_PROCID="1")  # srun task 1 of job 77
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
