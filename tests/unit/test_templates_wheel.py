"""The templates ship inside the wheel: a wheel installed in a fresh venv outside the
checkout lists them, prints them byte for byte and resolves built-in names to its files."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hpcagent.templating import BUILTIN

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_wheel_carries_the_templates(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        tmp_path,
    )
    wheel = next(dist.glob("hpcagent-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    # the dependencies come from this venv's site-packages (a plain path: no editable hook)
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path)
    where = _run([str(py), "-c", "import hpcagent; print(hpcagent.__file__)"], tmp_path)
    assert where.startswith(str(site)), where
    listing = _run([str(venv / "bin" / "hpcagent"), "templates", "list"], tmp_path)
    for name, file in BUILTIN.items():
        assert f"{name} " in listing
        assert file in listing
        shown = _run([str(venv / "bin" / "hpcagent"), "templates", "show", name], tmp_path)
        assert shown == (ROOT / "templates" / file).read_text(encoding="utf-8")
        code = (
            f"from hpcagent.templating import resolve_template; print(resolve_template({name!r}))"
        )
        path = _run([str(py), "-c", code], tmp_path).strip()
        assert path.startswith(str(site))
        assert path.endswith(file)
