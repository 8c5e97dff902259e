"""SSH inside containers (issue 13 item 6): a private repository clones inside the container.

A real ``sshd`` on 127.0.0.1 serves a bare repository; the only key that opens it lives in an
``ssh-agent`` (never in a file the container sees), and the host key is known only through
``agent.container.ssh_dir``. The task, run by ``hpcagent execute --docker`` (Docker, as root:
the folder appears at ``/root/.ssh``) and ``--container`` (the apptainer STAND-IN, same path),
runs ``git clone ssh://...`` inside the image: it works only when the folder is mapped and the
agent socket forwarded. The image is a debootstrap root filesystem with git and ssh.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from test_container_e2e import CACHE, _apt_install, bwrap, import_image, make_rootfs  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fakes" / "apptainer-standin"
SECRET_TEXT = "private-content-" + os.urandom(4).hex()

TASK_PY = """\
import os, subprocess, sys
url = os.environ["PRIVATE_URL"]
known = os.environ.get("KNOWN_HOSTS_FILE", "")
env = dict(os.environ)
opts = "-o BatchMode=yes -o StrictHostKeyChecking=yes"
if known:
    opts += " -o UserKnownHostsFile=" + known
env["GIT_SSH_COMMAND"] = "ssh " + opts
print("agent socket inside", os.environ.get("SSH_AUTH_SOCK", "none"), flush=True)
res = subprocess.run(["git", "clone", "-q", url, "cloned"], env=env, capture_output=True, text=True)
print("clone exit", res.returncode, res.stderr.strip()[-500:], flush=True)
if res.returncode == 0:
    print("cloned", open("cloned/secret.txt").read().strip(), flush=True)
sys.exit(res.returncode)
"""


@pytest.fixture(scope="session")
def git_rootfs() -> Path:
    return make_rootfs(
        CACHE / "bookworm-py-git",
        "python3,python3-venv,git,openssh-client,ca-certificates",
        probe="usr/bin/ssh",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True, **kw)


@pytest.fixture
def private_repo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """sshd on 127.0.0.1 with a bare repository, an ssh-agent holding the one key that opens
    it, and an ssh folder with only ``known_hosts``."""
    if not Path("/usr/sbin/sshd").exists():
        _apt_install("openssh-server")
    if not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0:
        pytest.fail("needs root and openssh-server for the private repository")
    Path("/run/sshd").mkdir(exist_ok=True)
    d = tmp_path / "ssh-world"
    d.mkdir()
    work = d / "work"
    _run(["git", "init", "-q", "-b", "main", str(work)])
    (work / "secret.txt").write_text(SECRET_TEXT + "\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    _run(["git", *ident, "-C", str(work), "add", "."])
    _run(["git", *ident, "-C", str(work), "commit", "-q", "-m", "private"])
    bare = d / "private.git"
    _run(["git", "clone", "-q", "--bare", str(work), str(bare)])
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")])
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "user_key")])
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
    )
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    sock = d / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        _run(["ssh-add", "-q", str(d / "user_key")], env={**os.environ, "SSH_AUTH_SOCK": str(sock)})
        (d / "user_key").unlink()  # from now on the key exists only in the agent
        dotssh = d / "dotssh"
        dotssh.mkdir(mode=0o700)
        host_pub = (d / "host_key.pub").read_text().split()
        (dotssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        yield {
            "url": f"ssh://root@127.0.0.1:{port}{bare}",
            "sock": sock,
            "dotssh": dotssh,
        }
    finally:
        for proc in (agent, sshd):
            proc.terminate()
            proc.wait(timeout=30)


def _conf(tmp_path: Path, server: Any, dotssh: Path) -> Path:
    conf = {
        "api": h.api_section(server),
        "agent": {
            "venvs_dir": str(tmp_path / "builds"),
            "venvs_cache": {"path": str(tmp_path / "venv-cache"), "free_space_threshold_gb": 0},
            "container": {
                "binary": str(STANDIN),
                "cache_dir": str(tmp_path / "images"),
                "ssh_dir": str(dotssh),
            },
        },
    }
    path = tmp_path / "clearml.conf"
    path.write_text(json.dumps(conf))
    return path


def _task(server: Any, env: dict[str, str]) -> str:
    body: dict[str, Any] = {
        "name": "private clone",
        "type": "training",
        "script": {"entry_point": "task.py", "diff": TASK_PY, "binary": "python3"},
        "hyperparams": {
            "Environment": {
                k: {"section": "Environment", "name": k, "value": v} for k, v in env.items()
            }
        },
    }
    task_id = str(server.send("tasks.create", body)["id"])
    queues = server.send("queues.get_all", {"name": "^ssh-q$"}).get("queues") or []
    qid = queues[0]["id"] if queues else server.send("queues.create", {"name": "ssh-q"})["id"]
    server.send("tasks.enqueue", {"task": task_id, "queue": qid})
    return task_id


def _execute(conf: Path, sock: Path | None, task_id: str, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_", "SSH_"))}
    env.update({"CLEARML_CONFIG_FILE": str(conf), "PYTHONPATH": str(REPO)})
    if sock is not None:
        env["SSH_AUTH_SOCK"] = str(sock)
    res = subprocess.run(
        [sys.executable, "-m", "hpcagent", "execute", "--id", task_id, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return res.stdout + res.stderr


def _outcome(server: Any, task_id: str) -> tuple[str, list[str]]:
    status = str(server.send("tasks.get_by_id", {"task": task_id})["task"]["status"])
    data = server.send("events.get_task_log", {"task": task_id, "batch_size": 10000})
    lines = [line for e in data["events"] for line in str(e.get("msg", "")).split("\n")]
    return status, lines


@pytest.mark.docker
def test_private_clone_inside_docker(
    tmp_path: Path, embedded_server: Any, private_repo: dict[str, Any], git_rootfs: Path
) -> None:
    image = import_image("hpcagent-test-git", git_rootfs)
    server = embedded_server
    conf = _conf(tmp_path, server, private_repo["dotssh"])
    # As root in Docker the folder is /root/.ssh inside: ssh's default known_hosts is used.
    task_id = _task(server, {"PRIVATE_URL": private_repo["url"]})
    out = _execute(conf, private_repo["sock"], task_id, "--docker", image)
    status, lines = _outcome(server, task_id)
    assert status == "completed", out[-3000:]
    assert f"cloned {SECRET_TEXT}" in lines
    assert f"agent socket inside {private_repo['sock']}" in lines
    # without the agent socket the same clone is refused: the key lives only in the agent
    task_id = _task(server, {"PRIVATE_URL": private_repo["url"]})
    _execute(conf, None, task_id, "--docker", image)
    status, lines = _outcome(server, task_id)
    assert status == "failed"
    assert not any(line.startswith("cloned ") for line in lines)


def test_private_clone_inside_apptainer_standin(
    tmp_path: Path,
    embedded_server: Any,
    private_repo: dict[str, Any],
    git_rootfs: Path,
    bwrap: str,  # noqa: F811
) -> None:
    server = embedded_server
    conf = _conf(tmp_path, server, private_repo["dotssh"])
    # Apptainer keeps the user and HOME: the folder is bound at its own path.
    known = str(private_repo["dotssh"] / "known_hosts")
    task_id = _task(server, {"PRIVATE_URL": private_repo["url"], "KNOWN_HOSTS_FILE": known})
    out = _execute(conf, private_repo["sock"], task_id, "--container", str(git_rootfs))
    status, lines = _outcome(server, task_id)
    assert status == "completed", out[-3000:]
    assert f"cloned {SECRET_TEXT}" in lines
