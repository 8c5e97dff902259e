"""The SDK-made tasks tier (issue 13), shared by tests/e2e/test_sdk_tasks.py (``hpcagent
execute``) and tests/slurm/test_sdk_tasks_slurm.py (real sbatch through ``hpcagent-slurm``).

Each case makes a task as a ClearML user does, offline (local git repositories, a wheelhouse
downloaded once from PyPI), and gives one task to hpcagent and a clone of it to the official
``clearml-agent execute`` (3.0.3, a dev dependency); :func:`compare` asserts that the final
status, the arguments the script saw and the scalars it reported are equal.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import requests
from filelock import FileLock
from helpers import _git, clean_env, get_task, run_execute, task_log_lines, write_conf

#: Wheels for the tasks' venvs (clearml and its dependencies), downloaded once from PyPI.
WHEELHOUSE = Path(os.environ.get("HPCAGENT_TEST_WHEELHOUSE", "~/.cache/hpcagent-tests/sdk-wheels"))
#: The frameworks the SDK auto-logs that AUTOLOG_PY uses (dev dependencies): the task records
#: the versions of the user's venv, which is this one, so the wheelhouse holds those.
FRAMEWORKS = ("matplotlib", "tensorboardX", "joblib")
WHEELS = [
    "clearml==2.1.12",
    "six==1.16.0",
    "pip<22.3",
    *(f"{name}=={importlib.metadata.version(name)}" for name in FRAMEWORKS),
]

BIN = Path(sys.executable).parent

#: The sbatch template of the tiers under Slurm (tests/slurm): one task, the job log in its cwd.
SLURM_TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
#SBATCH --ntasks=1
#SBATCH --time=00:20:00
${CLEARML_PRE_SETUP}
${CLEARML_AGENT_EXECUTE}
${CLEARML_POST_SETUP}
"""

TRAIN_PY = """\
import argparse
import json
import os

from clearml import Task

MARK = "committed"

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--no-cache", dest="cache", action="store_false")
p.add_argument("--verbose", action="store_true")
p.add_argument("--sizes", type=int, nargs="+", default=[1, 2])
p.add_argument("--remote-queue", default="")
p.add_argument("--fail-itself", action="store_true")
name = os.environ.get("SDK_TIER_NAME", "train") + "-" + os.environ.get("SDK_TIER_TAG", "")
task = Task.init(project_name="sdk-tier", task_name=name)
a = p.parse_args()
if a.remote_queue:
    task.execute_remotely(queue_name=a.remote_queue)
try:
    import extra

    suffix = extra.SUFFIX
except ImportError:
    suffix = ""
seen = dict(vars(a), mark=MARK + suffix, old_file=os.path.exists("old.txt"))
seen["same_task"] = Task.current_task().id == task.id == os.environ.get("CLEARML_TASK_ID")
print("ARGS " + json.dumps(seen, sort_keys=True), flush=True)
logger = task.get_logger()
logger.report_scalar("loss", "train", value=a.batch_size * 0.5 + sum(a.sizes), iteration=1)
logger.report_scalar("flags", "cache+verbose", value=int(a.cache) * 2 + int(a.verbose), iteration=1)
task.upload_artifact("seen", artifact_object=seen, wait_on_upload=True)
task.flush(wait_for_uploads=True)
if a.fail_itself:
    task.mark_failed(status_reason="the script failed itself")
"""

#: Framework auto-logging: a tensorboardX SummaryWriter (scalars), a matplotlib figure shown
#: (a plot) and a joblib.dump (an output model, uploaded to output_uri=True: the files server).
AUTOLOG_PY = """\
import argparse
import json
import os

import joblib
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from clearml import Task
from tensorboardX import SummaryWriter

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=3)
p.add_argument("--lr", type=float, default=0.5)
name = "autolog-" + os.environ.get("SDK_TIER_TAG", "")
task = Task.init(project_name="sdk-tier", task_name=name, output_uri=True)
a = p.parse_args()
writer = SummaryWriter(logdir="tb-runs")
for step in range(a.steps):
    writer.add_scalar("tb/loss", a.lr / (step + 1), step)
writer.close()
plt.figure()
plt.plot(list(range(a.steps)), [a.lr * s for s in range(a.steps)], label="lr*step")
plt.title("lr curve")
plt.legend()
plt.show()
# compressed: the SDK hooks the file object joblib makes then (a plain open() it cannot hook)
joblib.dump({"steps": a.steps, "lr": a.lr}, "model.pkl", compress=3)
same = Task.current_task().id == task.id == os.environ.get("CLEARML_TASK_ID")
seen = dict(vars(a), same_task=same)
print("ARGS " + json.dumps(seen, sort_keys=True), flush=True)
task.flush(wait_for_uploads=True)
"""

POETRY_RUN_PY = """\
import argparse
import json
import os

import six
from clearml import Task

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=1)
task = Task.init(project_name="sdk-tier", task_name="poetry-" + os.environ.get("SDK_TIER_TAG", ""))
a = p.parse_args()
print("ARGS " + json.dumps({"steps": a.steps, "six": six.__version__}, sort_keys=True), flush=True)
task.get_logger().report_scalar("steps", "n", value=a.steps, iteration=0)
task.flush(wait_for_uploads=True)
"""

POETRY_PYPROJECT = """\
[tool.poetry]
name = "poetry-proj"
version = "0.1.0"
description = "a Poetry project run as a ClearML task"
authors = ["t <t@t>"]
package-mode = false

[tool.poetry.dependencies]
python = ">=3.10,<3.14"
clearml = "2.1.12"
six = "1.16.0"

# PyPI through its simple index (this network serves PyPI's simple pages, not its JSON API)
[[tool.poetry.source]]
name = "pypi-simple"
url = "https://pypi.org/simple/"
priority = "primary"

[build-system]
requires = ["poetry-core"]
build-backend = "poetry.core.masonry.api"
"""


@dataclass
class Tier:
    """Everything the scenarios share."""

    root: Path
    server: Any
    bare: Path
    work: Path
    sha: str
    feature_sha: str
    user_conf: Path
    wheelhouse: Path
    #: Task and queue names end with it: the session's server is shared with other modules.
    tag: str
    queue: str = ""

    def user_env(self, **extra: str) -> dict[str, str]:
        env = clean_env()
        env.update(
            CLEARML_CONFIG_FILE=str(self.user_conf),
            CLEARML_TASK_NO_REUSE="1",
            SDK_TIER_TAG=self.tag,
            HOME=str(self.root / "user-home"),
            **extra,
        )
        return env

    def user_run(self, argv: list[str], cwd: Path, **extra: str) -> str:
        """Run ``argv`` as the user does on their machine; returns the output."""
        res = subprocess.run(
            argv, cwd=cwd, env=self.user_env(**extra), capture_output=True, text=True, timeout=240
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout + res.stderr

    def name(self, kind: str) -> str:
        return f"{kind}-{self.tag}"

    def find(self, kind: str) -> dict[str, Any]:
        tasks = self.server.send(
            "tasks.get_all",
            {
                "name": f"^{self.name(kind)}$",
                "only_fields": ["id", "status", "script", "hyperparams"],
            },
        )["tasks"]
        assert len(tasks) == 1, tasks
        return dict(tasks[0])

    def clone(self, task_id: str) -> str:
        return str(self.server.send("tasks.clone", {"task": task_id})["id"])


def download_wheels(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        stamp = dest / (".done-" + "-".join(WHEELS).replace("<", "lt").replace("=", ""))
        if not stamp.exists():
            argv = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest), *WHEELS]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, "downloading the tier's wheels from PyPI: " + res.stderr
            stamp.touch()
    return dest


def _make_repo(root: Path) -> tuple[Path, Path, str, str]:
    """A bare repo (main: train.py + old.txt; feature: one more commit) and a user's clone."""
    seed = root / "seed"
    seed.mkdir()
    _git(["init", "-q", "-b", "main"], seed)
    (seed / "train.py").write_text(TRAIN_PY)
    (seed / "autolog.py").write_text(AUTOLOG_PY)
    (seed / "old.txt").write_text("committed file the zero-context diff deletes\n")
    _git(["add", "."], seed)
    _git(["commit", "-q", "-m", "train"], seed)
    sha = _git(["rev-parse", "HEAD"], seed).strip()
    _git(["checkout", "-q", "-b", "feature"], seed)
    (seed / "NOTES.md").write_text("a commit on the feature branch only\n")
    _git(["add", "."], seed)
    _git(["commit", "-q", "-m", "feature"], seed)
    feature_sha = _git(["rev-parse", "HEAD"], seed).strip()
    bare = root / "repo.git"
    _git(["clone", "-q", "--bare", str(seed), str(bare)], root)
    _git(["--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/main"], root)
    work = root / "work"
    _git(["clone", "-q", str(bare), str(work)], root)
    _git(["config", "user.email", "t@t"], work)
    _git(["config", "user.name", "t"], work)
    return bare, work, sha, feature_sha


def make_tier(root: Path, server: Any) -> Tier:
    """The repositories, wheelhouse, user clearml.conf and queue of a tier under ``root``."""
    for tool in ("clearml-agent", "clearml-task", "poetry"):  # dev dependencies
        assert (BIN / tool).exists(), f"{tool} missing next to {sys.executable}: make install"
    wheelhouse = download_wheels(WHEELHOUSE.expanduser())
    bare, work, sha, feature_sha = _make_repo(root)
    user_conf = root / "user-clearml.conf"
    api = {
        "api_server": server.url,
        "web_server": server.url,
        "files_server": server.url + "/files",
        "credentials": {"access_key": server.access_key, "secret_key": server.secret_key},
    }
    # synchronous repository detection: a short script must not exit before it is recorded
    sdk = {"development": {"vcs_repo_detect_async": False}}
    user_conf.write_text(json.dumps({"api": api, "sdk": sdk}))
    tag = uuid.uuid4().hex[:8]
    tier = Tier(root, server, bare, work, sha, feature_sha, user_conf, wheelhouse, tag)
    tier.queue = tier.name("sdk-q")
    server.send("queues.create", {"name": tier.queue})
    return tier


# -- the two runners ------------------------------------------------------------------------


@dataclass
class Run:
    task_id: str
    returncode: int
    output: str
    status: str
    args: dict[str, Any] | None
    scalars: dict[str, Any]
    #: ``{artifact key: its content}``, fetched from where the task uploaded it.
    artifacts: dict[str, bytes] = field(default_factory=dict)
    #: ``{(metric, variant): the plot's figure}`` (matplotlib auto-logging).
    plots: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: ``{(framework, file name): content}`` of the task's output models (joblib auto-logging),
    #: fetched from the files server.
    models: dict[tuple[str, str], bytes] = field(default_factory=dict)
    #: How many ``ARGS`` lines the task's console log on the server holds.
    console_args: int = 0


def _fetch(tier: Tier, uri: str) -> bytes:
    """The content at ``uri``, which must be on this tier's files server (the SDK inside the
    task uploaded to the configured server, not elsewhere)."""
    files = tier.server.url + "/files/"
    assert uri.startswith(files), (uri, files)
    reply = requests.get(
        uri, headers={"Authorization": f"Bearer {tier.server.token()}"}, timeout=30
    )
    assert reply.status_code == 200, (uri, reply.status_code)
    return reply.content


def _artifacts(tier: Tier, task: dict[str, Any]) -> dict[str, bytes]:
    """The task's artifacts, each fetched from its URI."""
    arts = (task.get("execution") or {}).get("artifacts") or []
    return {str(art["key"]): _fetch(tier, str(art.get("uri") or "")) for art in arts}


def _plots(tier: Tier, task_id: str) -> dict[tuple[str, str], Any]:
    """The task's plots, each figure without the parts that name the run (its id, a time)."""
    plots = tier.server.send("events.get_task_plots", {"task": task_id, "iters": 10})["plots"]
    out: dict[tuple[str, str], Any] = {}
    for plot in plots:
        figure = json.loads(plot["plot_str"])
        out[(str(plot["metric"]), str(plot["variant"]))] = {
            "data": figure.get("data"),
            "title": (figure.get("layout") or {}).get("title"),
        }
    return out


def _models(tier: Tier, task_id: str) -> dict[tuple[str, str], bytes]:
    models = tier.server.send("models.get_all", {"task": [task_id]})["models"]
    return {
        (str(m.get("framework")), str(m["uri"]).rsplit("/", 1)[-1]): _fetch(tier, str(m["uri"]))
        for m in models
    }


def result(tier: Tier, task_id: str, returncode: int, output: str) -> Run:
    lines = [ln for ln in output.splitlines() if ln.startswith("ARGS ")]
    args = json.loads(lines[-1][len("ARGS ") :]) if lines else None
    scalars = tier.server.send("events.scalar_metrics_iter_histogram", {"task": task_id})
    clean = {
        m: {v: (s["x"], s["y"]) for v, s in series.items()}
        for m, series in scalars.items()
        if not m.startswith(":monitor:")
    }
    task = get_task(tier.server, task_id)
    arts = _artifacts(tier, task)
    console = sum(line.startswith("ARGS ") for line in task_log_lines(tier.server, task_id))
    plots, models = _plots(tier, task_id), _models(tier, task_id)
    return Run(
        task_id, returncode, output, task["status"], args, clean, arts, plots, models, console
    )


def tier_conf(tier: Tier, name: str, manager: str) -> Path:
    """hpcagent's clearml.conf for the tier: offline installs from its wheelhouse (a Poetry
    lock pins what PyPI had when it was made: PyPI stays reachable for it)."""
    extra = ["--find-links", str(tier.wheelhouse)]
    if manager != "poetry":
        extra.insert(0, "--no-index")
    conf = write_conf(
        tier.root / f"hpcagent-{name}.conf",
        tier.server,
        tier.root / "executor-caches",  # not "hpcagent": a job cwd folder would shadow the package
        tier.wheelhouse,
        package_manager={"type": manager, "extra_args": extra},
    )
    data = json.loads(conf.read_text())
    data["api"] = {**data["api"], **json.loads(tier.user_conf.read_text())["api"]}
    conf.write_text(json.dumps(data))
    return conf


def run_hpcagent(tier: Tier, task_id: str, manager: str) -> Run:
    conf = tier_conf(tier, task_id, manager)
    res = run_execute(task_id, conf, timeout=600)  # with the machine monitor, as users run it
    return result(tier, task_id, res.returncode, res.stdout + res.stderr)


def run_agent(tier: Tier, task_id: str, *, manager: str = "pip") -> Run:
    home = tier.root / "agent-home"
    conf = tier.root / f"agent-{manager}.conf"
    api = json.loads(tier.user_conf.read_text())["api"]
    agent = {
        "venvs_dir": str(tier.root / "agent-venvs"),
        "venvs_cache": {"path": str(tier.root / f"agent-venvs-cache-{manager}")},
        "vcs_cache": {"enabled": True, "path": str(tier.root / "agent-vcs-cache")},
        "package_manager": {"type": manager, "pip_version": ""},
    }
    conf.write_text(json.dumps({"api": api, "agent": agent}))
    env = clean_env()
    env.update(
        CLEARML_CONFIG_FILE=str(conf),
        HOME=str(home),
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(tier.wheelhouse),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    if manager == "poetry":
        env.pop("PIP_NO_INDEX")
    res = subprocess.run(
        [str(BIN / "clearml-agent"), "execute", "--id", task_id],
        env=env,
        cwd=tier.root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return result(tier, task_id, res.returncode, res.stdout + res.stderr)


Runner = Callable[[Tier, str, str], Run]


def compare(tier: Tier, case: Case, runner: Runner = run_hpcagent) -> tuple[Run, Run]:
    """Run the case's task with hpcagent (``runner``) and its clone with clearml-agent; assert
    the status, the arguments seen and the scalars reported are equal, then the case's own
    expectations."""
    hp = runner(tier, case.hp_task, case.manager)
    ref = run_agent(tier, case.agent_task, manager="poetry" if case.manager == "poetry" else "pip")
    assert ref.args is not None, "clearml-agent:\n" + ref.output[-6000:]
    assert hp.args is not None, "hpcagent:\n" + hp.output[-6000:]
    assert hp.args == ref.args, (hp.output[-3000:], ref.output[-3000:])
    assert hp.scalars == ref.scalars, (hp.scalars, ref.scalars)
    assert hp.scalars, "the script reported no scalars"
    assert hp.artifacts == ref.artifacts, (hp.artifacts, ref.artifacts)
    assert hp.plots == ref.plots, (hp.plots, ref.plots)
    assert hp.models == ref.models, (hp.models, ref.models)
    # the script's console line reached the task's log on the server, once
    assert hp.console_args == ref.console_args == 1, (hp.console_args, ref.console_args)
    assert hp.status == ref.status, (hp.output[-3000:], ref.output[-3000:])
    assert hp.status == case.status
    for key, value in case.expect.items():
        assert hp.args[key] == value, (key, hp.args)
    if case.check is not None:
        case.check(hp)
    return hp, ref


# -- the cases: each makes its task as a user does --------------------------------------------


@dataclass
class Case:
    """A task to run with hpcagent, its clone for clearml-agent, and what must come out."""

    hp_task: str
    agent_task: str
    status: str = "completed"
    expect: dict[str, Any] = field(default_factory=dict)
    manager: str = "uv"
    #: More assertions on hpcagent's run (equal to clearml-agent's by then).
    check: Callable[[Run], None] | None = None


def _clones(tier: Tier, task_id: str) -> tuple[str, str]:
    return tier.clone(task_id), tier.clone(task_id)


def init_argparse(tier: Tier) -> Case:
    """Dashed options, a positional, store_true/store_false and nargs, recorded by Task.init
    and overridden on the server before the run (as a user edits a clone in the UI)."""
    argv = ["train.py", "in.csv", "--batch-size", "16", "--no-cache", "--verbose"]
    argv += ["--sizes", "3", "4"]
    tier.user_run([sys.executable, *argv], tier.work, SDK_TIER_NAME="init-argparse")
    made = tier.find("init-argparse")
    assert made["status"] == "completed"
    assert made["hyperparams"]["Args"]["batch_size"]["value"] == "16"
    ids = _clones(tier, made["id"])
    for task_id in ids:
        override = {"section": "Args", "name": "batch_size", "value": "32"}
        tier.server.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": [override]})
    expect = {"data": "in.csv", "batch_size": 32, "cache": False, "verbose": True}
    expect.update(sizes=[3, 4], remote_queue="", mark="committed", old_file=True, same_task=True)
    return Case(*ids, expect=expect)


def execute_remotely(tier: Tier) -> Case:
    argv = ["train.py", "r.csv", "--batch-size", "4", "--remote-queue", tier.queue]
    out = tier.user_run([sys.executable, *argv], tier.work, SDK_TIER_NAME="remotely")
    assert "ARGS" not in out  # the local process stopped at execute_remotely
    made = tier.find("remotely")
    assert made["status"] == "queued"
    return Case(made["id"], tier.clone(made["id"]), expect={"remote_queue": tier.queue})


def clearml_task_with_local_changes(tier: Tier) -> Case:
    """``clearml-task`` records the uncommitted change as a diff (applied with
    --unidiff-zero by the agent) and the Args by dest name."""
    train = tier.work / "train.py"
    train.write_text(TRAIN_PY.replace('MARK = "committed"', 'MARK = "local-change"'))
    try:
        argv = ["--project", "sdk-tier", "--name", tier.name("clearml-task")]
        argv += ["--script", "train.py", "--queue", tier.queue, "--packages", "clearml==2.1.12"]
        argv += ["--args", "data=ct.csv", "batch_size=12"]
        tier.user_run([str(BIN / "clearml-task"), *argv], tier.work)
    finally:
        _git(["checkout", "-q", "--", "train.py"], tier.work)
    made = tier.find("clearml-task")
    assert made["status"] == "queued"
    assert "local-change" in made["script"]["diff"]
    expect = {"mark": "local-change", "data": "ct.csv", "batch_size": 12}
    return Case(made["id"], tier.clone(made["id"]), expect=expect)


def task_create_with_argparse_args(tier: Tier) -> Case:
    """``Task.create`` leaves the task created: it runs by id, as the agent runs it."""
    code = textwrap.dedent(
        f"""
        from clearml import Task
        task = Task.create(
            project_name="sdk-tier", task_name={tier.name("task-create")!r},
            repo={str(tier.work)!r}, branch="main", script="train.py", working_directory=".",
            packages=["clearml==2.1.12"],
            argparse_args=[("data", "c.csv"), ("batch_size", "5"), ("verbose", "true"),
                           ("sizes", "[7, 8, 9]")],
        )
        """
    )
    tier.user_run([sys.executable, "-c", code], tier.root)
    made = tier.find("task-create")
    assert made["status"] == "created"
    expect = {"data": "c.csv", "batch_size": 5, "verbose": True, "sizes": [7, 8, 9]}
    return Case(made["id"], tier.clone(made["id"]), expect=expect)


def zero_context_diff(tier: Tier) -> Case:
    """A diff without context lines, with a new and a deleted file, on a commit that only the
    ``feature`` branch holds."""
    _git(["checkout", "-q", "feature"], tier.work)
    try:
        argv = ["train.py", "z.csv", "--batch-size", "2"]
        tier.user_run([sys.executable, *argv], tier.work, SDK_TIER_NAME="zero-context")
        (tier.work / "train.py").write_text(
            TRAIN_PY.replace('MARK = "committed"', 'MARK = "zero-context"')
        )
        (tier.work / "extra.py").write_text('SUFFIX = "+new-file"\n')
        (tier.work / "old.txt").unlink()
        _git(["add", "-N", "extra.py"], tier.work)
        diff = _git(["diff", "-U0"], tier.work)
    finally:
        _git(["reset", "-q", "--hard"], tier.work)
        (tier.work / "extra.py").unlink(missing_ok=True)
        _git(["checkout", "-q", "main"], tier.work)
    assert "@@ -7 +7 @@" in diff
    made = tier.find("zero-context")
    assert made["script"]["version_num"] == tier.feature_sha
    ids = _clones(tier, made["id"])
    for task_id in ids:
        tier.server.send("tasks.edit", {"task": task_id, "force": True, "script": {"diff": diff}})
    return Case(*ids, expect={"mark": "zero-context+new-file", "old_file": False})


def fails_itself(tier: Tier) -> Case:
    """The script marks its own task failed and exits 0 (as a failing pipeline controller
    does): neither runner turns it completed."""
    tier.user_run([sys.executable, "train.py", "f.csv"], tier.work, SDK_TIER_NAME="fails-itself")
    ids = _clones(tier, tier.find("fails-itself")["id"])
    for task_id in ids:
        flag = {"section": "Args", "name": "fail_itself", "value": "True"}
        tier.server.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": [flag]})
    return Case(*ids, status="failed", expect={"fail_itself": True})


def poetry_project(tier: Tier) -> Case:
    """A Poetry project: under ``package_manager.type: poetry`` the lock's pins (six 1.16.0)
    win over what the SDK recorded from the user's venv."""
    proj = tier.root / "poetry-proj"
    proj.mkdir()
    _git(["init", "-q", "-b", "main"], proj)
    (proj / "pyproject.toml").write_text(POETRY_PYPROJECT)
    (proj / "run.py").write_text(POETRY_RUN_PY)
    env = tier.user_env(POETRY_CACHE_DIR=str(tier.root / "poetry-cache"))
    res = subprocess.run(
        [str(BIN / "poetry"), "lock", "-n"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    _git(["add", "."], proj)
    _git(["commit", "-q", "-m", "poetry"], proj)
    bare = tier.root / "poetry.git"
    _git(["clone", "-q", "--bare", str(proj), str(bare)], tier.root)
    work = tier.root / "poetry-work"
    _git(["clone", "-q", str(bare), str(work)], tier.root)
    tier.user_run([sys.executable, "run.py", "--steps", "3"], work)
    made = tier.find("poetry")
    assert "six" in made["script"]["requirements"]["pip"]
    return Case(*_clones(tier, made["id"]), expect={"steps": 3, "six": "1.16.0"}, manager="poetry")


def framework_autolog(tier: Tier) -> Case:
    """What the SDK's framework bindings log inside the task: tensorboardX scalars, a
    matplotlib figure (a plot) and a joblib.dump (an output model uploaded to the files server
    as ``output_uri=True`` asks), for the run's own arguments (overridden on the clone)."""
    argv = ["autolog.py", "--steps", "4", "--lr", "0.25"]
    tier.user_run([sys.executable, *argv], tier.work)
    made = tier.find("autolog")
    recorded = made["script"]["requirements"]["pip"]
    for name in FRAMEWORKS:
        assert name.lower() in recorded.lower(), (name, recorded)
    ids = _clones(tier, made["id"])
    for task_id in ids:
        override = {"section": "Args", "name": "steps", "value": "5"}
        tier.server.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": [override]})

    def check(run: Run) -> None:
        xs, ys = run.scalars["tb"]["loss"]
        assert list(xs) == [0, 1, 2, 3, 4], run.scalars
        want = [0.25 / (i + 1) for i in range(5)]  # tensorboardX writes float32
        assert all(math.isclose(y, w, rel_tol=1e-6) for y, w in zip(ys, want, strict=True)), ys
        titles = [str(plot["title"]) for plot in run.plots.values()]
        assert any("lr curve" in title for title in titles), run.plots
        data = next(iter(run.plots.values()))["data"]
        assert [list(trace["y"]) for trace in data] == [[0.25 * i for i in range(5)]], data
        (framework, model), *more = run.models.items()
        assert framework == ("ScikitLearn", "model.pkl"), run.models  # as the SDK names joblib's
        assert not more, run.models
        assert joblib.load(io.BytesIO(model)) == {"steps": 5, "lr": 0.25}

    return Case(*ids, expect={"steps": 5, "lr": 0.25, "same_task": True}, check=check)


CASES = {
    "init_argparse": init_argparse,
    "execute_remotely": execute_remotely,
    "clearml_task_with_local_changes": clearml_task_with_local_changes,
    "task_create_with_argparse_args": task_create_with_argparse_args,
    "zero_context_diff": zero_context_diff,
    "fails_itself": fails_itself,
    "poetry_project": poetry_project,
    "framework_autolog": framework_autolog,
}
