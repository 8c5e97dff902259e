"""Rendered templates against the real one-host Slurm.

* The seed's example template runs unchanged (``--priority=5`` included) and its job
  really runs the rendered ``${CLEARML_AGENT_EXECUTE}``.
* Adversarial task values: every rendered script passes ``sbatch --test-only``; held
  jobs show exactly the job name, time limit and output file the template sets (a value
  in an ``#SBATCH`` line cannot add or change a directive); jobs that run never execute
  anything the value carries (no marker file) and print it back unchanged.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import SLURM_WORK_ROOT, require_slurm, slurm_workdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcagent.errors import TemplateError
from hpcagent.templating import RenderContext, render_file, render_string

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
WORK = SLURM_WORK_ROOT / "templates"

ADVERSARIAL = [
    "$(touch {m})",
    "`touch {m}`",
    "'; touch {m}; '",
    '"; touch {m}; "',
    "a\n#SBATCH --output={m}",
    "--wrap=touch {m}",
    "x --wrap='touch {m}'",
    "#SBATCH --output={m}",
    "%j %x %u",
    "nice-name_1.2",
    "tail # comment",
]

TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=${CLEARML_QUEUE_NAME}-%j.out
#SBATCH --comment=${CLEARML_TASK.name|slug}
#SBATCH --time=${CLEARML_TASK.hyperparams.properties.time.value:00:02:00}
printf '%s\\n' ${CLEARML_TASK.name}
printf '%s\\n' "${CLEARML_TASK.name}"
${CLEARML_AGENT_EXECUTE}
"""


@pytest.fixture(autouse=True)
def _need_slurm() -> None:
    require_slurm()


def _sbatch(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sbatch", "--parsable", *args, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=script.parent,
    )


def _job_field(job_id: str, field: str) -> str:
    res = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
    )
    for word in res.stdout.split(f" {field}=")[1:2]:
        return word.split(" ", 1)[0] if field != "Comment" else word.split(" StdErr=")[0]
    return ""


def _wait_done(job_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
            capture_output=True,
            text=True,
            timeout=30,
        )
        state = res.stdout.strip().split(" ")[0]
        if state and state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def _ctx(task: dict[str, Any], agent: str) -> RenderContext:
    return RenderContext(task=task, queue_name="q1", agent_execute=agent)


def test_seed_example_runs_unchanged() -> None:
    work = slurm_workdir("seed", WORK)
    task = {"id": "0123456789abcdef0123456789abcdef", "name": "seed", "hyperparams": {}}
    text = render_file(ROOT / "templates" / "slurm.example.template", _ctx(task, "echo AGENT_RAN"))
    script = work / "job.sh"
    script.write_text(text)
    res = _sbatch(script)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    assert _wait_done(job) == "COMPLETED"
    out = (work / f"task-{task['id']}-{job}.log").read_text()
    assert "AGENT_RAN" in out
    assert "whoami " in out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.one_of(st.sampled_from(ADVERSARIAL), st.text(max_size=20)))
def test_adversarial_values_through_sbatch(name: str) -> None:
    work = slurm_workdir("adv", WORK)
    marker = work / "INJECTED"
    name = name.replace("{m}", str(marker))
    task = {"id": "abcdef0123456789abcdef0123456789", "name": name, "hyperparams": {}}
    try:
        text = render_string(TEMPLATE, _ctx(task, "echo AGENT_RAN"), "adv.template")
    except TemplateError:
        assert any((ord(c) < 32 and c not in "\t\n") or c == "\x7f" for c in name)
        return
    script = work / "job.sh"
    script.write_text(text)
    test_only = subprocess.run(
        ["sbatch", "--test-only", str(script)], capture_output=True, text=True, cwd=work, timeout=60
    )
    assert test_only.returncode == 0, test_only.stderr
    res = _sbatch(script, "--hold")
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    try:
        assert _job_field(job, "JobName") == "clearml_task_" + task["id"]
        assert _job_field(job, "TimeLimit") == "00:02:00"
        assert _job_field(job, "StdOut") == f"{work}/q1-{job}.out"
        subprocess.run(["scontrol", "release", job], capture_output=True, timeout=30, check=True)
        assert _wait_done(job) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    assert not marker.exists()
    out = (work / f"q1-{job}.out").read_text()
    flat = name.replace("\n", "")  # ClearML's default filter removes newlines
    assert out == f"{flat}\n{flat}\nAGENT_RAN\n"
