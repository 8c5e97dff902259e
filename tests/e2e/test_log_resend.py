"""Logs an executor could not deliver before it ended are delivered later, exactly once.

A real embedded server is stopped while a real ``hpcagent execute`` ends (the task prints its
last lines after the stop; the final flush gives up after ``final_flush_timeout_sec``), so the
executor leaves its log spool on disk. The server comes back; then the next executor run (first
test) or a daemon (second test: the submitter's loop, which ``hpcagent-slurm`` runs too)
delivers what was left, each line once, also when one request had reached the server before
(its deliverer killed before it could delete the file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    create_task,
    executor_env,
    hpcagent_argv,
    make_wheelhouse,
    run_execute,
    start_execute,
    task_log_lines,
    wait_for,
    write_conf,
)

from hpcagent.api import spool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

N = 40


def _script(tmp: Path) -> dict[str, Any]:
    body = (
        "import pathlib, time\n"
        f"d = pathlib.Path({str(tmp)!r})\n"
        f"for i in range({N}):\n"
        "    print(f'early {i}', flush=True)\n"
        "(d / 'ready').touch()\n"
        "while not (d / 'down').exists():\n"
        "    time.sleep(0.05)\n"
        f"for i in range({N}):\n"
        "    print(f'late {i}', flush=True)\n"
    )
    return {
        "entry_point": "ends.py",
        "binary": "python3",
        "diff": body,
        "requirements": {"pip": ""},
    }


def _conf(tmp: Path, server: Any) -> Path:
    conf = write_conf(tmp / "clearml.conf", server, tmp, make_wheelhouse(tmp / "wheels"))
    data = json.loads(conf.read_text())
    data["executor"]["final_flush_timeout_sec"] = 3  # give up soon: the server is away
    data["api"]["http"] = {"retries": 1, "timeout_sec": 3}
    conf.write_text(json.dumps(data))
    return conf


def _leave_spool(tmp: Path, server: Any, conf: Path) -> str:
    """Run a task whose end the server misses; returns its id (its logs wait on disk)."""
    task_id = create_task(server, name="ends-while-down", script=_script(tmp))
    proc = start_execute(task_id, conf, "--disable-monitoring", log=tmp / "first.out")
    try:
        wait_for(lambda: (tmp / "ready").exists(), timeout=180)
        time.sleep(1.0)  # the early lines reach the server
        server.stop()
        (tmp / "down").touch()
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp / "first.out").read_text(errors="replace")
    assert "some log lines could not be delivered" in out, out[-3000:]
    spools = list(spool.orphan_spools(tmp / "builds"))
    assert len(spools) == 1, out[-3000:]
    server.start()
    server._token = None  # a restarted server: log in again
    return task_id


def _lines(server: Any, task_id: str) -> list[str]:
    return [x for x in task_log_lines(server, task_id) if x.startswith(("early ", "late "))]


WANT = [f"early {i}" for i in range(N)] + [f"late {i}" for i in range(N)]


def _send_first_file_as_a_killed_deliverer_did(tmp: Path, server: Any) -> None:
    """The first spooled request reaches the server, its file stays (deliverer killed)."""
    (spool_dir,) = spool.orphan_spools(tmp / "builds")
    first = spool.files(spool_dir)[0]
    events = spool.read(first)
    body = "\n".join(json.dumps(e) for e in events)
    res = server.request("events.add_batch", data=body.encode())
    assert res.status_code == 200, res.text


def test_the_next_executor_delivers_what_the_last_one_left(
    tmp_path: Path, embedded_server: Any
) -> None:
    server = embedded_server
    conf = _conf(tmp_path, server)
    first = _leave_spool(tmp_path, server, conf)
    have = _lines(server, first)
    assert have == WANT[: len(have)], have
    assert len(have) < len(WANT), have  # the late lines are missing
    _send_first_file_as_a_killed_deliverer_did(tmp_path, server)
    script = {"entry_point": "ok.py", "binary": "python3", "diff": "print('second')\n",
              "requirements": {"pip": ""}}  # fmt: skip
    second = create_task(server, name="next-run", script=script)
    res = run_execute(second, conf, "--disable-monitoring")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _lines(server, first) == WANT
    assert not list(spool.orphan_spools(tmp_path / "builds"))  # delivered: removed
    third = create_task(server, name="third-run", script=script)
    assert run_execute(third, conf, "--disable-monitoring").returncode == 0
    assert _lines(server, first) == WANT  # still once


def test_a_daemon_delivers_what_an_executor_left(tmp_path: Path, embedded_server: Any) -> None:
    server = embedded_server
    conf = _conf(tmp_path, server)
    first = _leave_spool(tmp_path, server, conf)
    _send_first_file_as_a_killed_deliverer_did(tmp_path, server)
    env = executor_env(conf)
    log = open(tmp_path / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        hpcagent_argv("daemon", "--state-dir", str(tmp_path / "dstate"), "--cpu-only",
                      "--queue", "spool-q", "--create-queue", "--poll-interval", "0.3"),
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    try:
        wait_for(lambda: _lines(server, first) == WANT, timeout=120)
        wait_for(lambda: not list(spool.orphan_spools(tmp_path / "builds")), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    daemon_log = (tmp_path / "daemon.out").read_text(errors="replace")
    assert "left-behind log request" in daemon_log, daemon_log[-3000:]
    assert "1 already stored" in daemon_log
    assert _lines(server, first) == WANT
    assert os.listdir(tmp_path / "builds") == []
