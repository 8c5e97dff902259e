"""Which requirements a task's venv gets, read as clearml-agent reads them.

Sources, first match wins (docs/executor.md, "Requirements"):

1. with ``agent.package_manager.type: poetry``, a ``poetry.lock`` (working dir, then repository
   root): its packages, pinned, as clearml-agent's ``poetry install`` would install them;
2. the task's ``script.requirements.pip`` as the SDK records it: a ``# Python 3.x.y ...``
   header (the interpreter the task ran with, see :func:`recorded_python`), comments, plain
   pins, VCS lines (``git+https://...``, kept for pip/uv), and ``name @ file:///...`` lines
   that point at the user's machine: kept when the file exists here, else reduced to ``name``
   (the agent's rule);
3. a ``poetry.lock`` (without the poetry type: better than nothing for tasks that record none);
4. ``requirements.txt`` (working dir, then repository root);
5. PEP 621 ``[project] dependencies`` of ``pyproject.toml`` (working dir, then root);
6. nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Logger = Callable[[str], None]

# Patterns kept as text: re compiles (and caches) each on first use, not every job at import.
_PYTHON_HEADER = r"^#\s*Python\s+(?P<version>\d+\.\d+)(?:\.\d+)?\b"
_FILE_REF = r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._\-\[\],]*)\s*@\s*file://(?P<path>\S+)"


@dataclass(frozen=True)
class Requirements:
    """The lines to install, where they came from, and the recorded Python (``3.11`` or "")."""

    lines: tuple[str, ...]
    source: str
    python: str = ""


def recorded_python(text: str | None) -> str:
    """``"3.11"`` from the SDK's ``# Python 3.11.7 (main, ...)`` header, else ""."""
    for raw in (text or "").splitlines():
        match = re.match(_PYTHON_HEADER, raw.strip())
        if match:
            return match.group("version")
    return ""


def recorded_lines(text: str | None, log: Logger) -> list[str]:
    """The requirement lines of ``script.requirements.pip`` (comments dropped, ``@ file://``
    lines whose file is missing here reduced to the package name)."""
    out: list[str] = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(_FILE_REF, line)
        if match and not Path(match.group("path")).exists():
            log(f"requirement {line!r}: the file is not on this node; installing {match['name']}")
            line = match.group("name")
        out.append(line)
    return out


def _first(folders: Iterable[Path], name: str) -> Path | None:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def _lock_line(package: dict[str, Any], root: Path) -> str | None:
    """One ``poetry.lock`` package as a requirement line; None for dev/optional packages."""
    groups = package.get("groups")
    category = package.get("category")
    if (groups is not None and "main" not in groups) or category not in (None, "main"):
        return None
    if package.get("optional"):
        return None
    name, version = str(package["name"]), str(package["version"])
    source = package.get("source") or {}
    kind = source.get("type")
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference") or ""
        line = f"{name} @ git+{source['url']}" + (f"@{ref}" if ref else "")
    elif kind in ("directory", "file"):
        line = f"{name} @ {(root / str(source['url'])).resolve().as_uri()}"
    elif kind == "url":
        line = f"{name} @ {source['url']}"
    else:
        line = f"{name}=={version}"
    markers = package.get("markers")
    if isinstance(markers, dict):
        markers = markers.get("main")
    if isinstance(markers, str) and markers.strip():
        line += f" ; {markers}"
    return line


def _toml(text: str) -> dict[str, Any]:
    """Parsed TOML (tomllib, imported here: a task without these files never needs it)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    data: dict[str, Any] = tomllib.loads(text)
    return data


def poetry_lock_lines(lock: Path) -> list[str]:
    """The main-group packages of a ``poetry.lock`` (Poetry 1 and 2 formats), pinned."""
    data = _toml(lock.read_text(encoding="utf-8"))
    lines = [_lock_line(p, lock.parent) for p in data.get("package") or []]
    return [line for line in lines if line]


def pyproject_lines(pyproject: Path) -> list[str]:
    """PEP 621 ``[project] dependencies`` (Poetry's own ``[tool.poetry]`` needs its lock)."""
    data = _toml(pyproject.read_text(encoding="utf-8"))
    return [str(d) for d in (data.get("project") or {}).get("dependencies") or []]


def choose(
    recorded: str | None,
    folders: list[Path],
    *,
    manager: str,
    log: Logger,
) -> Requirements:
    """The task's requirements (module docstring); ``folders`` are the working dir and the
    repository root (empty for a task without repository)."""
    python = recorded_python(recorded)
    lock = _first(folders, "poetry.lock")
    if lock is not None and manager == "poetry":
        return Requirements(tuple(poetry_lock_lines(lock)), str(lock), python)
    lines = recorded_lines(recorded, log)
    if lines:
        return Requirements(tuple(lines), "the task (script.requirements.pip)", python)
    if lock is not None:
        return Requirements(tuple(poetry_lock_lines(lock)), str(lock), python)
    req = _first(folders, "requirements.txt")
    if req is not None:
        return Requirements(tuple(recorded_lines(req.read_text(), log)), str(req), python)
    pyproject = _first(folders, "pyproject.toml")
    if pyproject is not None:
        found = pyproject_lines(pyproject)
        if found:
            return Requirements(tuple(found), f"{pyproject} [project] dependencies", python)
    return Requirements((), "none", python)
