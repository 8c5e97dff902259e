"""Requirements as the SDK records them and as projects declare them
(executor/requirements.py): the ``# Python`` header, ``@ file://`` and VCS lines, the order of
the sources, Poetry locks (1 and 2 formats) and PEP 621 dependencies."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcagent.executor.requirements import choose, poetry_lock_lines, recorded_python
from hpcagent.executor.venv import resolve_python

RECORDED = """\
# Python 3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]

clearml == 2.1.12
mylib @ file:///home/someone/dist/mylib-1.0-py3-none-any.whl
tool @ git+https://example.org/tool.git@0123abcd
"""

LOCK_V2 = """\
[[package]]
name = "six"
version = "1.17.0"
optional = false
python-versions = ">=2.7"
groups = ["main"]

[[package]]
name = "pytest"
version = "8.0.0"
optional = false
groups = ["dev"]

[[package]]
name = "colorama"
version = "0.4.6"
optional = false
groups = ["main", "dev"]
markers = {main = "sys_platform == \\"win32\\""}

[[package]]
name = "extra-only"
version = "1.0"
optional = true
groups = ["main"]

[[package]]
name = "vendored"
version = "0.1"
optional = false
groups = ["main"]

[package.source]
type = "directory"
url = "libs/vendored"

[[package]]
name = "fromgit"
version = "2.0"
optional = false
groups = ["main"]

[package.source]
type = "git"
url = "https://example.org/fromgit.git"
reference = "main"
resolved_reference = "abc123"
"""

LOCK_V1 = """\
[[package]]
name = "six"
version = "1.16.0"
category = "main"
optional = false

[[package]]
name = "black"
version = "24.1.0"
category = "dev"
optional = false
"""


def _notes() -> list[str]:
    return []


def test_recorded_header_file_and_vcs_lines(tmp_path: Path) -> None:
    notes = _notes()
    got = choose(RECORDED, [], manager="uv", log=notes.append)
    assert got.python == "3.11"
    assert got.lines == (
        "clearml == 2.1.12",
        "mylib",  # the wheel is on the user's machine only: the agent's rule
        "tool @ git+https://example.org/tool.git@0123abcd",
    )
    assert any("mylib" in n for n in notes)
    wheel = tmp_path / "w.whl"
    wheel.write_text("")
    here = choose(f"w @ file://{wheel}\n", [], manager="uv", log=notes.append)
    assert here.lines == (f"w @ file://{wheel}",)


def test_poetry_lock_main_group_pins_markers_and_sources(tmp_path: Path) -> None:
    (tmp_path / "poetry.lock").write_text(LOCK_V2)
    lines = poetry_lock_lines(tmp_path / "poetry.lock")
    assert lines == [
        "six==1.17.0",
        'colorama==0.4.6 ; sys_platform == "win32"',
        f"vendored @ {(tmp_path / 'libs' / 'vendored').as_uri()}",
        "fromgit @ git+https://example.org/fromgit.git@abc123",
    ]
    (tmp_path / "poetry.lock").write_text(LOCK_V1)
    assert poetry_lock_lines(tmp_path / "poetry.lock") == ["six==1.16.0"]


def test_source_order(tmp_path: Path) -> None:
    root, work = tmp_path, tmp_path / "sub"
    work.mkdir()
    folders = [work, root]
    log = _notes().append
    (root / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = ["numpy>=2"]\n')
    assert choose(None, folders, manager="uv", log=log).lines == ("numpy>=2",)
    (root / "requirements.txt").write_text("# c\nrequests==2\n")
    assert choose(None, folders, manager="uv", log=log).lines == ("requests==2",)
    (root / "poetry.lock").write_text(LOCK_V1)
    assert choose("", folders, manager="uv", log=log).lines == ("six==1.16.0",)
    # what the task recorded wins, except under the poetry package manager (the agent's rule)
    assert choose(RECORDED, folders, manager="uv", log=log).lines[0] == "clearml == 2.1.12"
    poetry = choose(RECORDED, folders, manager="poetry", log=log)
    assert (poetry.lines, poetry.python) == (("six==1.16.0",), "3.11")
    assert choose(None, [], manager="uv", log=log).source == "none"


@pytest.mark.parametrize(
    ("text", "expected"), [(RECORDED, "3.11"), ("# Python 3.9\nx\n", "3.9"), ("x\n", "")]
)
def test_recorded_python(text: str, expected: str) -> None:
    assert recorded_python(text) == expected


def test_missing_recorded_python_is_said_once() -> None:
    notes: list[str] = []
    _path, version = resolve_python("", "python3", "3.1", notes.append)
    assert version  # the interpreter running hpcagent
    assert len(notes) == 1
    assert "python3.1" in notes[0]
    assert "not found on this node" in notes[0]
