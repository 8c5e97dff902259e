"""SDK-made tasks: what the official ``clearml`` SDK and ``clearml-task`` create runs under
``hpcagent execute`` as under the official ``clearml-agent execute`` (issue 13).

Each task is made as a user makes it, offline (local git repositories, a wheelhouse downloaded
once from PyPI): ``Task.init`` + argparse run locally, ``execute_remotely``, ``clearml-task``
with local changes, ``Task.create(argparse_args=...)``, a Poetry project, a zero-context diff
on a commit outside the default branch. Then the same task is run once by ``hpcagent execute``
and once, from a clone, by ``clearml-agent execute`` (3.0.3, a dev dependency) against the same
embedded server; the final status, the arguments the script saw and the scalars it reported
must be equal. The same tasks under real sbatch through ``hpcagent-slurm`` are in
tests/slurm/test_sdk_tasks_slurm.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import EmbeddedServer
from filelock import FileLock
from helpers import _git, clean_env, get_task, run_execute, write_conf

pytestmark = pytest.mark.e2e

#: Wheels for the tasks' venvs (clearml and its dependencies), downloaded once from PyPI.
WHEELHOUSE = Path(os.environ.get("HPCAGENT_TEST_WHEELHOUSE", "~/.cache/hpcagent-tests/sdk-wheels"))
WHEELS = ["clearml==2.1.12", "six==1.16.0", "pip<22.3"]

BIN = Path(sys.executable).parent

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
task = Task.init(project_name="sdk-tier", task_name=os.environ.get("SDK_TIER_NAME", "train"))
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
task.flush(wait_for_uploads=True)
if a.fail_itself:
    task.mark_failed(status_reason="the script failed itself")
"""

POETRY_RUN_PY = """\
import argparse
import json

import six
from clearml import Task

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=1)
task = Task.init(project_name="sdk-tier", task_name="poetry")
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
    server: EmbeddedServer
    bare: Path
    work: Path
    sha: str
    feature_sha: str
    user_conf: Path
    wheelhouse: Path

    def user_env(self, **extra: str) -> dict[str, str]:
        env = clean_env()
        env.update(
            CLEARML_CONFIG_FILE=str(self.user_conf),
            CLEARML_TASK_NO_REUSE="1",
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

    def find(self, name: str) -> dict[str, Any]:
        tasks = self.server.send(
            "tasks.get_all",
            {"name": f"^{name}$", "only_fields": ["id", "status", "script", "hyperparams"]},
        )["tasks"]
        assert len(tasks) == 1, tasks
        return dict(tasks[0])

    def clone(self, task_id: str) -> str:
        return str(self.server.send("tasks.clone", {"task": task_id})["id"])


def _download_wheels(dest: Path) -> Path:
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


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    root = tmp_path_factory.mktemp("sdk-tier")
    server = EmbeddedServer(root / "server-data")
    server.start()
    try:
        wheelhouse = _download_wheels(WHEELHOUSE.expanduser())
        bare, work, sha, feature_sha = _make_repo(root)
        user_conf = root / "user-clearml.conf"
        api = {
            "api_server": server.url,
            "web_server": server.url,
            "files_server": server.url,
            "credentials": {"access_key": server.access_key, "secret_key": server.secret_key},
        }
        # synchronous repository detection: a short script must not exit before it is recorded
        sdk = {"development": {"vcs_repo_detect_async": False}}
        user_conf.write_text(json.dumps({"api": api, "sdk": sdk}))
        server.send("queues.create", {"name": "sdk-q"})
        yield Tier(root, server, bare, work, sha, feature_sha, user_conf, wheelhouse)
    finally:
        server.stop()


# -- the two runners ------------------------------------------------------------------------


@dataclass
class Run:
    task_id: str
    returncode: int
    output: str
    status: str
    args: dict[str, Any] | None
    scalars: dict[str, Any]


def _result(tier: Tier, task_id: str, returncode: int, output: str) -> Run:
    lines = [ln for ln in output.splitlines() if ln.startswith("ARGS ")]
    args = json.loads(lines[-1][len("ARGS ") :]) if lines else None
    scalars = tier.server.send("events.scalar_metrics_iter_histogram", {"task": task_id})
    clean = {
        m: {v: (s["x"], s["y"]) for v, s in series.items()}
        for m, series in scalars.items()
        if not m.startswith(":monitor:")
    }
    return Run(task_id, returncode, output, get_task(tier.server, task_id)["status"], args, clean)


def run_hpcagent(tier: Tier, task_id: str, *, manager: str = "uv") -> Run:
    extra = ["--find-links", str(tier.wheelhouse)]
    if manager != "poetry":  # the lock pins what PyPI had when it was made
        extra.insert(0, "--no-index")
    conf = write_conf(
        tier.root / f"hpcagent-{task_id}.conf",
        tier.server,
        tier.root / "hpcagent",
        tier.wheelhouse,
        package_manager={"type": manager, "extra_args": extra},
    )
    res = run_execute(task_id, conf, "--disable-monitoring", timeout=600)
    return _result(tier, task_id, res.returncode, res.stdout + res.stderr)


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
    return _result(tier, task_id, res.returncode, res.stdout + res.stderr)


def compare(tier: Tier, hp_task: str, agent_task: str, manager: str = "") -> tuple[Run, Run]:
    """Run ``hp_task`` with hpcagent and ``agent_task`` with clearml-agent; assert the status,
    the arguments seen and the scalars reported are equal."""
    hp = run_hpcagent(tier, hp_task, **({"manager": manager} if manager else {}))
    ref = run_agent(tier, agent_task, **({"manager": manager} if manager else {}))
    assert ref.args is not None, "clearml-agent:\n" + ref.output[-6000:]
    assert hp.args is not None, "hpcagent:\n" + hp.output[-6000:]
    assert hp.args == ref.args, (hp.output[-3000:], ref.output[-3000:])
    assert hp.scalars == ref.scalars
    assert hp.scalars, "the script reported no scalars"
    assert hp.status == ref.status, (hp.output[-3000:], ref.output[-3000:])
    return hp, ref


# -- the scenarios ----------------------------------------------------------------------------


def test_task_init_argparse(tier: Tier) -> None:
    """Dashed options, a positional, store_true/store_false and nargs, recorded by Task.init
    and overridden on the server before the run."""
    argv = ["train.py", "in.csv", "--batch-size", "16", "--no-cache", "--verbose"]
    argv += ["--sizes", "3", "4"]
    tier.user_run(
        [sys.executable, *argv],
        tier.work,
        SDK_TIER_NAME="init-argparse",
    )
    made = tier.find("init-argparse")
    assert made["status"] == "completed"
    assert made["hyperparams"]["Args"]["batch_size"]["value"] == "16"
    ids = [tier.clone(made["id"]) for _ in range(2)]
    for task_id in ids:  # what a user edits in the UI before enqueueing the clone
        override = {"section": "Args", "name": "batch_size", "value": "32"}
        tier.server.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": [override]})
    hp, _ = compare(tier, *ids)
    assert hp.status == "completed"
    assert hp.args == {
        "data": "in.csv",
        "batch_size": 32,
        "cache": False,
        "verbose": True,
        "sizes": [3, 4],
        "remote_queue": "",
        "fail_itself": False,
        "mark": "committed",
        "old_file": True,
        "same_task": True,
    }


def test_execute_remotely(tier: Tier) -> None:
    out = tier.user_run(
        [sys.executable, "train.py", "r.csv", "--batch-size", "4", "--remote-queue", "sdk-q"],
        tier.work,
        SDK_TIER_NAME="remotely",
    )
    assert "ARGS" not in out  # the local process stopped at execute_remotely
    made = tier.find("remotely")
    assert made["status"] == "queued"
    agent_copy = tier.clone(made["id"])
    hp, _ = compare(tier, made["id"], agent_copy)
    assert hp.status == "completed"
    assert (hp.args or {})["remote_queue"] == "sdk-q"
    assert (hp.args or {})["batch_size"] == 4


def test_clearml_task_with_local_changes(tier: Tier) -> None:
    """``clearml-task`` records the uncommitted change as a diff (applied with
    --unidiff-zero by the agent) and the Args as dest names."""
    train = tier.work / "train.py"
    train.write_text(TRAIN_PY.replace('MARK = "committed"', 'MARK = "local-change"'))
    try:
        argv = "--project sdk-tier --name clearml-task --script train.py --queue sdk-q"
        argv += " --packages clearml==2.1.12 --args data=ct.csv batch_size=12"
        tier.user_run(
            [str(BIN / "clearml-task"), *argv.split()],
            tier.work,
        )
    finally:
        _git(["checkout", "-q", "--", "train.py"], tier.work)
    made = tier.find("clearml-task")
    assert made["status"] == "queued"
    assert "local-change" in made["script"]["diff"]
    agent_copy = tier.clone(made["id"])
    hp, _ = compare(tier, made["id"], agent_copy)
    assert hp.status == "completed"
    assert (hp.args or {})["mark"] == "local-change"
    assert ((hp.args or {})["data"], (hp.args or {})["batch_size"]) == ("ct.csv", 12)


def test_task_create_with_argparse_args(tier: Tier) -> None:
    """``Task.create`` (status created, run by id like the agent runs it)."""
    code = textwrap.dedent(
        f"""
        from clearml import Task
        task = Task.create(
            project_name="sdk-tier", task_name="task-create", repo={str(tier.work)!r},
            branch="main", script="train.py", working_directory=".",
            packages=["clearml==2.1.12"],
            argparse_args=[("data", "c.csv"), ("batch_size", "5"), ("verbose", "true"),
                           ("sizes", "[7, 8, 9]")],
        )
        print("CREATED", task.id)
        """
    )
    tier.user_run([sys.executable, "-c", code], tier.root)
    made = tier.find("task-create")
    assert made["status"] == "created"
    agent_copy = tier.clone(made["id"])
    hp, _ = compare(tier, made["id"], agent_copy)
    assert hp.status == "completed"
    args = hp.args or {}
    assert (args["data"], args["batch_size"], args["verbose"], args["sizes"]) == (
        "c.csv",
        5,
        True,
        [7, 8, 9],
    )


def test_zero_context_diff_on_a_feature_branch_commit(tier: Tier) -> None:
    """A diff without context lines, a new and a deleted file, on a commit that only the
    ``feature`` branch holds."""
    _git(["checkout", "-q", "feature"], tier.work)
    try:
        tier.user_run(
            [sys.executable, "train.py", "z.csv", "--batch-size", "2"],
            tier.work,
            SDK_TIER_NAME="zero-context",
        )
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
    ids = [tier.clone(made["id"]) for _ in range(2)]
    for task_id in ids:
        tier.server.send("tasks.edit", {"task": task_id, "force": True, "script": {"diff": diff}})
    hp, _ = compare(tier, *ids)
    assert hp.status == "completed"
    assert ((hp.args or {})["mark"], (hp.args or {})["old_file"]) == (
        "zero-context+new-file",
        False,
    )


def test_task_that_fails_itself_stays_failed(tier: Tier) -> None:
    """The script marks its own task failed and exits 0 (a failing pipeline controller does
    this): neither runner turns it completed."""
    tier.user_run([sys.executable, "train.py", "f.csv"], tier.work, SDK_TIER_NAME="fails-itself")
    made = tier.find("fails-itself")
    ids = [tier.clone(made["id"]) for _ in range(2)]
    for task_id in ids:
        flag = {"section": "Args", "name": "fail_itself", "value": "True"}
        tier.server.send("tasks.edit_hyper_params", {"task": task_id, "hyperparams": [flag]})
    hp, _ = compare(tier, *ids)
    assert hp.status == "failed"
    assert get_task(tier.server, hp.task_id)["status_reason"] == "the script failed itself"


def test_poetry_project(tier: Tier) -> None:
    """A Poetry project: under ``package_manager.type: poetry`` the lock's pins (six 1.16.0)
    win over what the SDK recorded from the user's venv."""
    proj = tier.root / "poetry-proj"
    proj.mkdir()
    _git(["init", "-q", "-b", "main"], proj)
    (proj / "pyproject.toml").write_text(POETRY_PYPROJECT)
    (proj / "run.py").write_text(POETRY_RUN_PY)
    env = tier.user_env()
    env["POETRY_CACHE_DIR"] = str(tier.root / "poetry-cache")
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
    ids = [tier.clone(made["id"]) for _ in range(2)]
    hp, _ = compare(tier, *ids, manager="poetry")
    assert hp.status == "completed"
    assert hp.args == {"steps": 3, "six": "1.16.0"}


@pytest.fixture(autouse=True)
def _tools() -> None:
    """The tier's tools come with the dev dependencies (pyproject.toml)."""
    for tool in ("clearml-agent", "clearml-task", "poetry"):
        assert (BIN / tool).exists() or shutil.which(tool), f"{tool} missing: make install"
