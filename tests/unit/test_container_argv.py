"""Container argv building (Apptainer/Singularity and Docker) against golden lists.

Golden files: tests/golden/container/<case>.json. Paths under the test's temporary folder are
written as ``{TMP}``. Set HPCAGENT_UPDATE_GOLDEN=1 to rewrite them after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hpcagent.config import ContainerSettings
from hpcagent.container import docker as container_docker
from hpcagent.container.apptainer import ApptainerSession, Runtime, build_exec_argv, split_env
from hpcagent.container.base import Bind, ContainerRequest, is_secret_name, job_gpus
from hpcagent.container.docker import DockerSession, build_docker_argv, gpu_args
from hpcagent.errors import ContainerError
from hpcagent.process import CommandResult

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "container"
SECRET = "s3cr3t-value-never-in-argv"


def _norm(obj: Any, tmp: Path) -> Any:
    if isinstance(obj, str):
        return obj.replace(str(tmp), "{TMP}")
    if isinstance(obj, list):
        return [_norm(x, tmp) for x in obj]
    if isinstance(obj, dict):
        return {k: _norm(v, tmp) for k, v in obj.items()}
    return obj


def check_golden(case: str, got: dict[str, Any], tmp: Path) -> None:
    path = GOLDEN / f"{case}.json"
    data = _norm(got, tmp)
    if os.environ.get("HPCAGENT_UPDATE_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    expected = json.loads(path.read_text())
    assert data == expected, f"differs from {path} (HPCAGENT_UPDATE_GOLDEN=1 rewrites it)"


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("workspace", "venvs", "data", "image"):
        (tmp_path / name).mkdir()
        out[name] = tmp_path / name
    return out


SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "node[01-03,07]",
    "SLURM_PROCID": "0",
    "HOME": "/home/alice",
    "PATH": "/usr/bin:/bin",
    "MODULEPATH": "/etc/modules",  # site noise: must not enter a clean container
    "CLEARML_API_SECRET_KEY": SECRET,
}


def _session(
    dirs: dict[str, Path], runtime: Runtime, env: dict[str, str], **kw: Any
) -> ApptainerSession:
    settings = ContainerSettings(
        binds=(f"{dirs['data']}:/data:ro",),
        cleanenv=kw.pop("cleanenv", True),
        env_passthrough=("MY_SITE_*",),
    )
    session = ApptainerSession(
        runtime=runtime,
        image_path=str(dirs["image"]),
        request=ContainerRequest("docker://python:3.11", ("--writable-tmpfs",)),
        settings=settings,
        host_env=env,
        **kw,
    )
    session.add_bind(dirs["workspace"])
    session.add_bind(dirs["venvs"])
    return session


APPTAINER = Runtime("/usr/bin/apptainer", "apptainer", "1.3.4")
TASK_ENV = {"CLEARML_TASK_ID": "abc123", "CLEARML_API_SECRET_KEY": SECRET, "LR": "0.1"}


def test_apptainer_cpu_golden(dirs: dict[str, Path], tmp_path: Path) -> None:
    session = _session(dirs, APPTAINER, SLURM_ENV)
    prep = session.wrap(
        ["/venv/bin/python", "train.py", "--lr", "0.1"], cwd=dirs["workspace"], task_env=TASK_ENV
    )
    assert SECRET not in " ".join(prep.argv)
    assert prep.env["APPTAINERENV_CLEARML_API_SECRET_KEY"] == SECRET
    hidden = {k: v for k, v in prep.env.items() if k.startswith("APPTAINERENV_")}
    check_golden("apptainer_cpu", {"argv": prep.argv, "hidden": sorted(hidden)}, tmp_path)
    assert "--nv" not in prep.argv
    assert "MODULEPATH=/etc/modules" not in prep.argv


def test_apptainer_gpu_golden(dirs: dict[str, Path], tmp_path: Path) -> None:
    env = {**SLURM_ENV, "CUDA_VISIBLE_DEVICES": "0,1", "MY_SITE_SCRATCH": "/scratch/a=b"}
    session = _session(dirs, APPTAINER, env)
    prep = session.wrap(["python3", "-c", "print(1)"], cwd=dirs["workspace"])
    hidden = {k: v for k, v in prep.env.items() if k.startswith("APPTAINERENV_")}
    check_golden("apptainer_gpu", {"argv": prep.argv, "hidden": hidden}, tmp_path)
    assert prep.argv[:3] == ["/usr/bin/apptainer", "exec", "--nv"]
    # "a=b" would be split by --env's CSV parsing: it goes through the environment instead
    assert hidden["APPTAINERENV_MY_SITE_SCRATCH"] == "/scratch/a=b"


def test_singularity_without_cleanenv_golden(dirs: dict[str, Path], tmp_path: Path) -> None:
    runtime = Runtime("/opt/singularity/bin/singularity", "singularity", "3.8.7")
    session = _session(dirs, runtime, SLURM_ENV, cleanenv=False, gpus=True)
    prep = session.wrap(["bash", "run.sh"], cwd=dirs["workspace"], task_env=TASK_ENV)
    hidden = {k: v for k, v in prep.env.items() if k.startswith("SINGULARITYENV_")}
    check_golden("singularity_nocleanenv", {"argv": prep.argv, "hidden": sorted(hidden)}, tmp_path)
    assert "--cleanenv" not in prep.argv
    assert "SINGULARITYENV_CLEARML_API_SECRET_KEY" in prep.env


def test_docker_golden(dirs: dict[str, Path], tmp_path: Path) -> None:
    argv, hidden = build_docker_argv(
        "/usr/bin/docker",
        "docker://nvcr.io/nvidia/pytorch:24.01-py3",
        ["/venv/bin/python", "train.py"],
        name="hpcagent-abc123",
        workdir=dirs["workspace"],
        binds=[
            Bind(dirs["workspace"]),
            Bind(dirs["venvs"]),
            Bind.parse(f"{dirs['data']}:/data:ro"),
        ],
        env={"CLEARML_TASK_ID": "abc123", "CLEARML_API_SECRET_KEY": SECRET, "SLURM_JOB_ID": "7"},
        gpus=gpu_args({"CUDA_VISIBLE_DEVICES": "2,3"}),
        user="1000:1000",
        extra_args=["--shm-size=8g"],
    )
    assert SECRET not in argv
    assert hidden == {"CLEARML_API_SECRET_KEY": SECRET}
    check_golden("docker_gpu", {"argv": argv, "hidden": sorted(hidden)}, tmp_path)


def test_docker_session_wrap_and_abort(
    dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_: Any) -> CommandResult:
        calls.append(list(argv))
        return CommandResult(tuple(argv), 1, "", "Error: No such container")

    monkeypatch.setattr(container_docker, "run_command", fake_run)
    session = DockerSession(
        docker="/usr/bin/docker",
        image="hpcagent-test-base",
        request=ContainerRequest("hpcagent-test-base", ()),
        settings=ContainerSettings(),
        task_id="t/1",
        host_env={"SLURM_JOB_ID": "9", "PATH": "/usr/bin"},
    )
    session.add_bind(dirs["workspace"])
    prep = session.wrap(["python3", "x.py"], cwd=dirs["workspace"])
    assert calls == [["/usr/bin/docker", "rm", "--force", "hpcagent-t_1"]]
    assert prep.abort_argv == [["/usr/bin/docker", "kill", "hpcagent-t_1"]]
    assert prep.argv[prep.argv.index("--name") + 1] == "hpcagent-t_1"
    assert "SLURM_JOB_ID=9" in prep.argv
    setup = session.wrap(["python3", "-m", "venv", "v"], cwd=dirs["workspace"], main=False)
    assert setup.argv[setup.argv.index("--name") + 1].startswith("hpcagent-t_1-setup-")
    session.abort(prep)
    assert calls[-1] == ["/usr/bin/docker", "kill", "hpcagent-t_1"]


def test_old_singularity_without_env_flag(dirs: dict[str, Path]) -> None:
    old = Runtime("/usr/bin/singularity", "singularity", "3.5.3")
    argv, hidden = build_exec_argv(
        old, "/i.sif", ["true"], workdir=dirs["workspace"], env={"A": "1", "TOKEN": "t"}
    )
    assert "--env" not in argv
    assert hidden == {"SINGULARITYENV_A": "1", "SINGULARITYENV_TOKEN": "t"}
    assert Runtime("/s", "singularity", "3.8.7").has_env_flag
    assert Runtime("/a", "apptainer", "1.0.0").has_env_flag


def test_env_split_and_secret_names() -> None:
    plain, hidden = split_env({"A": "1", "B": "x=y", "GIT_PASS": "p", "HF_TOKEN": "t", "N": 'q"'})
    assert plain == {"A": "1"}
    assert set(hidden) == {"B", "GIT_PASS", "HF_TOKEN", "N"}
    assert is_secret_name("CLEARML_API_SECRET_KEY")
    assert is_secret_name("AWS_SECRET_ACCESS_KEY")
    assert not is_secret_name("CLEARML_TASK_ID")
    with pytest.raises(ContainerError):
        split_env({"BAD NAME": "1"})


@pytest.mark.parametrize(
    ("env", "force", "expected"),
    [
        ({}, None, False),
        ({"CUDA_VISIBLE_DEVICES": "0"}, None, True),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None, False),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None, False),
        ({"SLURM_GPUS_ON_NODE": "2"}, None, True),
        ({"SLURM_GPUS_ON_NODE": "0"}, None, False),
        ({"SLURM_JOB_GPUS": "1,3"}, None, True),
        ({"SLURM_GPUS_PER_NODE": "a100:4"}, None, True),
        ({"CUDA_VISIBLE_DEVICES": "0"}, False, False),
        ({}, True, True),
    ],
)
def test_job_gpus(env: dict[str, str], force: bool | None, expected: bool) -> None:
    assert job_gpus(env, force) is expected


def test_gpu_args_forms() -> None:
    assert gpu_args({}) == []
    assert gpu_args({"SLURM_GPUS_ON_NODE": "1"}) == ["--gpus", "all"]
    assert gpu_args({"CUDA_VISIBLE_DEVICES": "1"}) == ["--gpus", '"device=1"']


def test_bind_parse_and_checks(tmp_path: Path) -> None:
    assert Bind.parse(f"{tmp_path}").spec() == f"{tmp_path}:{tmp_path}"
    assert Bind.parse(f"{tmp_path}:ro").spec() == f"{tmp_path}:{tmp_path}:ro"
    assert Bind.parse(f"{tmp_path}:/d:rw").spec() == f"{tmp_path}:/d"
    with pytest.raises(ContainerError, match="does not exist"):
        Bind.parse(str(tmp_path / "missing")).spec()
    comma = tmp_path / "a,b"
    comma.mkdir()
    with pytest.raises(ContainerError, match="contains"):
        Bind(comma).spec()
    with pytest.raises(ContainerError, match="bad bind option"):
        Bind.parse(f"{tmp_path}:/d:rx")


def test_duplicate_bind_targets_and_empty_command(dirs: dict[str, Path]) -> None:
    argv, _ = build_exec_argv(
        APPTAINER,
        "/img.sif",
        ["true"],
        workdir=dirs["workspace"],
        binds=[Bind(dirs["workspace"]), Bind(dirs["workspace"])],
    )
    assert argv.count("--bind") == 1
    with pytest.raises(ContainerError):
        build_exec_argv(APPTAINER, "/img.sif", [], workdir=dirs["workspace"])
