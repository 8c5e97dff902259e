"""A task run by ``hpcagent execute --id`` inside a real Slurm job (one-host cluster).

Needs ``tests/slurm/cluster.sh up``; skipped with the reason when Slurm does not answer.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    create_task,
    get_task,
    make_repo,
    make_wheelhouse,
    require_slurm,
    task_log_lines,
    wait_for,
    write_conf,
)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


def test_task_runs_under_sbatch(tmp_path: Path, embedded_server: Any) -> None:
    require_slurm()
    server = embedded_server
    bare, sha, diff = make_repo(tmp_path / "git")
    wheels = make_wheelhouse(tmp_path / "wheels")
    conf = write_conf(tmp_path / "clearml.conf", server, tmp_path, wheels)
    task_id = create_task(
        server,
        name="under-slurm",
        script={
            "repository": str(bare),
            "version_num": sha,
            "entry_point": "train.py",
            "diff": diff,
            "requirements": {"pip": "hpca-tiny==1.0"},
        },
        args={"lr": "0.2", "epochs": "7"},
    )
    hpcagent = shlex.join([sys.executable, "-c", "from hpcagent.cli import main; main()"])
    script = tmp_path / "job.sh"
    out = tmp_path / "slurm-%j.out"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --job-name=clearml_task_{task_id}\n"
        f"#SBATCH --output={out}\n"
        "#SBATCH --time=00:10:00\n"
        f"export CLEARML_CONFIG_FILE={shlex.quote(str(conf))}\n"
        "unset CLEARML_WORKER_ID\n"
        f"cd {shlex.quote(str(tmp_path))}\n"
        f"{hpcagent} execute --id {task_id}\n"
    )
    res = subprocess.run(
        ["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]
    try:
        wait_for(
            lambda: get_task(server, task_id)["status"] in ("completed", "failed", "stopped"),
            timeout=300,
            interval=1.0,
        )
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    task = get_task(server, task_id)
    job_out = Path(str(out).replace("%j", job_id))
    assert task["status"] == "completed", job_out.read_text() if job_out.exists() else task
    assert task["runtime"].get("job_id") == job_id
    assert str(task.get("last_worker") or "").endswith(f":slurm-{job_id}")
    assert "lr=0.2 epochs=7 verbose=False tiny=tiny-ok mark=patched" in task_log_lines(
        server, task_id
    )
    # the job's own output keeps the task's output too
    wait_for(job_out.exists, timeout=30)
    time.sleep(1)
    assert "mark=patched" in job_out.read_text()
