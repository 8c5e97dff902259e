"""``hpcagent build``'s recipes against golden files: the Dockerfile and its Apptainer
definition (spython's conversion), as a user's task makes them.

The context folder is written as ``{CONTEXT}`` in the goldens; HPCAGENT_UPDATE_GOLDEN=1
rewrites them after a deliberate change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcagent.config import ContainerSettings
from hpcagent.container.build import (
    BuildSpec,
    dockerfile_to_def,
    render_dockerfile,
    wheelhouse_argv,
)
from hpcagent.errors import ContainerError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "container"

# What the clearml SDK records for a script (the header comment and an `@ file://` line are
# what Task.init writes; comments are not requirements).
TASK = {
    "id": "4f3c2a1b0e9d4c8b8a7f6e5d4c3b2a19",
    "name": "train – ü 'quoted'",
    "script": {
        "binary": "python3",
        "entry_point": "train.py",
        "requirements": {"pip": "# Python 3.11.2 (main)\nnumpy==1.26.4\nclearml>=1.16\n"},
    },
    "container": {"image": "docker://hpcagent-test-base", "arguments": "--ipc=host"},
}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HPCAGENT_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (HPCAGENT_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("entry", ["reuse_task", "clone_task", None])
def test_dockerfile_golden(entry: str | None) -> None:
    spec = BuildSpec.for_task(TASK, ContainerSettings(), entry)
    assert spec.base_image == "hpcagent-test-base"
    assert spec.requirements == ("numpy==1.26.4", "clearml>=1.16")
    _check(f"build.{entry or 'env-only'}.Dockerfile", render_dockerfile(spec))


@pytest.mark.parametrize(
    ("bootstrap", "base"),
    [("docker-daemon", "hpcagent-test-base"), ("localimage", "/images/base.sif")],
)
def test_definition_golden(tmp_path: Path, bootstrap: str, base: str) -> None:
    spec = BuildSpec.for_task(TASK, ContainerSettings(), "reuse_task")
    context = tmp_path / "ctx-dir"
    context.mkdir()
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(render_dockerfile(spec))
    text = dockerfile_to_def(dockerfile, bootstrap=bootstrap, base=base, context=context)
    _check(f"build.{bootstrap}.def", text.replace(str(context), "{CONTEXT}"))


def test_definition_refuses_a_build_folder_with_spaces(tmp_path: Path) -> None:
    context = tmp_path / "ctx dir"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM base\n")
    with pytest.raises(ContainerError, match="space"):
        dockerfile_to_def(context / "Dockerfile", bootstrap="docker", base="b", context=context)


def test_default_image_and_no_image() -> None:
    task = {**TASK, "container": {}}
    cfg = ContainerSettings(default_image="nvidia/cuda:12.2.0-base")
    assert BuildSpec.for_task(task, cfg, None).base_image == "nvidia/cuda:12.2.0-base"
    with pytest.raises(ContainerError, match="nothing to build on"):
        BuildSpec.for_task(task, ContainerSettings(), None)


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "x\nRUN rm -rf /"},
        {"container": {"image": "base\nRUN curl evil"}},
        {"container": {"image": "base; rm -rf /"}},
    ],
)
def test_hostile_values_never_reach_the_recipe(bad: dict[str, object]) -> None:
    with pytest.raises(ContainerError):
        BuildSpec.for_task({**TASK, **bad}, ContainerSettings(), "reuse_task")


def test_bad_entry_point() -> None:
    with pytest.raises(ContainerError, match="entry-point"):
        BuildSpec.for_task(TASK, ContainerSettings(), "run_forever")


def test_wheelhouse_for_another_python(tmp_path: Path) -> None:
    argv = wheelhouse_argv(tmp_path, ["numpy==1.26.4"], "3.9")
    assert argv[3] == "download"
    assert argv[argv.index("--python-version") + 1] == "3.9"
    assert "cp39" in argv
    assert argv[-1] == "numpy==1.26.4"
