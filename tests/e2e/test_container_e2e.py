"""Containers end to end: the Singularity path through a STAND-IN, Docker mode, real Apptainer.

* The Singularity path runs through ``tests/fakes/apptainer-standin``, a TEST STAND-IN for
  ``apptainer`` over bubblewrap (Debian has no Apptainer), on a sandbox folder: a Debian
  bookworm root filesystem with python3 made by debootstrap (cached in
  /var/cache/hpcagent-test, or $HPCAGENT_TEST_ROOTFS).
* Docker mode runs with a local image imported from the same root filesystem
  (``hpcagent-test-base``); no registry is reachable on the test machines.
* ``-m apptainer`` runs the real binary where there is one.

Each run goes through the executor's own process runner (hpcagent.executor.process), as the
executor runs it: a venv built with the image's Python, the task's output streamed, secrets
kept out of every process's argv, and an abort that leaves no process behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import helpers as h
import psutil
import pytest
from filelock import FileLock

from hpcagent.config import ContainerSettings
from hpcagent.container.apptainer import ApptainerSession, resolve_runtime
from hpcagent.container.base import ContainerRequest, Session
from hpcagent.container.cache import ensure_image
from hpcagent.container.docker import DockerSession, container_name, ensure_docker_image
from hpcagent.executor.process import ChildProcess, run_streamed

# The first test may make the root filesystem (debootstrap, about a minute, more on a slow mirror).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fakes" / "apptainer-standin"
CACHE = Path(os.environ.get("HPCAGENT_TEST_CACHE", "/var/cache/hpcagent-test"))
ROOTFS = Path(os.environ.get("HPCAGENT_TEST_ROOTFS", str(CACHE / "bookworm-py")))
DOCKER_IMAGE = "hpcagent-test-base"
SECRET = "topsecret-" + uuid.uuid4().hex
SECRET_HASH = hashlib.sha256(SECRET.encode()).hexdigest()[:16]

TASK = r"""
import hashlib, os, platform, sys, time
from pathlib import Path
print("python", platform.python_version(), sys.prefix, flush=True)
print("task", os.environ.get("CLEARML_TASK_ID"), "slurm", os.environ.get("SLURM_JOB_ID"))
secret = os.environ.get("CLEARML_API_SECRET_KEY", "").encode()
print("secret", hashlib.sha256(secret).hexdigest()[:16] if secret else "missing")
print("modulepath", os.environ.get("MODULEPATH", "unset"))
print("data", Path("/data/input.txt").read_text().strip())
try:
    Path("/data/x").write_text("x")
    print("data-writable")
except OSError:
    print("data-readonly")
Path("result.txt").write_text("done by " + platform.python_version())
print("ready", flush=True)
for _ in range(600):  # wait for the test to have looked at every argv
    if Path("go").exists():
        break
    time.sleep(0.1)
print("bye")
"""


def _have_root() -> bool:
    return os.geteuid() == 0


def _apt_install(*packages: str) -> None:
    """Install Debian packages the tests need (root only); refresh the lists once if needed."""
    if not _have_root() or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        res = subprocess.run(
            ["apt-get", "install", "-y", "-q", *packages],
            check=False,
            capture_output=True,
            timeout=900,
            env=env,
        )
        if res.returncode == 0 or attempt:
            return
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True, timeout=600)


def make_rootfs(target: Path, include: str, probe: str = "usr/bin/python3") -> Path:
    """A bookworm root filesystem with the ``include`` packages (debootstrap, ~1 min, cached
    at ``target``; ``probe`` tells that it is complete). Fails the test where it cannot."""
    if (target / probe).exists():
        return target
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    if not _have_root() or not shutil.which("debootstrap"):
        pytest.fail("needs root and debootstrap to make the test root filesystem")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if not (target / probe).exists():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            res = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={include}",
                    "bookworm",
                    str(tmp),
                    "http://deb.debian.org/debian",
                ],
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            if res.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                pytest.fail(f"debootstrap failed (no Debian mirror?): {res.stderr[-500:]}")
            os.replace(tmp, target)
    return target


def import_image(name: str, root: Path) -> str:
    """``name`` in the local Docker engine, imported from ``root`` by
    docker/slurm-cluster/base-image.sh (no registry), the engine from docker/engine.sh (installs
    docker.io and starts dockerd when missing, as ``make test`` does)."""
    engine = subprocess.run(
        ["bash", str(REPO / "docker" / "engine.sh")], capture_output=True, text=True, timeout=900
    )
    if engine.returncode != 0:
        pytest.fail(f"no Docker engine (docker/engine.sh): {engine.stderr[-800:]}")
    env = {**os.environ, "BASE_IMAGE": name, "BASE_ROOTFS": str(root), "BASE_PULL": "0"}
    base = subprocess.run(
        ["bash", str(REPO / "docker" / "slurm-cluster" / "base-image.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if base.returncode != 0:
        pytest.fail(f"cannot make {name}: {base.stderr[-800:]}")
    return name


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """A bookworm root filesystem with python3 and venv."""
    return make_rootfs(ROOTFS, "python3,python3-venv")


@pytest.fixture(scope="session")
def bwrap() -> str:
    if not shutil.which("bwrap"):
        _apt_install("bubblewrap")
    found = shutil.which("bwrap")
    if not found:
        pytest.fail("bubblewrap (bwrap) is missing and cannot be installed: no stand-in runtime")
    probe = subprocess.run(
        ["bwrap", "--bind", "/", "/", "--", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.fail(f"bwrap cannot create namespaces here: {probe.stderr.decode()[-300:]}")
    return found


@pytest.fixture(scope="session")
def docker_image(rootfs: Path) -> str:
    """The local ``hpcagent-test-base`` image, imported from the test root filesystem."""
    return import_image(DOCKER_IMAGE, rootfs)


@pytest.fixture
def work(tmp_path: Path) -> dict[str, Path]:
    out = {n: tmp_path / n for n in ("workspace", "venvs", "data")}
    for p in out.values():
        p.mkdir()
    (out["data"] / "input.txt").write_text("hello from the data bind\n")
    (out["workspace"] / "task.py").write_text(TASK)
    return out


HOST_ENV = {
    **os.environ,
    "SLURM_JOB_ID": "777",
    "SLURM_JOB_NODELIST": "n[1-2,4]",
    "MODULEPATH": "/site/modules",
}
TASK_ENV = {"CLEARML_TASK_ID": "t-e2e", "CLEARML_API_SECRET_KEY": SECRET}


def _settings(work: dict[str, Path]) -> ContainerSettings:
    return ContainerSettings(
        binary=str(STANDIN),
        cache_dir=work["venvs"].parent / "images",
        binds=(f"{work['data']}:/data:ro",),
    )


def _run_task(session: Session, work: dict[str, Path]) -> list[str]:
    """Build a venv with the image's Python, then run the task in it; check every argv."""
    venv = work["venvs"] / "image-venv"
    setup = session.wrap(
        ["python3", "-m", "venv", "--without-pip", str(venv)], cwd=work["workspace"], main=False
    )
    code, tail = run_streamed(setup.argv, cwd=setup.cwd, env=setup.env, on_lines=lambda _: None)
    assert code == 0, tail
    prep = session.wrap(
        [str(venv / "bin" / "python"), "task.py"], cwd=work["workspace"], task_env=TASK_ENV
    )
    lines: list[str] = []
    child = ChildProcess(prep.argv, cwd=prep.cwd, env=prep.env, on_lines=lines.extend)
    try:
        deadline = time.monotonic() + 120
        while "ready" not in lines and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "ready" in lines, lines
        leaked = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if SECRET in " ".join(p.info["cmdline"] or [])
        ]
        assert leaked == [], "the secret appeared in a process's argv"
        (work["workspace"] / "go").write_text("")
        assert child.finish() == 0, lines
    finally:
        child.terminate(2.0)
    return lines


def _check_task_output(lines: list[str], work: dict[str, Path], image_python: str) -> None:
    assert lines[0].startswith(f"python {image_python} {work['venvs'] / 'image-venv'}")
    assert "task t-e2e slurm 777" in lines
    assert f"secret {SECRET_HASH}" in lines
    assert "modulepath unset" in lines  # --cleanenv: site noise stays outside
    assert "data hello from the data bind" in lines
    assert "data-readonly" in lines
    assert (work["workspace"] / "result.txt").read_text() == f"done by {image_python}"


def _marker_procs(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _abort_and_check(session: Session, marker: str, cwd: Path) -> None:
    """Start a task that forks sleepers inside the container, abort it the way the executor
    does (the session's abort, then SIGTERM/SIGKILL to the process group), and look for
    leftovers."""
    prep = session.wrap(_sleepers(marker), cwd=cwd)
    child = ChildProcess(prep.argv, cwd=prep.cwd, env=prep.env, on_lines=lambda _: None)
    deadline = time.monotonic() + 60
    while len(_marker_procs(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_marker_procs(marker)) >= 3, "the task's processes did not start"
    session.abort(prep)
    child.terminate(grace_s=3.0)
    deadline = time.monotonic() + 20
    while _marker_procs(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _marker_procs(marker) == [], "processes outlived the abort"


def _sleepers(marker: str) -> list[str]:
    # Three processes inside: a shell, two sleepers (one in the background), all with the marker.
    return ["sh", "-c", f"sleep {marker} & sleep {marker}; wait", marker]


# -- the Singularity path, through the stand-in --------------------------------------------


def _standin_session(work: dict[str, Path], rootfs: Path) -> ApptainerSession:
    session = ApptainerSession(
        runtime=resolve_runtime(str(STANDIN)),
        image_path=str(rootfs),
        request=ContainerRequest(str(rootfs), ("--writable-tmpfs",)),
        settings=_settings(work),
        host_env=HOST_ENV,
    )
    session.add_bind(work["workspace"])
    session.add_bind(work["venvs"])
    return session


def test_standin_task_runs_in_sandbox(work: dict[str, Path], rootfs: Path, bwrap: str) -> None:
    """Apptainer STAND-IN (bubblewrap): venv from the image's Python, binds, clean env, secret."""
    session = _standin_session(work, rootfs)
    image_python = session.python_version(work["workspace"])
    lines = _run_task(session, work)
    _check_task_output(lines, work, image_python)


def test_standin_abort_leaves_no_process(work: dict[str, Path], rootfs: Path, bwrap: str) -> None:
    session = _standin_session(work, rootfs)
    marker = f"{300 + uuid.uuid4().int % 1000}.{os.getpid()}"
    _abort_and_check(session, marker, work["workspace"])


def test_standin_pulled_image_runs(
    work: dict[str, Path], rootfs: Path, bwrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker:// source -> pulled once to a SIF in the cache -> run (stand-in registry/SIF)."""
    registry = work["venvs"].parent / "registry"
    registry.mkdir()
    (registry / "lab_py_3.11").symlink_to(rootfs)
    monkeypatch.setenv("APPTAINER_STANDIN_REGISTRY", str(registry))
    monkeypatch.setenv("APPTAINER_STANDIN_UNPACK_DIR", str(work["venvs"].parent / "unpack"))
    settings = _settings(work)
    sif = ensure_image("docker://lab/py:3.11", settings)
    assert sif.endswith(".sif")
    assert Path(sif).parent == settings.cache_dir
    session = ApptainerSession(
        runtime=resolve_runtime(str(STANDIN)),
        image_path=sif,
        request=ContainerRequest("docker://lab/py:3.11"),
        settings=settings,
        host_env=HOST_ENV,
    )
    session.add_bind(work["workspace"])
    assert session.python_version(work["workspace"]) == _image_python(rootfs)


def _image_python(rootfs: Path) -> str:
    res = subprocess.run(
        [
            str(STANDIN),
            "exec",
            str(rootfs),
            "python3",
            "-c",
            "import platform; print(platform.python_version())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


# -- Docker mode ---------------------------------------------------------------------------


def _docker_session(work: dict[str, Path], image: str, task_id: str) -> DockerSession:
    session = DockerSession(
        docker=shutil.which("docker") or "docker",
        image=image,
        request=ContainerRequest(image, ()),
        settings=_settings(work),
        task_id=task_id,
        host_env=HOST_ENV,
    )
    session.add_bind(work["workspace"])
    session.add_bind(work["venvs"])
    return session


@pytest.mark.docker
def test_docker_task_runs(work: dict[str, Path], docker_image: str) -> None:
    session = _docker_session(work, docker_image, "e2e-" + uuid.uuid4().hex[:8])
    assert session.cache_key().startswith("sha256:")
    image_python = session.python_version(work["workspace"])
    lines = _run_task(session, work)
    _check_task_output(lines, work, image_python)


@pytest.mark.docker
def test_docker_abort_leaves_no_container(work: dict[str, Path], docker_image: str) -> None:
    task_id = "abort-" + uuid.uuid4().hex[:8]
    session = _docker_session(work, docker_image, task_id)
    ensure_docker_image(session.docker, docker_image, pull_timeout_s=600)
    marker = f"{300 + uuid.uuid4().int % 1000}.{os.getpid()}"
    _abort_and_check(session, marker, work["workspace"])
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={container_name(task_id)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.strip() == ""


# -- real Apptainer/Singularity ------------------------------------------------------------


@pytest.mark.apptainer
def test_real_apptainer_runs_task(work: dict[str, Path], rootfs: Path) -> None:
    real = shutil.which("apptainer") or shutil.which("singularity")
    if real is None:
        pytest.skip("no apptainer/singularity binary on this machine (Debian has no package)")
    session = _standin_session(work, rootfs)
    session.runtime = resolve_runtime(real)
    session.request = ContainerRequest(str(rootfs), ())
    image_python = session.python_version(work["workspace"])
    _check_task_output(_run_task(session, work), work, image_python)


# -- mode inside: hpcagent itself runs in the image (the image must provide it) -------------


def test_mode_inside_executor_runs_in_the_image(
    tmp_path: Path, embedded_server: Any, rootfs: Path, bwrap: str
) -> None:
    """`singularity exec IMAGE hpcagent execute --id T` with hpcagent available inside (here:
    the repository and its venv bound in, as a site would install it into the image): the
    executor sees APPTAINER_CONTAINER, runs the task directly (no nested container) and
    reports logs and the final status from inside (shared network and PIDs)."""
    server = embedded_server
    conf = h.write_server_conf(
        tmp_path / "clearml.conf",
        server,
        agent={
            "venvs_dir": str(tmp_path / "builds"),
            "venvs_cache": {"path": str(tmp_path / "venvs"), "free_space_threshold_gb": 0},
        },
    )
    script = 'import os\nprint("inside container", os.environ.get("APPTAINER_CONTAINER"))\n'
    task_id = str(
        server.send(
            "tasks.create",
            {
                "name": "inside",
                "type": "training",
                "script": {"entry_point": "task.py", "diff": script, "binary": "python3"},
            },
        )["id"]
    )
    env = h.clean_env()
    env.update(CLEARML_CONFIG_FILE=str(conf), PYTHONPATH=str(REPO))
    binds = [str(REPO)]
    if not Path(sys.prefix).is_relative_to(REPO):  # hpcagent's venv lives elsewhere
        binds.append(sys.prefix)
    argv = [str(STANDIN), "exec", "--bind", ",".join(binds), str(rootfs)]
    argv += [sys.executable, "-m", "hpcagent", "execute", "--id", task_id, "--force"]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    task = server.send("tasks.get_by_id", {"task": task_id})["task"]
    assert task["status"] == "completed", (res.stdout + res.stderr)[-3000:]
    data = server.send("events.get_task_log", {"task": task_id, "batch_size": 1000})
    lines = [x for e in data["events"] for x in str(e.get("msg", "")).split("\n")]
    assert f"inside container {rootfs}" in lines
