"""Finding and reading the tail of a job's output file, and writing scripts and the jobs'
configuration safely."""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

_OUTPUT = re.compile(r"^#SBATCH\s+(?:--output[=\s]|-o\s*)(\S+)", re.MULTILINE)
_CHDIR = re.compile(r"^#SBATCH\s+(?:--chdir[=\s]|-D\s*)(\S+)", re.MULTILINE)


def _write_private(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` with ``mode`` through a temporary file, durably (fsync), so
    that a reader sees the old or the new file whole and never a wider mode."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def write_script(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0700 (owner only), durably (fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _write_private(path, text.encode("utf-8"), 0o700)


def write_job_config(settings: Any, state_dir: Path) -> Path:
    """``state_dir/clearml.conf``: the configuration the jobs read (CLEARML_CONFIG_FILE), the
    full settings with their secrets as JSON (which is HOCON); mode 0600."""
    data = json.dumps(settings.as_dict(mask_secrets=False), default=str).encode()
    return _write_private(state_dir / "clearml.conf", data, 0o600)


def output_path(script: str, *, job_id: str, job_name: str, submit_dir: Path) -> Path:
    """Where Slurm writes the job's stdout, from the script's ``--output`` (or the default)."""
    m = _OUTPUT.search(script)
    pattern = shlex.split(m.group(1))[0] if m else "slurm-%j.out"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    subs = {"j": job_id, "J": job_id, "A": job_id, "x": job_name, "u": user, "%": "%"}
    name = re.sub(r"%(\d*)([a-zA-Z%])", lambda mm: subs.get(mm.group(2), mm.group(0)), pattern)
    base = submit_dir
    d = _CHDIR.search(script)
    if d:
        base = Path(shlex.split(d.group(1))[0])
    p = Path(name)
    return p if p.is_absolute() else base / p


def tail(path: Path, max_lines: int = 20, max_bytes: int = 3000) -> str:
    """The last lines of ``path`` ("" when it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])
