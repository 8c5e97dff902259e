"""``srun singularity exec ${CLEARML_AGENT_EXECUTE}`` in a real Slurm job (one-host cluster).

The seed's Singularity template form with ``srun`` in front, rendered by ``hpcagent-slurm
--singularity-mode --dry-run`` and submitted with ``sbatch``; ``singularity`` is the apptainer
STAND-IN (tests/fakes/apptainer-standin, over bubblewrap). The shim on PATH survives ``srun``,
so the executor runs on the node inside the step and drives the container.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from test_container_e2e import bwrap, rootfs  # noqa: F401 - fixtures
from test_container_submitter import (  # noqa: F401 - helpers and the world fixture
    _log,
    _slurm_argv,
    _status,
    _task,
    dry_run,
    world,
)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.timeout(1800)]

SRUN_TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --ntasks=1
#SBATCH --time=00:10:00

${CLEARML_PRE_SETUP}

srun singularity exec --writable-tmpfs ${CLEARML_AGENT_EXECUTE}
"""


def test_srun_singularity_exec_under_sbatch(
    world: dict[str, Any],  # noqa: F811
    rootfs: Path,  # noqa: F811
    bwrap: str,  # noqa: F811
) -> None:
    h.require_slurm()
    server = world["server"]
    world["template"].write_text(SRUN_TEMPLATE)
    task_id = _task(server, str(rootfs))
    out = dry_run(world)
    assert f"srun singularity exec --writable-tmpfs {rootfs} env " in out
    script = world["tmp"] / "job.sh"
    script.write_text("\n".join(x for x in out.splitlines() if not x.startswith("# next")) + "\n")
    output = world["tmp"] / "slurm-%j.out"
    sub = subprocess.run(
        ["sbatch", "--parsable", f"--output={output}", str(script)],
        env=world["env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 600
    while _status(server, task_id) not in ("completed", "failed", "stopped"):
        assert time.monotonic() < deadline, "the job did not finish the task"
        time.sleep(1)
    job_out = Path(str(output).replace("%j", job_id))
    detail = job_out.read_text()[-3000:] if job_out.exists() else "(no job output)"
    assert _status(server, task_id) == "completed", detail
    lines = _log(server, task_id)
    assert f"inside container {rootfs}" in lines
    runtime = server.send("tasks.get_by_id", {"task": task_id})["task"].get("runtime") or {}
    assert str(runtime.get("job_id")) == job_id  # the executor ran inside the job
