"""The variable model: every documented variable resolves; entity fields are {id, name}.

Names of projects, parent tasks and queues come from the real embedded server through
``api_fetch``, cached per pull round (one call per entity and round, not per placeholder
or task). ``hpcagent-slurm`` checks its templates before it takes any task: exit 7 with
file:line:column, the task still queued.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import SLURM_MAIN, clean_env, write_server_conf

from hpcagent.api import ApiClient
from hpcagent.scheduler.local import LocalScheduler
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.loop import Submitter
from hpcagent.submitter.options import QueueRef, SubmitterOptions
from hpcagent.templating import NameCache, RenderContext, api_fetch, render_string

MODEL_TEMPLATE = """#!/bin/bash
# ${CLEARML_TASK.project.name} ${CLEARML_TASK.parent.name}
echo ${CLEARML_QUEUE_NAME} ${CLEARML_QUEUE_ID} ${CLEARML_WORKER_ID}
echo ${CLEARML_TASK.id} ${CLEARML_TASK.name}
echo ${CLEARML_TASK.project} ${CLEARML_TASK.project.id} ${CLEARML_TASK.project.name}
echo ${CLEARML_PROJECT_ID} ${CLEARML_PROJECT_NAME}
echo ${CLEARML_TASK.parent.id} ${CLEARML_TASK.parent.name:none}
echo ${CLEARML_TASK.execution.queue.id} ${CLEARML_TASK.execution.queue.name}
echo ${CLEARML_TASK.script.branch} ${CLEARML_TASK.container.image}
echo ${CLEARML_TASK.hyperparams.properties.user_key.value:dflt} ${CLEARML_TASK.tags}
: ${CLEARML_AGENT_EXECUTE}
"""


def test_every_documented_variable_resolves() -> None:
    task = {
        "id": "t1",
        "name": "resnet50 (lr 0.1)",
        "project": "p1",
        "parent": "t0",
        "execution": {"queue": "q1"},
        "script": {"branch": "main"},
        "container": {"image": "python:3.11"},
        "tags": ["a", "b"],
        "hyperparams": {},
    }
    names = {("project", "p1"): "My Project", ("task", "t0"): "base", ("queue", "q1"): "gpu"}
    ctx = RenderContext(
        task=task,
        queue_name="gpu",
        queue_id="q1",
        worker_id="login:w",
        agent_execute="run",
        names=lambda kind, eid: names.get((kind, eid)),
    )
    lines = render_string(MODEL_TEMPLATE, ctx, "m.template").splitlines()
    assert lines[1:10] == [
        "# My Project base",
        "echo gpu q1 login:w",
        "echo t1 'resnet50 (lr 0.1)'",
        "echo p1 p1 'My Project'",
        "echo p1 'My Project'",
        "echo t0 base",
        "echo q1 gpu",
        "echo main python:3.11",
        "echo dflt a,b",
    ]


def test_task_without_project_or_properties() -> None:
    """The seed's header comments render for a bare task; a missing name takes its default."""
    text = "# ${CLEARML_TASK.project.id} ${CLEARML_TASK.hyperparams.properties.k.value}\n"
    text += "echo ${CLEARML_TASK.project.name:none}\n"
    out = render_string(text, RenderContext(task={"id": "t"}), "b.template")
    assert out == "#  \necho none\n"


def test_name_cache_one_fetch_per_entity_and_round() -> None:
    calls: list[tuple[str, str]] = []

    def fetch(kind: str, eid: str) -> str | None:
        calls.append((kind, eid))
        if eid == "bad":
            raise RuntimeError("server down")
        return eid.upper()

    cache = NameCache(fetch)
    assert [cache("project", "p"), cache("project", "p"), cache("queue", "p")] == ["P", "P", "P"]
    assert cache("project", "bad") is None
    assert cache("project", "bad") is None
    assert calls == [("project", "p"), ("queue", "p"), ("project", "bad")]
    cache.new_round()
    cache("project", "p")
    assert calls[-1] == ("project", "p")
    assert len(calls) == 4


def test_api_fetch_against_the_server(client: ApiClient) -> None:
    pid = str(client.send("projects.create", {"name": "proj ü", "description": ""})["id"])
    qid = str(client.send("queues.create", {"name": "queue-x"})["id"])
    tid = str(client.send("tasks.create", {"name": "base", "type": "training"})["id"])
    fetch = api_fetch(client.send)
    assert fetch("project", pid) == "proj ü"
    assert fetch("queue", qid) == "queue-x"
    assert fetch("task", tid) == "base"
    assert fetch("project", "0" * 32) is None


def test_submitter_resolves_names_once_per_round(
    tmp_path: Path, client: ApiClient, embedded_server: Any
) -> None:
    pid = str(client.send("projects.create", {"name": "vision", "description": ""})["id"])
    qid = str(client.send("queues.create", {"name": "queue-m"})["id"])
    tids = []
    for i in range(3):
        body = {"name": f"task {i}", "type": "training", "project": pid}
        tids.append(str(client.send("tasks.create", body)["id"]))
        client.send("tasks.enqueue", {"task": tids[-1], "queue": qid})
    tmpl = tmp_path / "m.template"
    tmpl.write_text(
        "#!/bin/bash\n# project ${CLEARML_TASK.project.name}\n"
        "echo ${CLEARML_PROJECT_NAME} ${CLEARML_TASK.execution.queue.name}\n"
        ": ${CLEARML_AGENT_EXECUTE}\n"
    )
    opts = SubmitterOptions(
        queues=[QueueRef(qid, "queue-m", tmpl)],
        state_dir=tmp_path / "state",
        worker_id="test:w",
        hpcagent_argv=[sys.executable, "-c", "pass"],
    )
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    sched = LocalScheduler(output_dir=tmp_path / "out")
    s = Submitter(client, sched, ledger, opts, lambda p, d=None: d)
    try:
        s.start()
        assert s.pull() == 3
        for tid in tids:
            entry = ledger.get(tid)
            assert entry is not None
            script = Path(str(entry.script_path)).read_text()
            assert "# project vision\necho vision queue-m\n" in script
        assert s.names.fetches == 2  # the project and the queue, once for the three tasks
    finally:
        s.shutdown()
        ledger.close()


def test_slurm_refuses_bad_template_at_start(tmp_path: Path, embedded_server: Any) -> None:
    server = embedded_server
    conf = write_server_conf(tmp_path / "clearml.conf", server, slurm={"state_dir": str(tmp_path)})
    qid = server.send("queues.create", {"name": "startq"})["id"]
    tid = server.send("tasks.create", {"name": "xyz", "type": "training"})["id"]
    server.send("tasks.enqueue", {"task": tid, "queue": qid})
    tmpl = tmp_path / "typo.template"
    tmpl.write_text('#!/bin/bash\nbash -c "echo ${CLEARML_TASK.name}"\n${CLEARML_AGENT_EXECUT}\n')
    argv = [*SLURM_MAIN, "--config-file", str(conf), "--scheduler", "local"]
    res = subprocess.run(
        [*argv, "--template-files", str(tmpl), "--queue", "startq"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert res.returncode == 7, res.stderr
    assert f"{tmpl}:2:15: placeholder ${{CLEARML_TASK.name}}: sits in" in res.stderr
    assert f"{tmpl}:3:1: placeholder ${{CLEARML_AGENT_EXECUT}}: unknown name" in res.stderr
    assert "did you mean ${CLEARML_AGENT_EXECUTE}?" in res.stderr
    assert server.send("queues.get_num_entries", {"queue": qid})["num"] == 1
    task = server.send("tasks.get_by_id", {"task": tid})["task"]
    assert task["status"] == "queued"


def test_names_are_asked_only_when_used() -> None:
    calls: list[tuple[str, str]] = []
    ctx = RenderContext(
        task={"id": "t", "name": "n", "project": "p", "execution": {"queue": "q"}},
        agent_execute="run",
        names=lambda kind, eid: calls.append((kind, eid)) or "N",
    )
    seed = (
        Path(__file__).resolve().parents[2] / "templates" / "slurm.example.template"
    ).read_text()
    render_string(seed, ctx, "example.template")  # .project.id: from the task itself
    assert calls == []
    render_string("# ${CLEARML_PROJECT_NAME} ${CLEARML_TASK.execution.queue.name}\n", ctx, "n")
    assert calls == [("project", "p"), ("queue", "q")]
