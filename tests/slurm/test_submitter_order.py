"""Three queues on the real Slurm: priority order, and turns with ``--order-fairness``.

Two tasks per queue are enqueued before ``hpcagent-slurm`` starts; the order in which their
jobs were submitted (Slurm job ids grow) must follow the queue order, or go round-robin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
WORK_ROOT = Path("/var/tmp/hpcagent-slurm-tests")
TEMPLATE = "#!/bin/bash\n#SBATCH --output=/dev/null\ntrue\n"


def _slurm_ready() -> str:
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0 or not res.stdout.strip():
        return f"Slurm not answering (tests/slurm/cluster.sh up): {res.stderr.strip()[:200]}"
    return ""


@pytest.mark.parametrize("fairness", [False, True])
def test_queue_order(fairness: bool, embedded_server: Any) -> None:
    why = _slurm_ready()
    if why:
        pytest.skip(why)
    server = embedded_server
    work = WORK_ROOT / f"order-{fairness}-{time.time_ns()}"
    work.mkdir(parents=True, mode=0o777)
    tmpl = work / "t.template"
    tmpl.write_text(TEMPLATE)
    conf = work / "clearml.conf"
    conf.write_text(
        json.dumps(
            {
                "api": {
                    "api_server": server.url,
                    "credentials": {
                        "access_key": server.access_key,
                        "secret_key": server.secret_key,
                    },
                },
                "slurm": {"state_dir": str(work / "state")},
            }
        )
    )
    queue_of: dict[str, str] = {}
    names = [f"prio{i}-{work.name}" for i in range(3)]
    for name in names:
        qid = server.send("queues.create", {"name": name})["id"]
        for j in range(2):
            tid = server.send("tasks.create", {"name": f"{name}-{j}", "type": "training"})["id"]
            server.send("tasks.enqueue", {"task": tid, "queue": qid})
            queue_of[str(tid)] = name
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "SLURM_"))}
    argv = [
        sys.executable, "-c", "from hpcagent.cli import slurm_main; slurm_main()",
        "--config-file", str(conf), "--scheduler", "slurm", "--template-files", str(tmpl),
        "--queue", *names, *(["--order-fairness"] if fairness else []),
    ]  # fmt: skip
    with (work / "submitter.log").open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    try:
        deadline = time.monotonic() + 90
        jobs: dict[str, int] = {}
        while time.monotonic() < deadline and len(jobs) < len(queue_of):
            for tid in queue_of:
                task = server.send("tasks.get_by_id", {"task": tid})["task"]
                props = (task.get("hyperparams") or {}).get("properties") or {}
                job = (props.get("slurm-job-id") or {}).get("value")
                if job:
                    jobs[tid] = int(job)
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert len(jobs) == len(queue_of), (work / "submitter.log").read_text()[-3000:]
    order = [queue_of[t] for t in sorted(jobs, key=jobs.__getitem__)]
    if fairness:
        assert order == [names[0], names[1], names[2]] * 2
    else:
        assert order == [names[0], names[0], names[1], names[1], names[2], names[2]]
