"""What a short-lived ``hpcagent execute`` pays at start (issue 18.2): the modules it imports
and the parse cache of configuration files (benchmarks/e2e_bench.py measures the CPU)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt

from hpcagent.api.envelope import token_claims, token_refresh_time
from hpcagent.config import load_settings
from hpcagent.config.loader import parse_cache_dir, parse_hocon

#: Never imported by ``hpcagent execute`` for a task without a container or a repository that
#: ends quickly: click (a job's command line is read without it), the server, the UI's stack,
#: HOCON parsing (on a cache hit), requests and http.client with email and ssl (plain http://
#: is written on a socket), PyJWT/cryptography, psutil/NVML (metrics start after a moment), the
#: image cache's locks, importlib.metadata (the scheduler entry points come from their cache),
#: the Grid Engine XML parser, spython (container images), tomllib (pyproject/poetry
#: requirements).
NOT_FOR_EXECUTE = (
    "click",
    "http.client",
    "email",
    "ssl",
    "importlib.metadata",
    "importlib.resources",
    "zipfile",
    "xml",
    "spython",
    "tomllib",
    "encodings.idna",
    "hpcagent.server",
    "starlette",
    "uvicorn",
    "jinja2",
    "rich",
    "pyhocon",
    "requests",
    "urllib3",
    "tenacity",
    "asyncio",
    "pyparsing",
    "jwt",
    "cryptography",
    "psutil",
    "pynvml",
    "filelock",
    "hpcagent.container.cache",
    "hpcagent.executor.metrics",
)


def _modules_after(code: str, env: dict[str, str]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in NOT_FOR_EXECUTE or m in NOT_FOR_EXECUTE)


def test_execute_imports_only_what_it_uses(tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text('api { api_server: "http://127.0.0.1:9", credentials { access_key: "k" } }\n')
    env = dict(os.environ, HOME=str(tmp_path), CLEARML_CONFIG_FILE=str(conf))
    env.pop("XDG_CACHE_HOME", None)
    load = (
        "from hpcagent.config import load_settings; load_settings()\n"
        "from hpcagent.scheduler import registry; registry.job_identity()\n"
        "from hpcagent.api.transport import PlainHttp\n"
        "try: PlainHttp('localhost', 9, {}).request("
        "'post', 'http://localhost:9/x', data=b'', headers={}, timeout=(1, 1))\n"
        "except OSError: pass"  # a host name resolved, a request tried
    )
    _modules_after(load, env)  # the first load fills the parse and entry point caches
    code = f"import hpcagent.cli, hpcagent.executor.launch\n{load}"
    modules = _modules_after(code, env)
    assert "hpcagent.executor.main" in modules
    assert "hpcagent.api.client" in modules
    assert _heavy(modules) == []
    # without a cache (first run of a version) the parse still works, with pyhocon
    assert "pyhocon" in _modules_after(load, dict(env, XDG_CACHE_HOME=str(tmp_path / "none")))


def test_parse_cache_hit_change_and_privacy(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    text = (
        'api { api_server: "http://a:8008", credentials { secret_key: "s3" } }\nx: [1, 2.5, true]'
    )
    first = parse_hocon(text, "file:/x/clearml.conf", env)
    assert first == {
        "api.api_server": "http://a:8008",
        "api.credentials.secret_key": "s3",
        "x": [1, 2.5, True],
    }
    folder = parse_cache_dir(env)
    (entry,) = list(folder.iterdir())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    doc = json.loads(entry.read_text())
    doc["values"]["x"] = "from the cache"  # a hit returns what the cache holds
    entry.write_text(json.dumps(doc))
    assert parse_hocon(text, "file:/x/clearml.conf", env)["x"] == "from the cache"
    changed = parse_hocon(text.replace("s3", "s4"), "file:/x/clearml.conf", env)
    assert changed["api.credentials.secret_key"] == "s4"
    assert changed["x"] == [1, 2.5, True]
    assert list(folder.iterdir()) == [entry]  # one entry per file: the old key is gone
    assert "s3" not in entry.read_text()


def test_substitutions_and_includes_are_never_cached(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    os.environ["HPCAGENT_TEST_SUBST"] = "one"
    try:
        text = "a: ${HPCAGENT_TEST_SUBST}\n# ${NOT_A_SUBSTITUTION} in a comment\n"
        assert parse_hocon(text, "n", env) == {"a": "one"}
        os.environ["HPCAGENT_TEST_SUBST"] = "two"
        assert parse_hocon(text, "n", env) == {"a": "two"}
    finally:
        del os.environ["HPCAGENT_TEST_SUBST"]
    (tmp_path / "inc.conf").write_text("b: 1\n")
    assert parse_hocon(f'include "{tmp_path / "inc.conf"}"\nc: 2\n', "i", env) == {"b": 1, "c": 2}
    assert not parse_cache_dir(env).exists()


def test_settings_equal_with_and_without_cache(tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text('agent { worker_name: "w ü" }\nsdk { development { x: 1 } }\n')
    cached_env = {"HOME": str(tmp_path)}
    first = load_settings(config_file=str(conf), env=cached_env)
    again = load_settings(config_file=str(conf), env=cached_env)  # both files from the cache
    unwritable = {"HOME": str(tmp_path), "XDG_CACHE_HOME": "/proc/no-such-place"}
    parsed = load_settings(config_file=str(conf), env=unwritable)
    assert first == again == parsed
    assert again.agent.worker_name == "w ü"


def test_token_claims_read_without_pyjwt() -> None:
    token = jwt.encode({"exp": 2000, "iat": 1000, "api_version": "2.31"}, "k" * 32, "HS256")
    assert token_claims(token) == {"exp": 2000, "iat": 1000, "api_version": "2.31"}
    assert token_refresh_time(token) == 1500.0
    assert token_claims("not-a-token") is None
    assert token_claims("a.!!!.c") is None
    listed = base64.urlsafe_b64encode(b"[1]").decode().rstrip("=")
    assert token_claims(f"h.{listed}.s") is None
    assert token_refresh_time("h.x.s", now=10.0) == 3610.0


def test_a_jobs_execute_runs_a_task_without_click(tmp_path: Path, embedded_server: Any) -> None:
    """``python -m hpcagent execute --id TASK`` (the rendered job command) runs the task, its
    output and final status reported, with click never imported."""
    from hpcagent.api import ApiClient

    api = ApiClient(embedded_server.url, embedded_server.access_key, embedded_server.secret_key)
    script = {"entry_point": "main.py", "binary": "python3", "diff": "print(6 * 7)\n"}
    body = {"name": "no click", "type": "training", "script": script}
    task_id = str(api.send("tasks.create", body)["id"])
    conf = tmp_path / "clearml.conf"
    keys = {"access_key": embedded_server.access_key, "secret_key": embedded_server.secret_key}
    conf.write_text(json.dumps({"api": {"api_server": embedded_server.url, "credentials": keys}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    env.update(HOME=str(tmp_path), CLEARML_CONFIG_FILE=str(conf))
    probe = (
        "import atexit, runpy, sys\n"
        "def clicks(): print('CLICK', sorted(m for m in sys.modules if m.startswith('click')))\n"
        "atexit.register(clicks)\n"
        "sys.argv[0] = 'hpcagent'; runpy.run_module('hpcagent', run_name='__main__')"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, "execute", "--id", task_id],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "42" in lines
    assert "CLICK []" in lines
    got = api.send("tasks.get_by_id", {"task": task_id})["task"]
    assert got["status"] == "completed"
    log = api.send("events.get_task_log", {"task": task_id, "batch_size": 100})["events"]
    assert "42" in "\n".join(str(e.get("msg", "")) for e in log).splitlines()
    api.close()
