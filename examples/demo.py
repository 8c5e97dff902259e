"""`make demo`: run one example task end to end on the embedded defaults.

It starts an embedded server on a free port, puts examples/train/ in a local git repository,
creates a task from it (requirements and args), enqueues it, runs `hpcagent-slurm` on that queue
(real Slurm where `sbatch` exists and the `debug` partition answers, else the local scheduler;
HPCAGENT_DEMO_SCHEDULER=local|slurm chooses),
follows the task to its end, prints its log tail and what to try next, and stops everything it
started. Everything lives in ./demo-state/ (removed and made anew on each run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "demo-state"
QUEUE = "demo"
FINAL = {"completed", "failed", "stopped", "closed", "published"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hpcagent(*args: str, env: dict[str, str], check: bool = True) -> str:
    """Run the hpcagent CLI with this interpreter; return stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpcagent", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"hpcagent {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def wait_for_server(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    host, port = url.split("//")[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early; see {STATE / 'server.log'}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not start in time")


def make_repo() -> Path:
    repo = STATE / "repo"
    shutil.copytree(ROOT / "examples" / "train", repo)
    git = ["git", "-C", str(repo), "-c", "user.name=demo", "-c", "user.email=demo@localhost"]
    subprocess.run([*git[:3], "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "toy training"], check=True)
    return repo


def slurm_usable() -> bool:
    if not shutil.which("sbatch"):
        return False
    probe = subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%a"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0 and "up" in probe.stdout


def main() -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    access, secret = "DEMOACCESSKEY0000000", os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env.update(
        {
            "HPCAGENT_SERVER_ACCESS_KEY": access,
            "HPCAGENT_SERVER_SECRET_KEY": secret,
            "CLEARML_API_HOST": url,
            "CLEARML_API_ACCESS_KEY": access,
            "CLEARML_API_SECRET_KEY": secret,
            "CLEARML_AGENT__SLURM__STATE_DIR": str(STATE / "submitter"),
            "CLEARML_AGENT__AGENT__VENVS_CACHE__PATH": str(STATE / "venvs-cache"),
            "CLEARML_AGENT__AGENT__VCS_CACHE__PATH": str(STATE / "vcs-cache"),
            "CLEARML_AGENT__AGENT__VENVS_DIR": str(STATE / "venvs"),
            "HOME": env.get("HOME", str(STATE)),
        }
    )
    started: list[subprocess.Popen[bytes]] = []
    try:
        with (STATE / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hpcagent",
                    "server",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(STATE / "server"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(server)
        wait_for_server(url, server)
        print(f"[demo] embedded server on {url} (data in {STATE / 'server'})")
        repo = make_repo()
        hpcagent("queue", "create", QUEUE, env=env)
        created = json.loads(
            hpcagent(
                "task", "create", "--project", "demo", "--name", "toy training",
                "--repo", f"file://{repo}", "--branch", "main", "--entry-point", "train.py",
                "--requirements", str(repo / "requirements.txt"),
                "--args", "epochs=3", "--args", "lr=0.2", "--json",
                env=env,
            )
        )  # fmt: skip
        task_id = str(created["id"])
        hpcagent("task", "enqueue", task_id, "--queue", QUEUE, env=env)
        print(f"[demo] task {task_id} enqueued on queue {QUEUE!r}")
        scheduler = os.environ.get("HPCAGENT_DEMO_SCHEDULER") or (
            "slurm" if slurm_usable() else "local"
        )
        template = ROOT / "templates" / "slurm.example.template"
        print(f"[demo] starting hpcagent-slurm with the {scheduler} scheduler and {template.name}")
        with (STATE / "submitter.log").open("wb") as log:
            submitter = subprocess.Popen(
                [
                    sys.executable, "-c", "from hpcagent.cli import slurm_main; slurm_main()",
                    "--template-files", str(template), "--queue", QUEUE,
                    "--scheduler", scheduler, "--poll-interval", "1", "--foreground",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=STATE,
            )  # fmt: skip
        started.append(submitter)
        status = follow(task_id, env)
        print(f"[demo] task {task_id} ended: {status}")
        print("[demo] last lines of its log (from the server):")
        log_text = hpcagent("task", "log", task_id, env=env, check=False)
        for line in log_text.strip().splitlines()[-12:]:
            print(f"    {line}")
        print(
            "\n[demo] next: `source .venv/bin/activate`, then `hpcagent --help`, "
            "`hpcagent-slurm --help`; see README.md's quickstart and docs/."
        )
        return 0 if status == "completed" else 1
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def follow(task_id: str, env: dict[str, str], timeout: float = 600) -> str:
    """Print each new status line of the task until it ends; return the final status."""
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info: dict[str, Any] = json.loads(hpcagent("task", "show", task_id, "--json", env=env))
        line = f"{info.get('status')}: {info.get('status_message') or ''}".strip()
        if line != last:
            print(f"[demo]   {line}")
            last = line
        if info.get("status") in FINAL:
            return str(info["status"])
        time.sleep(1)
    return "timeout"


if __name__ == "__main__":
    sys.exit(main())
