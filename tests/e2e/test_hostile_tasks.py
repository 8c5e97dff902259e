"""One bad task never stops the queue: the hostile-record corpus through a real daemon.

Valid tasks are created and enqueued through the API; with the server stopped, their stored
documents are rewritten with the corpus (tests/hostile_tasks.py: wrong types, missing fields,
deep nesting); then the server and a real ``hpcagent daemon`` (real executor) run them. Every
task must end, a failed one with a reason (``status_reason`` + ``status_message``, shown by
``hpcagent task show``), none left queued or running; the good task enqueued last completes.
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
from helpers import api_section, hpcagent_argv
from hostile_tasks import CORPUS, plant

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FINAL = ("completed", "failed", "stopped")
SCRIPT = {"entry_point": "ok.py", "binary": "python3", "diff": "print('RAN OK')\n",
          "requirements": {"pip": ""}}  # fmt: skip


def _task(server: Any, name: str, qid: str) -> str:
    body = {"name": name, "type": "training", "script": SCRIPT}
    tid = str(server.send("tasks.create", body)["id"])
    server.send("tasks.enqueue", {"task": tid, "queue": qid})
    return tid


def _status(server: Any, tid: str) -> dict[str, Any]:
    data = server.send(
        "tasks.get_all",
        {"id": [tid], "only_fields": ["id", "status", "status_reason", "status_message"]},
    )
    return dict(data["tasks"][0])


def test_hostile_records_fail_with_a_reason_and_the_queue_goes_on(
    tmp_path: Path, embedded_server: Any
) -> None:
    server = embedded_server
    qid = str(server.send("queues.create", {"name": "hostile-q"})["id"])
    bad = {_task(server, f"bad {i}", qid): (label, patch, end) for i, (label, patch, end) in
           enumerate(CORPUS)}  # fmt: skip
    good = _task(server, "good after the corpus", qid)
    server.stop()
    plant(server.data_dir, {tid: patch for tid, (_, patch, _) in bad.items()})
    server.start()
    server._token = None

    conf = tmp_path / "clearml.conf"
    conf.write_text(json.dumps({
        "api": api_section(server, http={"retries": 2, "timeout_sec": 10}),
        "agent": {"venvs_dir": str(tmp_path / "builds"),
                  "venvs_cache": {"path": str(tmp_path / "venv-cache"),
                                  "free_space_threshold_gb": 0},
                  "package_manager": {"type": "uv", "extra_args": ["--no-index"]}},
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env["CLEARML_CONFIG_FILE"] = str(conf)
    log = open(tmp_path / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        hpcagent_argv("daemon", "--state-dir", str(tmp_path / "state"), "--cpu-only",
                      "--services-mode", "4", "--queue", "hostile-q", "--poll-interval", "0.3"),
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    ids = [*bad, good]
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = {t: _status(server, t) for t in ids}
            if all(s["status"] in FINAL for s in states.values()):
                break
            assert proc.poll() is None, (tmp_path / "daemon.out").read_text()[-4000:]
            time.sleep(1.0)
        left = {bad[t][0] if t in bad else "good": s["status"] for t, s in states.items()
                if s["status"] not in FINAL}  # fmt: skip
        assert not left, f"{left}\n" + (tmp_path / "daemon.out").read_text()[-4000:]
        assert proc.poll() is None  # the daemon is still serving its queue
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert states[good]["status"] == "completed", states[good]
    # no call about these records was answered with a 5xx (hostile input: a clear 4xx at most)
    daemon_log = (tmp_path / "daemon.out").read_text()
    assert " 500/" not in daemon_log, daemon_log[-4000:]
    report = []
    for tid, (label, _, _end) in bad.items():
        s = states[tid]
        report.append(f"{s['status']:9} {label}: {s.get('status_reason')} | "
                      f"{str(s.get('status_message'))[:120]}")  # fmt: skip
    print("\n".join(report))
    for tid, (label, _, end) in bad.items():
        s = states[tid]
        assert s["status"] == end, (label, s)
        if end == "failed":
            assert s.get("status_reason"), (label, s)
            assert s.get("status_message"), (label, s)
        if s.get("status_reason") == "invalid task record":  # the field is named
            field = label.split()[0].replace("setup_shell_script", "container.setup_shell_script")
            assert field in str(s["status_message"]), (label, s)
    # the reason is what a user sees
    failed = next(t for t in bad if bad[t][0] == "script is a string")
    shown = subprocess.run(hpcagent_argv("task", "show", failed), env=env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert str(states[failed]["status_reason"]) in shown.stdout, shown.stdout + shown.stderr
