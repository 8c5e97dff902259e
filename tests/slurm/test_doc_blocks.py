"""The shell blocks the README and docs/ mark ``<!-- runnable … -->`` (the line right before a
```` ```bash ```` fence) run as written, on the real one-host Slurm:

* with this checkout's hpcagent, against the test server;
* the README's (the Quickstart) again from a wheel built from this checkout and installed with
  its dependencies in a new virtual environment outside the checkout, against a server started
  from that wheel: what a user who ran ``pip install hpcagent`` gets.

Each block runs with ``bash -euo pipefail`` in a work folder holding a copy of ``examples/``
(the Quickstart's ``--script examples/train/train.py``), with a private ``HOME`` whose
``~/clearml.conf`` is the server's (what step 1 of the Quickstart, ``hpcagent init``, writes).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helpers as h
import pytest
import requests

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"^<!-- runnable[^\n]*-->\n```bash\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[tuple[str, str]]:
    """``(file:line, text)`` of every marked block, in document order."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in MARKED.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1)))
    return found


def test_the_quickstart_is_marked() -> None:
    names = [where for where, _ in runnable_blocks()]
    assert any(n.startswith("README.md:") for n in names), names


def _work(name: str) -> tuple[Path, dict[str, str]]:
    work = h.slurm_workdir(name)
    shutil.copytree(ROOT / "examples", work / "examples")
    home = work / "home"
    home.mkdir()
    env = h.clean_env()
    env["HOME"] = str(home)
    return work, env


def _run_block(where: str, block: str, *, cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert res.returncode == 0, f"{where} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _check_quickstart_ran(out: str) -> None:
    assert "training with epochs=3" in out
    assert "done: final loss" in out
    assert "stopped hpcagent-slurm" in out


@pytest.mark.parametrize(
    ("where", "block"), runnable_blocks(), ids=[w for w, _ in runnable_blocks()]
)
def test_block_runs(where: str, block: str, embedded_server: Any) -> None:
    h.require_slurm()
    work, env = _work("docblock")
    h.write_server_conf(Path(env["HOME"]) / "clearml.conf", embedded_server)  # as init writes
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    out = _run_block(where, block, cwd=work, env=env)
    if where.startswith("README.md:"):
        _check_quickstart_ran(out)


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    assert Path(found).exists(), "uv is installed with hpcagent (pyproject dependencies)"
    return found


def test_quickstart_from_a_wheel_outside_the_checkout(tmp_path: Path) -> None:
    h.require_slurm()
    work, env = _work("wheel")
    uv = _uv()
    dist = work / "dist"
    build = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("hpcagent-*.whl"))
    venv = work / "venv"
    for argv in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)],
    ):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stderr
    bin_dir = venv / "bin"
    assert (bin_dir / "uv").exists(), "uv comes with the wheel's dependencies"
    # the installed package is the wheel's, not this checkout
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import hpcagent; print(hpcagent.__file__)"],
        capture_output=True, text=True, cwd=work, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), where

    port = _free_port()
    keys = {
        "HPCAGENT_SERVER_ACCESS_KEY": "WHEELACCESSKEY012345",
        "HPCAGENT_SERVER_SECRET_KEY": "w" * 40,
    }
    server_argv = [str(bin_dir / "hpcagent"), "server", "--port", str(port),
                   "--data-dir", str(work / "server")]  # fmt: skip
    server = h.start_logged(server_argv, work / "server.log", cwd=work, env={**env, **keys})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        init = subprocess.run(
            [str(bin_dir / "hpcagent"), "init", "--api-server", url,
             "--access-key", keys["HPCAGENT_SERVER_ACCESS_KEY"],
             "--secret-key", keys["HPCAGENT_SERVER_SECRET_KEY"], "--no-input"],
            capture_output=True, text=True, cwd=work, timeout=120, check=False,
            env=env,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        assert (Path(env["HOME"]) / "clearml.conf").exists()  # where the blocks find it
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        readme = [(w, b) for w, b in runnable_blocks() if w.startswith("README.md:")]
        out = "".join(_run_block(w, b, cwd=work, env=env) for w, b in readme)
        _check_quickstart_ran(out)
    finally:
        server.terminate()
        server.wait(timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/debug.ping", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"server at {url} did not start")
