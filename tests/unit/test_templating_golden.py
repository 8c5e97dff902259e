"""Golden-file tests: every shipped template rendered for fixed tasks.

Set HPCAGENT_UPDATE_GOLDEN=1 to rewrite tests/golden/*.sh after an intended change
(then review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hpcagent.submitter.blocks import build_context
from hpcagent.templating import render_file

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
GOLDEN = ROOT / "tests" / "golden"
TASK_ID = "4f6c0a8e2b9d4c1fa7e3b5d6c8f0a1b2"

CONFIG: dict[str, Any] = {
    "slurm.pre_setup": "module load python/3.11",
    "slurm.post_setup": "echo done",
    "agent.default_docker.image": "docker://python:3.11-slim",
}


def _config(path: str, default: Any = None) -> Any:
    return CONFIG.get(path, default)


def _task(with_props: bool) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": TASK_ID,
        "name": "train resnet (lr=0.1); it's $fast",
        "project": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "status": "queued",
        "hyperparams": {"Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1"}}},
        "container": {},
    }
    if with_props:
        props = {
            "num_nodes": "2",
            "num_gpus": "4",
            "partition": "a100",
            "cpus": "16",
            "memory": "64G",
            "time_limit": "08:00:00",
            "user_key": "alice's key",
        }
        task["hyperparams"]["properties"] = {
            k: {"section": "properties", "name": k, "value": v} for k, v in props.items()
        }
        task["container"] = {"image": "docker://nvcr.io/nvidia/pytorch:24.01-py3"}
    return task


CASES = [
    (template, variant)
    for template in (
        "slurm.example.template",
        "slurm.gpu.template",
        "slurm.singularity.template",
        "slurm.example.j2",
        "gridengine.example.template",
    )
    for variant in ("defaults", "props")
]


@pytest.mark.parametrize(("template", "variant"), CASES)
def test_golden(template: str, variant: str) -> None:
    ctx = build_context(
        _task(variant == "props"),
        queue_name="gpu-queue",
        queue_id="9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        worker_id="login1:hpcagent-slurm",
        config=_config,
        config_file=Path("/home/alice/.hpcagent/slurm/clearml.conf"),
        container_mode="singularity" if "singularity" in template else None,
        hpcagent=["/opt/hpcagent/bin/python", "-m", "hpcagent"],
        pre_setup=_config("slurm.pre_setup"),
        post_setup=_config("slurm.post_setup"),
    )
    rendered = render_file(TEMPLATES / template, ctx)
    golden = GOLDEN / f"{template}.{variant}.sh"
    if os.environ.get("HPCAGENT_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered, encoding="utf-8")
    assert golden.exists(), f"missing {golden}; run with HPCAGENT_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(encoding="utf-8")


def test_defaults_differ_from_props() -> None:
    """The two variants really exercise defaults used and defaults overridden."""
    for template in ("slurm.example.template", "slurm.gpu.template", "slurm.example.j2"):
        a = (GOLDEN / f"{template}.defaults.sh").read_text(encoding="utf-8")
        b = (GOLDEN / f"{template}.props.sh").read_text(encoding="utf-8")
        assert a != b
    example = (GOLDEN / "slurm.example.template.props.sh").read_text(encoding="utf-8")
    assert "#SBATCH --nodes=2\n" in example
    example = (GOLDEN / "slurm.example.template.defaults.sh").read_text(encoding="utf-8")
    assert "#SBATCH --nodes=1\n" in example
