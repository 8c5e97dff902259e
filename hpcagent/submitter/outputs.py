"""Reading the tail of a job's output file (found by the scheduler's ``output_path``), and
writing scripts and the jobs' configuration safely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
