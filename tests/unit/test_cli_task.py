"""``hpcagent task …`` / ``hpcagent queue …`` end to end against the real embedded server.

Commands run through ``hpcagent.cli.run`` (the same path as the console script: errors become
one ``error: …`` line on stderr and an exit status) with a clearml.conf pointing at the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcagent.api import ApiClient
from hpcagent.cli import main_group, run

Invoke = Callable[..., tuple[int, str, str]]


def write_conf(path: Path, url: str, key: str, secret: str, retries: int = 2) -> Path:
    path.write_text(
        "api {\n"
        f"  api_server: {json.dumps(url)}\n"
        f"  credentials {{ access_key: {json.dumps(key)}, secret_key: {json.dumps(secret)} }}\n"
        f"  http {{ retries: {retries}, timeout_sec: 10 }}\n"
        "}\n"
    )
    return path


@pytest.fixture
def cli(
    embedded_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Invoke:
    for var in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    conf = write_conf(
        tmp_path / "clearml.conf",
        embedded_server.url,
        embedded_server.access_key,
        embedded_server.secret_key,
    )

    def invoke(*args: str, conf_file: Path = conf) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = run(main_group, ["--config-file", str(conf_file), *args])
        out, err = capsys.readouterr()
        return rc, out, err

    return invoke


@pytest.fixture
def api(embedded_server: Any) -> ApiClient:
    return ApiClient(
        embedded_server.url, embedded_server.access_key, embedded_server.secret_key, retries=2
    )


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


def test_queue_create_and_list(cli: Invoke) -> None:
    qid = ok(cli("queue", "create", "gpu")).strip()
    assert len(qid) >= 30
    table = ok(cli("queue", "list"))
    assert table.splitlines()[0].split() == ["ID", "NAME", "PENDING"]
    assert any(line.split() == [qid, "gpu", "0"] for line in table.splitlines())
    listed = json.loads(ok(cli("queue", "list", "--json")))
    assert {"id": qid, "name": "gpu", "pending": 0} in listed
    line = one_error_line(cli("queue", "create", "GPU"), 2)
    assert "already exists" in line


def test_create_from_script_and_show(cli: Invoke, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('hello')\n")
    out = ok(
        cli(
            "task", "create", "--project", "demo", "--name", "first run",
            "--script", str(script), "--packages", "numpy==2.0 pandas",
            "--args", "lr=0.1", "--args", "expr=a=b", "--user-property", "team=ml",
            "--container", "python:3.11", "--json",
        )
    )  # fmt: skip
    created = json.loads(out)
    task = json.loads(ok(cli("task", "show", created["id"], "--json")))
    assert task["name"] == "first run"
    assert task["project"] == created["project"]
    assert task["script"]["diff"] == "print('hello')\n"
    assert task["script"]["entry_point"] == "train.py"
    assert not task["script"].get("repository")
    assert task["script"]["requirements"]["pip"] == "numpy==2.0\npandas\n"
    assert task["hyperparams"]["Args"]["lr"]["value"] == "0.1"
    assert task["hyperparams"]["Args"]["expr"]["value"] == "a=b"
    assert task["hyperparams"]["properties"]["team"]["value"] == "ml"
    assert task["container"]["image"] == "python:3.11"
    text = ok(cli("task", "show", created["id"]))
    assert "Args/lr" in text
    assert "python:3.11" in text
    assert "created" in text
    assert f"demo ({created['project']})" in text


def test_create_from_repo_with_requirements_file(cli: Invoke, tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("torch\n")
    tid = ok(
        cli(
            "task", "create", "--project", "demo", "--name", "repo run",
            "--repo", "https://example.com/x.git", "--commit", "abc123",
            "--entry-point", "train.py", "--working-dir", "src", "--requirements", str(reqs),
        )
    ).strip()  # fmt: skip
    task = json.loads(ok(cli("task", "show", tid, "--json")))
    script = task["script"]
    assert script["repository"] == "https://example.com/x.git"
    assert script["version_num"] == "abc123"
    assert (script["entry_point"], script["working_dir"]) == ("train.py", "src")
    assert script["requirements"]["pip"] == "torch\n"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "exactly one of --script"),
        (["--repo", "u", "--entry-point", "x.py", "--branch", "b", "--commit", "c"], "not both"),
        (["--repo", "u"], "--entry-point"),
        (["--repo", "u", "--entry-point", "x.py", "--args", "novalue"], "key=value"),
    ],
)
def test_create_usage_errors(cli: Invoke, extra: list[str], needle: str) -> None:
    line = one_error_line(cli("task", "create", "--project", "p", "--name", "nnn", *extra), 2)
    assert needle in line


def test_enqueue_list_abort_reset(cli: Invoke, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "cpu"))
    tid = ok(
        cli("task", "create", "--project", "p", "--name", "to queue", "--script", str(script))
    ).strip()
    assert "queued in cpu" in ok(cli("task", "enqueue", tid, "--queue", "CPU"))
    rows = [line.split() for line in ok(cli("task", "list", "--queue", "cpu")).splitlines()]
    assert rows[0][:4] == ["ID", "NAME", "STATUS", "QUEUE"]
    assert next(r for r in rows[1:] if r[0] == tid)[3:5] == ["queued", "cpu"]
    listed = json.loads(ok(cli("task", "list", "--status", "queued", "--json")))
    assert [t["id"] for t in listed] == [tid]
    assert json.loads(ok(cli("queue", "list", "--json")))[0]["pending"] == 1
    assert f"task {tid} stopped" in ok(cli("task", "abort", tid))
    assert json.loads(ok(cli("task", "list", "--status", "queued", "--json"))) == []
    assert json.loads(ok(cli("queue", "list", "--json")))[0]["pending"] == 0
    assert ok(cli("task", "reset", tid)).strip() == f"task {tid} is created"
    assert json.loads(ok(cli("task", "reset", tid, "--json")))["status"] == "created"


def test_clone_with_args_and_enqueue(cli: Invoke, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "q1"))
    tid = ok(
        cli(
            "task", "create", "--project", "p", "--name", "base task", "--script", str(script),
            "--args", "lr=0.1", "--args", "epochs=3",
        )
    ).strip()  # fmt: skip
    cloned = json.loads(
        ok(cli("task", "clone", tid, "--args", "lr=0.5", "--enqueue", "q1", "--json"))
    )
    assert cloned["id"] != tid
    task = json.loads(ok(cli("task", "show", cloned["id"], "--json")))
    assert task["status"] == "queued"
    args = {k: v["value"] for k, v in task["hyperparams"]["Args"].items()}
    assert args == {"lr": "0.5", "epochs": "3"}
    assert task["script"]["diff"] == "pass\n"


def test_log_and_follow(cli: Invoke, api: ApiClient, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "lq"))
    created = ok(
        cli(
            "task", "create", "--project", "p", "--name", "logger", "--script", str(script),
            "--enqueue", "lq", "--json",
        )
    )  # fmt: skip
    tid = json.loads(created)["id"]
    assert json.loads(ok(cli("task", "show", tid, "--json")))["status"] == "queued"
    api.events.add_log(tid, [f"line {i}" for i in range(5)], "w")
    assert ok(cli("task", "log", tid)).splitlines() == [f"line {i}" for i in range(5)]
    events = [json.loads(x) for x in ok(cli("task", "log", tid, "--json")).splitlines()]
    assert "\n".join(e["msg"] for e in events).splitlines() == [f"line {i}" for i in range(5)]

    def writer() -> None:
        time.sleep(0.3)
        api.events.add_log(tid, ["later 1", "later 2"], "w")
        time.sleep(0.3)
        api.tasks.failed(tid, status_reason="test over")

    thread = threading.Thread(target=writer)
    thread.start()
    followed = ok(cli("task", "log", tid, "--follow", "--interval", "0.1")).splitlines()
    thread.join()
    assert followed == [f"line {i}" for i in range(5)] + ["later 1", "later 2"]


def test_unknown_task_is_one_line_api_error(cli: Invoke) -> None:
    line = one_error_line(cli("task", "show", "0" * 32), 4)
    assert line.startswith("error: ")
    assert "tasks.get_by_id" in line
    line = one_error_line(cli("task", "enqueue", "0" * 32, "--queue", "nope"), 4)
    assert "nope" in line


def test_unreachable_server_exit_code(cli: Invoke, tmp_path: Path) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    conf = write_conf(tmp_path / "dead.conf", f"http://127.0.0.1:{port}", "k", "s", retries=1)
    line = one_error_line(cli("queue", "list", conf_file=conf), 5)
    assert f"127.0.0.1:{port}" in line
