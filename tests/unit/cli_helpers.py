"""Helpers of the CLI tests (the fixtures ``cli`` and ``api`` are in tests/unit/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

#: ``cli(*args, conf_file=...) -> (exit status, stdout, stderr)``
Invoke = Callable[..., tuple[int, str, str]]


def write_conf(path: Path, url: str, key: str, secret: str, retries: int = 2) -> Path:
    """A clearml.conf with only the ``api`` section."""
    path.write_text(
        "api {\n"
        f"  api_server: {json.dumps(url)}\n"
        f"  credentials {{ access_key: {json.dumps(key)}, secret_key: {json.dumps(secret)} }}\n"
        f"  http {{ retries: {retries}, timeout_sec: 10 }}\n"
        "}\n"
    )
    return path


def ok(result: tuple[int, str, str]) -> str:
    rc, out, err = result
    assert rc == 0, err
    return out


def one_error_line(result: tuple[int, str, str], code: int) -> str:
    rc, out, err = result
    assert rc == code, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]
