"""Finding and reading the tail of a job's output file, and writing scripts safely."""

from __future__ import annotations

import getpass
import os
import re
import shlex
from pathlib import Path

_OUTPUT = re.compile(r"^#SBATCH\s+(?:--output[=\s]|-o\s*)(\S+)", re.MULTILINE)
_CHDIR = re.compile(r"^#SBATCH\s+(?:--chdir[=\s]|-D\s*)(\S+)", re.MULTILINE)


def write_script(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0700 (owner only), durably (fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o700)
    os.replace(tmp, path)
    return path


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
