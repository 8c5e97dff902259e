"""ClearML pipelines with their steps on the one-host Slurm (issue 21): the official SDK makes
the pipeline as a user does (a script run on the user's machine), the controller runs on the
embedded server's services agent (``hpcagent server --services-agent``: a services-mode
``hpcagent daemon``) and every step is a Slurm job submitted by ``hpcagent-slurm``. Data
passes between steps as artifacts through the server's ``/files``, or through a shared
``file://`` folder (the decorator pipeline's steps run on a second queue whose submitter is
configured so).

Each test runs one pipeline of tiny steps: a controller from existing tasks with parameter
overrides and the step cache (a second run reuses the unchanged step only), the worked example
of docs/pipelines.md as written (a list and a dict between function steps), a decorator
pipeline, and a controller whose step fails (it ends ``failed``, never turned ``completed``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from sdk_tier import SLURM_TEMPLATE, WHEELHOUSE, download_wheels

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("completed", "failed", "stopped")
PROJECT = "pipelines e2e ü"


@dataclass
class Rig:
    """The server (with its services agent), the submitters and the user's side."""

    root: Path
    server: Any
    user_conf: Path
    shared: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def user_env(self) -> dict[str, str]:
        env = h.clean_env()
        env.update(CLEARML_CONFIG_FILE=str(self.user_conf), HOME=str(self.root / "user-home"))
        return env

    def user_python(self, script: str, *args: str, name: str = "run.py") -> str:
        """Run ``script`` as the user does (``python run.py``) in a fresh folder; its output."""
        work = self.root / f"user-{len(list(self.root.glob('user-*')))}"
        work.mkdir()
        (work / name).write_text(script)
        res = subprocess.run(
            [sys.executable, name, *args], cwd=work, env=self.user_env(),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout + res.stderr

    def sdk_value(self, task_id: str, artifact: str) -> Any:
        """The artifact ``artifact`` of the task, as the SDK gets it (downloaded, unpickled)."""
        code = (
            "import json, sys\nfrom clearml import Task\n"
            "value = Task.get_task(task_id=sys.argv[1]).artifacts[sys.argv[2]].get()\n"
            "print('RESULT ' + json.dumps(value))\n"
        )
        out = self.user_python(code, task_id, artifact, name="read.py")
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert line, out
        return json.loads(line[-1][len("RESULT ") :])

    def task(self, task_id: str) -> dict[str, Any]:
        return h.get_task(self.server, task_id)

    def find(self, **query: Any) -> list[dict[str, Any]]:
        fields = ["id", "name", "status", "parent", "type", "runtime", "hyperparams", "execution"]
        body = {"only_fields": fields, **query}
        return list(self.server.send("tasks.get_all", body)["tasks"])

    def pipeline_state(self, controller_id: str) -> dict[str, Any]:
        """The DAG the controller last recorded (its configuration ``Pipeline``, which the
        UI draws): each node with the ``job_id`` of the task it ran, or the cached one."""
        config = self.task(controller_id)["configuration"]["Pipeline"]
        return dict(json.loads(config["value"]))

    def controller(self, name: str) -> dict[str, Any]:
        found = self.find(name=f"^{re.escape(name)}$", type=["controller"])
        assert len(found) == 1, found
        return found[0]

    def steps(self, controller_id: str) -> dict[str, dict[str, Any]]:
        """The step tasks this controller created, by name."""
        return {t["name"]: t for t in self.find(parent=controller_id)}

    def diagnostics(self, task_id: str) -> str:
        parts = [json.dumps(self.task(task_id), default=str)[:3000]]
        parts.append("\n".join(h.task_log_lines(self.server, task_id)[-60:]))
        agent_log = self.server.data_dir / "services-agent" / "daemon.log"
        for log in [*self.logs, agent_log]:
            if log.exists():
                parts.append(f"--- {log.name} ---\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def wait(self, task_id: str, timeout: float = 900) -> str:
        """Wait for the task's final status; fail with its log and the daemons' logs."""
        try:
            h.wait_for(lambda: self.task(task_id)["status"] in FINAL, timeout, 1.0)
        except AssertionError:
            raise AssertionError(self.diagnostics(task_id)) from None
        return str(self.task(task_id)["status"])

    def completed(self, task_id: str) -> None:
        status = self.wait(task_id)
        assert status == "completed", self.diagnostics(task_id)


def _agent_conf(rig_root: Path, server: Any, wheelhouse: Path, name: str, **api: Any) -> Path:
    """An executor configuration: caches under the rig, offline venvs from the wheelhouse."""
    conf = h.write_conf(
        rig_root / f"{name}.conf", server, rig_root / "executor-caches", wheelhouse,
        package_manager={"type": "uv", "extra_args": ["--no-index", "--find-links",
                                                      str(wheelhouse)]},
    )  # fmt: skip
    data = json.loads(conf.read_text())
    data["api"].update({"files_server": server.url + "/files", "web_server": server.url, **api})
    conf.write_text(json.dumps(data))
    return conf


@pytest.fixture(scope="module")
def rig(embedded_server_class: Any) -> Iterator[Rig]:
    h.require_slurm()
    root = h.slurm_workdir("pipelines")
    wheelhouse = download_wheels(WHEELHOUSE.expanduser())
    server = embedded_server_class(root / "server-data", extra_args=["--log-level", "info"])
    server.extra_args += ["--services-agent", "4"]
    server.env = {"CLEARML_CONFIG_FILE": str(_agent_conf(root, server, wheelhouse, "services"))}
    shared = root / "shared-artifacts"
    shared.mkdir(mode=0o777)
    user_conf = root / "user-clearml.conf"
    sdk = {"development": {"vcs_repo_detect_async": False}}
    api = {**h.api_section(server), "web_server": server.url, "files_server": server.url + "/files"}
    user_conf.write_text(json.dumps({"api": api, "sdk": sdk}))
    rig = Rig(root, server, user_conf, shared)
    server.start()
    try:
        template = root / "pipeline.template"
        template.write_text(SLURM_TEMPLATE)
        queues = {"cpu": {}, "cpu-shared": {"files_server": shared.as_uri()}}
        for queue, api_extra in queues.items():
            conf = _agent_conf(root, server, wheelhouse, queue, **api_extra)
            data = json.loads(conf.read_text())
            data["slurm"] = {"state_dir": str(root / f"state-{queue}")}
            conf.write_text(json.dumps(data))
            server.send("queues.create", {"name": queue})
            log = root / f"submitter-{queue}.log"
            argv = [
                *h.SLURM_MAIN, "--config-file", str(conf), "--scheduler", "slurm",
                "--poll-interval", "1", "--template-files", str(template), "--queue", queue,
            ]  # fmt: skip
            rig.procs.append(h.start_logged(argv, log, cwd=root, env=h.clean_env()))
            rig.logs.append(log)
        h.wait_for(lambda: server.send("queues.get_all", {"name": "^services$"})["queues"], 60)
        yield rig
    finally:
        for proc in rig.procs:
            h.stop_process(proc)
        server.stop(timeout=180)


# -- a controller from existing tasks, with parameter overrides and the step cache ----------

STEP_PY = """\
import argparse

from clearml import Task

task = Task.init(project_name=PROJECT, task_name="step base")
p = argparse.ArgumentParser()
p.add_argument("--x", type=int, default=0)
a = p.parse_args()
print(f"STEP x={a.x}", flush=True)
task.upload_artifact("square", {"x": a.x, "square": a.x * a.x}, wait_on_upload=True)
"""

CONTROLLER_PY = """\
from clearml import PipelineController

pipe = PipelineController(name="cached pipeline", project=PROJECT, version="1.0.0")
pipe.set_default_execution_queue("cpu")
pipe.add_parameter("x_b", 2)
for name, x in (("step a", "1"), ("step b", "${pipeline.x_b}")):
    pipe.add_step(
        name=name, base_task_project=PROJECT, base_task_name="step base",
        parameter_override={"Args/x": x}, cache_executed_step=True,
    )
pipe.start(queue="services")
"""


def _with_project(code: str) -> str:
    return f"PROJECT = {PROJECT!r}\n" + code


def test_controller_from_tasks_overrides_and_reuses_the_unchanged_step_only(rig: Rig) -> None:
    out = rig.user_python(_with_project(STEP_PY), "--x", "0")
    assert "STEP x=0" in out
    rig.user_python(_with_project(CONTROLLER_PY))
    first = rig.controller("cached pipeline")
    rig.completed(first["id"])
    run1 = rig.steps(first["id"])
    assert sorted(run1) == ["step a", "step b"], run1
    for name, x in (("step a", 1), ("step b", 2)):
        step = run1[name]
        assert step["status"] == "completed", rig.diagnostics(step["id"])
        assert step["hyperparams"]["Args"]["x"]["value"] == str(x)  # the override arrived
        assert rig.sdk_value(step["id"], "square") == {"x": x, "square": x * x}
        assert step["runtime"].get("job_scheduler") == "slurm", step["runtime"]

    # run it again as the UI does: clone the controller, change one pipeline parameter
    second = str(rig.server.send("tasks.clone", {"task": first["id"]})["id"])
    override = {"section": "Args", "name": "x_b", "value": "3"}
    rig.server.send("tasks.edit_hyper_params", {"task": second, "hyperparams": [override]})
    rig.server.send("tasks.enqueue", {"task": second, "queue_name": "services"})
    rig.completed(second)
    run2 = rig.steps(second)
    assert sorted(run2) == ["step b"], run2  # only the changed step ran again
    rerun = run2["step b"]
    assert rerun["id"] != run1["step b"]["id"]
    assert rerun["hyperparams"]["Args"]["x"]["value"] == "3"
    assert rig.sdk_value(rerun["id"], "square") == {"x": 3, "square": 9}
    # ... and "step a" is the first run's task (the cache found it by its hash), nothing else
    all_a = rig.find(name="^step a$")
    assert [t["id"] for t in all_a] == [run1["step a"]["id"]], all_a
    executed = {name: node["job_id"] for name, node in rig.pipeline_state(second).items()}
    assert executed == {"step a": run1["step a"]["id"], "step b": rerun["id"]}, executed


# -- the worked example of docs/pipelines.md, as written --------------------------------------

DOC_EXAMPLE = re.compile(r"<!-- pipeline example[^\n]*-->\n```python\n(.*?)^```", re.S | re.M)


def test_the_docs_function_pipeline_passes_a_list_and_a_dict(rig: Rig) -> None:
    blocks = DOC_EXAMPLE.findall((ROOT / "docs" / "pipelines.md").read_text(encoding="utf-8"))
    assert len(blocks) == 1, "docs/pipelines.md marks its worked example once"
    rig.user_python(blocks[0], name="pipeline.py")
    controller = rig.controller("sum pipeline")
    rig.completed(controller["id"])
    steps = rig.steps(controller["id"])
    assert sorted(steps) == ["make", "total"], steps
    make = steps["make"]
    arts = {a["key"]: a["uri"] for a in make["execution"]["artifacts"]}
    assert set(arts) >= {"data", "meta"}, arts
    assert all(u.startswith(rig.server.url + "/files/") for u in arts.values()), arts
    assert rig.sdk_value(make["id"], "data") == [0, 1, 2, 3]
    result = rig.sdk_value(steps["total"]["id"], "result")
    assert result == {"total": 6 + 4, "label": "naïve 'quoted'"}


# -- a decorator pipeline, its artifacts on a shared file:// folder ---------------------------

DECORATOR_PY = """\
from clearml import PipelineDecorator


@PipelineDecorator.component(return_values=["items"], execution_queue="cpu-shared")
def produce(n):
    return [{"i": i, "square": i * i} for i in range(int(n))]


@PipelineDecorator.component(return_values=["summary"], execution_queue="cpu-shared")
def summarise(items):
    return {"count": len(items), "total": sum(x["square"] for x in items)}


@PipelineDecorator.pipeline(
    name="decorated pipeline", project=PROJECT, version="1.0.0",
    pipeline_execution_queue="services",
)
def run(n=3):
    summary = summarise(produce(n))
    print("SUMMARY", summary["count"], summary["total"])


if __name__ == "__main__":
    run(n=4)
"""


def test_decorator_pipeline_with_a_shared_filesystem_files_server(rig: Rig) -> None:
    rig.user_python(_with_project(DECORATOR_PY))
    controller = rig.controller("decorated pipeline")
    rig.completed(controller["id"])
    steps = rig.steps(controller["id"])
    assert sorted(steps) == ["produce", "summarise"], steps
    for step in steps.values():
        assert step["status"] == "completed"
        for art in step["execution"]["artifacts"]:  # copies in the shared folder, no /files
            assert art["uri"].startswith(rig.shared.as_uri()), art
    assert rig.sdk_value(steps["summarise"]["id"], "summary") == {"count": 4, "total": 14}
    log = h.task_log_lines(rig.server, controller["id"])
    assert any("SUMMARY 4 14" in line for line in log), log[-40:]


# -- a controller whose step fails ends failed -------------------------------------------------

FAILING_PY = """\
from clearml import PipelineController


def boom(n):
    raise RuntimeError(f"step fails on purpose ({n})")


pipe = PipelineController(name="failing pipeline", project=PROJECT, version="1.0.0")
pipe.set_default_execution_queue("cpu")
pipe.add_function_step(name="boom", function=boom, function_kwargs={"n": 1},
                       function_return=["never"])
pipe.start(queue="services")
"""


def test_a_controller_whose_step_fails_ends_failed(rig: Rig) -> None:
    rig.user_python(_with_project(FAILING_PY))
    controller = rig.controller("failing pipeline")
    assert rig.wait(controller["id"]) == "failed", rig.diagnostics(controller["id"])
    step = rig.steps(controller["id"])["boom"]
    assert step["status"] == "failed"
    assert any("step fails on purpose" in ln for ln in h.task_log_lines(rig.server, step["id"]))
    # the executor ends after the SDK marked the controller failed (it sees the status and
    # stops the script, or the script exits first): either way it leaves that status
    notes = ("status left as set elsewhere", "the task set its own final status (failed)")

    def executor_done() -> bool:
        lines = h.task_log_lines(rig.server, controller["id"])
        return any(note in ln for ln in lines for note in notes)

    h.wait_for(executor_done, 120, 1.0)
    assert rig.task(controller["id"])["status"] == "failed", rig.diagnostics(controller["id"])
