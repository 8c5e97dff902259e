"""``hpcagent task …`` / ``hpcagent queue …`` end to end against the real embedded server.

Commands run through ``hpcagent.cli.run`` (the same path as the console script: errors become
one ``error: …`` line on stderr and an exit status) with a clearml.conf pointing at the server
(fixtures ``cli`` and ``api`` in tests/unit/conftest.py).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Invoke, ok, one_error_line, write_conf

from hpcagent.api import ApiClient
from hpcagent.commands import task as task_cmd


def test_queue_create_and_list(cli: Invoke) -> None:
    qid = ok(cli("queue", "create", "gpu")).strip()
    assert len(qid) >= 30
    table = ok(cli("queue", "list"))
    assert table.splitlines()[0].split() == ["ID", "NAME", "PENDING"]
    assert any(line.split() == [qid, "gpu", "0"] for line in table.splitlines())
    listed = json.loads(ok(cli("queue", "list", "--json")))
    assert {"id": qid, "name": "gpu", "pending": 0} in listed
    # idempotent: an existing queue (name matched ignoring case, as the agent does) is no error
    assert ok(cli("queue", "create", "GPU")).strip() == qid
    again = json.loads(ok(cli("queue", "create", "gpu", "--json")))
    assert again == {"id": qid, "name": "gpu", "created": False}


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
    line = one_error_line(cli("task", "create", "--project", "proj", "--name", "nnn", *extra), 2)
    assert needle in line


def test_enqueue_list_abort_reset(cli: Invoke, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "cpu"))
    tid = ok(
        cli("task", "create", "--project", "proj", "--name", "to queue", "--script", str(script))
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
    ok(cli("queue", "create", "qq1"))
    tid = ok(
        cli(
            "task", "create", "--project", "proj", "--name", "base task", "--script", str(script),
            "--args", "lr=0.1", "--args", "epochs=3",
        )
    ).strip()  # fmt: skip
    cloned = json.loads(
        ok(cli("task", "clone", tid, "--args", "lr=0.5", "--enqueue", "qq1", "--json"))
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
    ok(cli("queue", "create", "lqq"))
    created = ok(
        cli(
            "task", "create", "--project", "proj", "--name", "logger", "--script", str(script),
            "--enqueue", "lqq", "--json",
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
    rc, out, err = cli("task", "log", tid, "--follow", "--interval", "0.1")
    thread.join()
    assert out.splitlines() == [f"line {i}" for i in range(5)] + ["later 1", "later 2"]
    # a failed task makes --follow fail, so that it can be used to wait for success
    assert rc == 8, err
    assert err.strip() == f"error: task {tid} is failed: test over"


def test_follow_exit_status_is_the_tasks(cli: Invoke, api: ApiClient, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "fqq"))
    ids = [
        ok(cli("task", "create", "--project", "proj", "--name", n, "--script", str(script),
               "--enqueue", "fqq")).strip()
        for n in ("done one", "stopped one")
    ]  # fmt: skip
    for tid in ids:
        api.tasks.started(tid)
    api.tasks.completed(ids[0])
    api.tasks.stop(ids[1], force=True)
    assert cli("task", "log", ids[0], "--follow")[0] == 0
    line = one_error_line(cli("task", "log", ids[1], "--follow"), 8)
    assert line.startswith(f"error: task {ids[1]} is stopped")


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


def test_edit_delete_and_scalars(cli: Invoke, api: ApiClient, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    tid = ok(cli("task", "create", "--project", "prj", "--name", "édit me", "--script", str(script),
                 "--args", "lr=0.1", "--args", "epochs=3")).strip()  # fmt: skip
    out = ok(cli("task", "edit", tid, "--name", "edited 'quoted' name", "--args", "lr=0.5",
                 "--packages", "numpy==2.0 pandas", "--container", "python:3.11"))  # fmt: skip
    assert out.strip() == f"task {tid}: changed container, hyperparams, name, script"
    task = json.loads(ok(cli("task", "show", tid, "--json")))
    assert task["name"] == "edited 'quoted' name"
    assert {k: v["value"] for k, v in task["hyperparams"]["Args"].items()} == {
        "lr": "0.5",
        "epochs": "3",
    }
    assert task["script"]["requirements"]["pip"] == "numpy==2.0\npandas\n"
    assert task["script"]["diff"] == "pass\n"  # what was not given stays
    assert task["container"]["image"] == "python:3.11"
    shown = ok(cli("task", "show", tid))  # requirements one per line, aligned
    req = [line for line in shown.splitlines() if "numpy" in line or "pandas" in line]
    assert len(req) == 2
    assert req[0].index("numpy") == req[1].index("pandas")
    line = one_error_line(cli("task", "edit", tid), 2)
    assert "nothing to change" in line

    ok(cli("queue", "create", "eqq"))
    ok(cli("task", "enqueue", tid, "-q", "eqq"))
    line = one_error_line(cli("task", "edit", tid, "--name", "later"), 2)
    assert "is queued, not a draft" in line
    ok(cli("task", "edit", tid, "--name", "forced", "--force"))

    assert ok(cli("task", "scalars", tid)).strip() == f"task {tid} reported no scalars"
    api.events.add_scalars(tid, [("loss", "train", v, i) for i, v in enumerate([0.9, 0.4, 0.6])])
    rows = json.loads(ok(cli("task", "scalars", tid, "--json")))
    assert rows == [
        {"metric": "loss", "variant": "train", "last": 0.6, "min": 0.4, "max": 0.9, "iter": 2}
    ]
    table_lines = ok(cli("task", "scalars", tid)).splitlines()
    assert table_lines[0].split() == ["METRIC", "VARIANT", "LAST", "MIN", "MAX", "ITER"]
    assert table_lines[-1].split() == ["loss", "train", "0.6", "0.4", "0.9", "2"]

    assert ok(cli("task", "delete", tid)).strip() == f"deleted task {tid}"
    one_error_line(cli("task", "show", tid), 4)


def test_queue_show_move_delete(cli: Invoke, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    qid = ok(cli("queue", "create", "mqq")).strip()
    ids = [
        ok(cli("task", "create", "--project", "proj", "--name", f"t {i}", "--script", str(script),
               "--enqueue", "mqq")).strip()
        for i in range(3)
    ]  # fmt: skip
    assert ok(cli("queue", "move", "mqq", ids[2], "front")).strip() == (
        f"task {ids[2]} is at position 0 in mqq"
    )
    order = [e["id"] for e in json.loads(ok(cli("queue", "show", "mqq", "--json")))["entries"]]
    assert order == [ids[2], ids[0], ids[1]]
    moved = json.loads(ok(cli("queue", "move", "mqq", ids[2], "down", "--count", "2", "--json")))
    assert moved == {"queue": qid, "task": ids[2], "position": 2}
    table_lines = ok(cli("queue", "show", "mqq")).splitlines()
    assert [line.split()[1] for line in table_lines[2:]] == [ids[0], ids[1], ids[2]]
    line = one_error_line(cli("queue", "delete", "mqq"), 4)
    assert "mqq has pending tasks; --force deletes it anyway" in line
    assert ok(cli("queue", "delete", "mqq", "--force")).strip() == "deleted queue mqq"
    assert ok(cli("queue", "list")).strip() == "no queues (hpcagent queue create NAME makes one)"


def test_workers_list(cli: Invoke, api: ApiClient) -> None:
    assert ok(cli("workers", "list")).strip() == "no workers reported in the last 10 minutes"
    qid = ok(cli("queue", "create", "wqq")).strip()
    api.workers.register("login1:slurm", queues=[qid])
    api.workers.status_report("login1:slurm", queues=[qid])
    rows = ok(cli("workers", "list")).splitlines()
    assert rows[0].split() == ["WORKER", "QUEUES", "TASK", "LAST", "SEEN"]
    assert rows[-1].split()[:2] == ["login1:slurm", "wqq"]
    listed = json.loads(ok(cli("workers", "list", "--json")))
    assert [w["id"] for w in listed] == ["login1:slurm"]


def test_follow_rides_out_a_server_restart(
    cli: Invoke,
    api: ApiClient,
    embedded_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Following is long-running: a restarting server is waited for (one warning line each
    way), not an error after the interactive 3 attempts."""
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    ok(cli("queue", "create", "rqq"))
    tid = ok(cli("task", "create", "--project", "prj", "--name", "restart", "--script", str(script),
                 "--enqueue", "rqq")).strip()  # fmt: skip
    api.tasks.started(tid)
    api.events.add_log(tid, ["before"], "w")
    # The outage must begin once the command follows (its first wait between polls, after
    # "before" was printed): a server that is away when the command starts is an error, by
    # contract. A fixed head start lost that race on a loaded machine.
    following = threading.Event()

    class _Clock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            following.set()
            time.sleep(seconds)

    monkeypatch.setattr(task_cmd, "time", _Clock)
    result: list[tuple[int, str, str]] = []
    follow = threading.Thread(
        target=lambda: result.append(cli("task", "log", tid, "--follow", "--interval", "0.2"))
    )
    follow.start()
    assert following.wait(timeout=120), result
    embedded_server.stop()
    time.sleep(6.0)  # longer than the interactive policy's 3 attempts
    embedded_server.start()
    api.events.add_log(tid, ["after"], "w")
    api.tasks.completed(tid)
    follow.join(timeout=120)
    rc, out, err = result[0]
    assert rc == 0, err
    assert out.splitlines() == ["before", "after"]
    warnings = err.splitlines()
    assert len(warnings) == 2, err
    assert "still following for up to 120 s" in warnings[0]
    assert warnings[1] == "warning: the server answers again; following"
