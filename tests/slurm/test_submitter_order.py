"""Three queues on the real Slurm: priority order, and turns with ``--order-fairness``.

Two tasks per queue are enqueued before ``hpcagent-slurm`` starts; the order in which their
jobs were submitted (Slurm job ids grow) must follow the queue order, or go round-robin.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from helpers import (
    SLURM_MAIN,
    clean_env,
    require_slurm,
    slurm_workdir,
    start_logged,
    write_server_conf,
)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
# ":" keeps the executor from running (a template without the block is refused at start).
TEMPLATE = "#!/bin/bash\n#SBATCH --output=/dev/null\n: ${CLEARML_AGENT_EXECUTE}\n"


@pytest.mark.parametrize("fairness", [False, True])
def test_queue_order(fairness: bool, embedded_server: Any) -> None:
    require_slurm()
    server = embedded_server
    work = slurm_workdir(f"order-{fairness}")
    tmpl = work / "t.template"
    tmpl.write_text(TEMPLATE)
    conf = write_server_conf(
        work / "clearml.conf", server, slurm={"state_dir": str(work / "state")}
    )
    queue_of: dict[str, str] = {}
    names = [f"prio{i}-{work.name}" for i in range(3)]
    for name in names:
        qid = server.send("queues.create", {"name": name})["id"]
        for j in range(2):
            tid = server.send("tasks.create", {"name": f"{name}-{j}", "type": "training"})["id"]
            server.send("tasks.enqueue", {"task": tid, "queue": qid})
            queue_of[str(tid)] = name
    argv = [
        *SLURM_MAIN,
        "--config-file", str(conf), "--scheduler", "slurm", "--template-files", str(tmpl),
        "--queue", *names, *(["--order-fairness"] if fairness else []),
    ]  # fmt: skip
    proc = start_logged(argv, work / "submitter.log", cwd=work, env=clean_env())
    try:
        deadline = time.monotonic() + 90
        jobs: dict[str, int] = {}
        while time.monotonic() < deadline and len(jobs) < len(queue_of):
            for tid in queue_of:
                task = server.send("tasks.get_by_id", {"task": tid})["task"]
                props = (task.get("hyperparams") or {}).get("properties") or {}
                job = (props.get("job-id") or {}).get("value")
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
