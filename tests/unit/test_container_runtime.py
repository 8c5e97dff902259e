"""Runtime resolution, image choice, settings and the template shim (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcagent.config import ContainerSettings, load_settings
from hpcagent.container.apptainer import parse_version, resolve_runtime
from hpcagent.container.base import (
    ContainerRequest,
    request_for_task,
    split_arguments,
)
from hpcagent.container.images import normalise_image
from hpcagent.container.mode import running_inside_container
from hpcagent.container.shim import (
    ENV_ARGS,
    ENV_BINARY,
    ENV_IMAGE,
    activate_line,
    install_shims,
    request_from_env,
    shim_pre_setup,
    split_wrapped_call,
    template_wraps_agent_execute,
    wrapped_execute,
)
from hpcagent.errors import ConfigError, ContainerError

REPO = Path(__file__).resolve().parents[2]


def _fake_bin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apptainer version 1.3.4", ("apptainer", "1.3.4")),
        ("singularity-ce version 4.1.0-jammy", ("singularity", "4.1.0-jammy")),
        ("singularity version 3.8.7-1.el8", ("singularity", "3.8.7-1.el8")),
        ("3.5.3", ("singularity", "3.5.3")),
        ("Docker version 24.0.7", None),
    ],
)
def test_parse_version(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_version(text) == expected


def test_resolve_prefers_apptainer_then_singularity(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _fake_bin(bin_dir, "singularity", 'echo "singularity-ce version 4.0.1"')
    rt = resolve_runtime(env={"PATH": str(bin_dir)})
    assert (rt.flavor, rt.version, rt.env_prefix) == ("singularity", "4.0.1", "SINGULARITYENV_")
    _fake_bin(bin_dir, "apptainer", 'echo "apptainer version 1.2.5"')
    rt = resolve_runtime(env={"PATH": str(bin_dir)})
    assert (rt.flavor, rt.path) == ("apptainer", str(bin_dir / "apptainer"))
    assert "apptainer 1.2.5" in rt.describe()


def test_resolve_configured_binary_and_errors(tmp_path: Path) -> None:
    standin = REPO / "tests" / "fakes" / "apptainer-standin"
    rt = resolve_runtime(str(standin))
    assert rt.version.endswith("-standin")
    with pytest.raises(ContainerError, match="not found"):
        resolve_runtime(env={"PATH": str(tmp_path)})
    liar = _fake_bin(tmp_path / "b", "apptainer", 'echo "hello"')
    with pytest.raises(ContainerError, match="not an Apptainer"):
        resolve_runtime(str(liar))


def test_normalise_image(tmp_path: Path) -> None:
    sif = tmp_path / "img.sif"
    sif.write_bytes(b"SIF")
    assert normalise_image(str(sif)) == str(sif)
    assert normalise_image(f"file://{sif}") == str(sif)
    assert normalise_image(str(tmp_path)) == str(tmp_path)
    assert normalise_image("docker://python:3.11") == "docker://python:3.11"
    assert normalise_image("oras://ghcr.io/a/b:1") == "oras://ghcr.io/a/b:1"
    assert normalise_image("nvidia/cuda:12.2.0-base") == "docker://nvidia/cuda:12.2.0-base"
    with pytest.raises(ContainerError, match="does not exist"):
        normalise_image(str(tmp_path / "missing.sif"))
    with pytest.raises(ContainerError):
        normalise_image("  ")


def test_request_for_task_precedence() -> None:
    cfg = ContainerSettings(default_image="docker://base:1", default_arguments=("--nv",))
    task = {"container": {"image": "docker://t:2", "arguments": "-B /data:/data --env 'A=b c'"}}
    assert request_for_task(task, cfg) == ContainerRequest(
        "docker://t:2", ("-B", "/data:/data", "--env", "A=b c")
    )
    assert request_for_task({"container": {}}, cfg) == ContainerRequest(
        "docker://base:1", ("--nv",)
    )
    assert request_for_task(task, cfg, override_image="/x.sif").image == "/x.sif"
    assert request_for_task({}, ContainerSettings()) is None
    with pytest.raises(ContainerError):
        split_arguments("--env 'unterminated")


def test_settings_from_config(tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        'agent { default_docker { image: "docker://py:3", arguments: ["--nv"] }\n'
        f' container {{ binary: /opt/apptainer, cache_dir: "{tmp_path}/c", binds: ["/a:/b:ro"],'
        " pull_on_submit: true, cleanenv: false } }\n"
    )
    cfg = load_settings(config_file=conf, env={}).container
    assert cfg.binary == "/opt/apptainer"
    assert cfg.cache_dir == tmp_path / "c"
    assert cfg.binds == ("/a:/b:ro",)
    assert cfg.pull_on_submit is True
    assert cfg.cleanenv is False
    assert (cfg.default_image, cfg.default_arguments) == ("docker://py:3", ("--nv",))
    assert cfg.ssh_dir == Path("~/.ssh").expanduser()  # mapped by default, as clearml-agent
    assert cfg.forward_ssh_agent is True
    assert cfg.pull_timeout_s == 1800.0  # from defaults.conf


def test_settings_reject_a_bad_mode(tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text('agent { container { mode: sideways, ssh_dir: "" } }\n')
    with pytest.raises(ConfigError, match=r"agent\.container\.mode"):
        load_settings(config_file=conf, env={})
    conf.write_text('agent { container { ssh_dir: "", pull_on_submit: maybe } }\n')
    with pytest.raises(ConfigError, match="pull_on_submit"):
        load_settings(config_file=conf, env={})


def test_inside_detection() -> None:
    assert running_inside_container({"APPTAINER_CONTAINER": "/img.sif"})
    assert not running_inside_container({})


# -- the seed's template form --------------------------------------------------------------


def test_template_detection_and_render() -> None:
    assert template_wraps_agent_execute("srun singularity exec --nv ${CLEARML_AGENT_EXECUTE}\n")
    assert template_wraps_agent_execute("apptainer exec ${CLEARML_AGENT_EXECUTE}")
    assert not template_wraps_agent_execute("srun ${CLEARML_AGENT_EXECUTE}\nsingularity exec x")
    assert (
        wrapped_execute("docker://py:3.11", "hpcagent execute --id t1")
        == "docker://py:3.11 hpcagent execute --id t1"
    )
    assert wrapped_execute("py:3.11", "x") == "docker://py:3.11 x"  # a bare Docker name
    assert wrapped_execute("/img dir/x.sif", "x") == "'/img dir/x.sif' x"
    assert wrapped_execute("library://lab/img:1", "x") == "library://lab/img:1 x"
    assert shim_pre_setup("/s d") == "export PATH='/s d':\"$PATH\""


def test_split_wrapped_call() -> None:
    call = ["exec", "--nv", "-B", "/d", "img.sif", "hpcagent", "execute", "--id", "t"]
    assert split_wrapped_call(call) == (
        "img.sif",
        ["--nv", "-B", "/d"],
        ["hpcagent", "execute", "--id", "t"],
    )
    assert split_wrapped_call(["exec", "img.sif", "/v/bin/hpcagent", "execute", "--id", "t"]) == (
        "img.sif",
        [],
        ["/v/bin/hpcagent", "execute", "--id", "t"],
    )
    # the submitter's own rendering: env K=V PYTHON -m hpcagent execute ...
    submitter = ["env", "CLEARML_CONFIG_FILE=/s/c.conf", "/v/bin/python", "-m", "hpcagent"]
    call = ["exec", "-B", "/d", "docker://py:3", *submitter, "execute", "--id", "t"]
    assert split_wrapped_call(call) == (
        "docker://py:3",
        ["-B", "/d"],
        [*submitter, "execute", "--id", "t"],
    )
    assert split_wrapped_call(["exec", "img.sif", "python", "x.py"]) is None
    assert split_wrapped_call(["exec", "hpcagent", "execute", "--id", "t"]) is None
    assert split_wrapped_call(["pull", "a", "b", "c"]) is None


def test_shim_end_to_end(tmp_path: Path) -> None:
    """`srun singularity exec FLAGS IMAGE hpcagent execute ...` with the shim first on PATH:
    the wrapped call reaches the host executor with the image handed over; other calls reach
    the real binary unchanged."""
    real_dir = tmp_path / "real"
    _fake_bin(real_dir, "singularity", 'echo "REAL $*"')
    shims = install_shims(tmp_path / "shims", sys.executable)
    assert os.access(shims / "singularity", os.X_OK)
    # the host's hpcagent, recording what it was given
    host_bin = tmp_path / "exe"
    _fake_bin(host_bin, "hpcagent", f'echo "EXEC $* | ${ENV_IMAGE} | ${ENV_ARGS} | ${ENV_BINARY}"')
    env = {
        **os.environ,
        "PATH": f"{shims}:{real_dir}:{host_bin}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
    }
    line = wrapped_execute("docker://py:3.11", "hpcagent execute --id t9")
    script = (
        f"{shim_pre_setup(shims)}\n"
        f"singularity exec --nv -B /data {line}\n"
        "singularity pull x.sif y\n"
    )
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0] == (
        f"EXEC execute --id t9 | docker://py:3.11 | --nv -B /data | {real_dir}/singularity"
    )
    assert out[1] == "REAL pull x.sif y"
    # the self-installing form the submitter puts into ${CLEARML_PRE_SETUP}
    env["TMPDIR"] = str(tmp_path / "node-tmp")
    (tmp_path / "node-tmp").mkdir()
    script = f"{activate_line(sys.executable)}\nsingularity exec img.sif hpcagent execute --id t2\n"
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == [f"EXEC execute --id t2 | img.sif |  | {real_dir}/singularity"]
    assert (tmp_path / "node-tmp" / f"hpcagent-shims-{os.getuid()}" / "apptainer").exists()
    got = request_from_env(
        {ENV_IMAGE: "docker://py:3.11", ENV_ARGS: "--nv -B /data", ENV_BINARY: "/r"}
    )
    assert got == (ContainerRequest("docker://py:3.11", ("--nv", "-B", "/data")), "/r")
    assert request_from_env({}) is None
