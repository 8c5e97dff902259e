"""Real task names through the seed's template and real sbatch (one-host Slurm).

* ``hpcagent-slurm --template-files example`` (the seed's ClearML example, verbatim, header
  comments included) runs tasks named ``resnet50 (lr 0.1)``, ``it's "quoted"``,
  ``эксперимент №1``, a 300-character name, and one task without any properties: every task
  completes, run by the real executor in a real job.
* Free text in ``#SBATCH`` lines: sbatch reads back exactly the name (``scontrol show job``
  shows it as the job's comment and name), unquoted, in the template's double quotes and in
  its single quotes; adversarial names too (property test through the real sbatch).
* A non-number for ``--nodes`` fails the task before sbatch, naming placeholder and value.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcagent.errors import TemplateError
from hpcagent.submitter.options import job_name
from hpcagent.templating import RenderContext, render_string

pytestmark = [pytest.mark.slurm]

LONG = ("long name " * 30)[:300]
NAMES = ["resnet50 (lr 0.1)", 'it\'s "quoted"', "эксперимент №1", LONG]

FREE_TEXT = """#!/bin/bash
# task ${CLEARML_TASK.name} of ${CLEARML_TASK.project.id}
#SBATCH --job-name=${CLEARML_TASK.name}
#SBATCH --comment=${CLEARML_TASK.name}
#SBATCH --output=out-%j.log
#SBATCH --time=00:02:00
printf '%s\\n' ${CLEARML_TASK.name}
${CLEARML_AGENT_EXECUTE}
"""
QUOTED = FREE_TEXT.replace(
    "--comment=${CLEARML_TASK.name}", '--comment="x ${CLEARML_TASK.name} y"'
).replace("--job-name=${CLEARML_TASK.name}", "--job-name='${CLEARML_TASK.name}'")


SPACED = FREE_TEXT.replace("--job-name=", "-J ").replace("--comment=", "--comment ")


def _scontrol(job: str) -> dict[str, str]:
    """JobName and Comment from ``scontrol show job -o`` (scontrol ends its Comment field
    with a space, so two spaces come before StdErr)."""
    res = subprocess.run(
        ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30
    )
    line = res.stdout.strip()
    out: dict[str, str] = {}
    for key, nxt in (("JobName", " UserId="), ("Comment", "  StdErr=")):
        if f" {key}=" in line or line.startswith(f"{key}="):
            out[key] = line.split(f"{key}=", 1)[1].split(nxt)[0]
    return out


def _submit_held(script: str, work: Path) -> str:
    path = work / "job.sh"
    path.write_text(script, encoding="utf-8")
    res = subprocess.run(
        ["sbatch", "--parsable", "--hold", str(path)],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _render(template: str, name: str) -> str:
    task = {"id": "f" * 32, "name": name, "project": "p" * 32}
    return render_string(template, RenderContext(task=task, agent_execute="true"), "n.template")


@pytest.fixture(autouse=True)
def _need_slurm() -> None:
    h.require_slurm()


@pytest.mark.parametrize("template", [FREE_TEXT, QUOTED, SPACED], ids=["plain", "quoted", "spaced"])
@pytest.mark.parametrize("name", NAMES, ids=["parens", "quotes", "cyrillic", "long300"])
def test_scontrol_shows_the_exact_name(template: str, name: str) -> None:
    work = h.slurm_workdir("names")
    job = _submit_held(_render(template, name), work)
    try:
        shown = _scontrol(job)
        comment = f"x {name} y" if template is QUOTED else name
        assert shown == {"JobName": name, "Comment": comment}
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.one_of(
        st.sampled_from(
            ["a # b", "\\", '"', "'", "hetjob", "packjob x", 'HETJOB "x', ":x", "-J x", "%j %x"]
        ),
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
            min_size=1,
            max_size=30,
        ),
    )
)
@pytest.mark.parametrize("template", [FREE_TEXT, SPACED], ids=["plain", "spaced"])
def test_adversarial_names_read_back_by_sbatch(template: str, name: str) -> None:
    work = h.slurm_workdir("names-adv")
    job = _submit_held(_render(template, name), work)
    try:
        shown = _scontrol(job)
        assert shown["Comment"] == name
        assert shown["JobName"] == name
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)


def test_numeric_option_with_text_fails_before_sbatch() -> None:
    text = "#!/bin/bash\n#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.n.value:1}\n"
    task = {"id": "t", "name": "x", "hyperparams": {"properties": {"n": {"value": "two"}}}}
    with pytest.raises(TemplateError) as info:
        render_string(text, RenderContext(task=task), "n.template")
    assert str(info.value).startswith(
        "n.template:2:17: placeholder ${CLEARML_TASK.hyperparams.properties.n.value:1}: "
        "value 'two' is not valid for --nodes"
    )


class SeedRig(h.SubmitterRig):
    """Embedded server + hpcagent-slurm with the built-in ``example`` template + executor."""

    def __init__(self, work: Path, server: Any) -> None:
        self.queue = f"seed-{work.name}"
        self.qid = str(server.send("queues.create", {"name": self.queue})["id"])
        self.start(work, server, scheduler="slurm", templates=["example"], queues=[self.queue])

    def enqueue_with_props(self, name: str, props: dict[str, str] | None) -> str:
        body: dict[str, Any] = {
            "name": name,
            "type": "training",
            "script": {
                "entry_point": "noop.py",
                "binary": "python3",
                "diff": "print('ran', flush=True)\n",
                "requirements": {"pip": ""},
            },
        }
        if props is not None:
            body["hyperparams"] = {
                "properties": {
                    k: {"section": "properties", "name": k, "value": v} for k, v in props.items()
                }
            }
        tid = str(self.server.send("tasks.create", body)["id"])
        self.server.send("tasks.enqueue", {"task": tid, "queue": self.qid})
        return tid


@pytest.fixture
def seed(embedded_server: Any) -> Iterator[SeedRig]:
    rig = SeedRig(h.slurm_workdir("seed-names"), embedded_server)
    try:
        yield rig
    finally:
        rig.stop()


@pytest.mark.e2e
def test_seed_template_runs_real_names(seed: SeedRig) -> None:
    tasks = {
        name: seed.enqueue_with_props(name, {"num_nodes": "1", "user_key": f"key of {name}"})
        for name in NAMES
    }
    tasks["no properties"] = seed.enqueue_with_props("no properties", None)
    for name, tid in tasks.items():
        try:
            h.wait_for(
                lambda t=tid: (
                    h.get_task(seed.server, t)["status"] in ("completed", "failed", "stopped")
                ),
                timeout=400,
                interval=1,
            )
        except AssertionError:
            raise AssertionError(seed.log.read_text()[-4000:]) from None
        task = h.get_task(seed.server, tid)
        assert task["status"] == "completed", (name, task.get("status_message"))
        job = task["hyperparams"]["properties"]["job-id"]["value"]
        assert _scontrol(job).get("JobName") == job_name(tid)
        script = (seed.work / "state" / "scripts" / f"{job_name(tid)}.sh").read_text()
        # the server stores a name stripped, as clearml-server does (LONG ends in a space)
        assert task["name"] == name.strip()
        assert f"\n# {task['name']}\n" in script  # the seed's header comment, name unchanged
        key = f"key of {name}" if name != "no properties" else ""
        assert f"\n# {key}\n" in script
        assert "ran" in (seed.work / f"task-{tid}-{job}.log").read_text()
    log = seed.log.read_text()
    assert log.count("user_key.value} has no value") == 1  # one warning, not one per task
