"""SDK-made tasks in container mode (issue 13, point 5): ``hpcagent execute --docker IMAGE``
(the real Docker engine, image ``hpcagent-test-base``) and ``--container SANDBOX`` (the
Apptainer path through tests/fakes/apptainer-standin, a TEST STAND-IN over bubblewrap), each
compared with the official ``clearml-agent execute`` on a clone of the same task (venv mode).

Inside the image the task's venv is built with the image's Python from the task's recorded
requirements (clearml, matplotlib, tensorboardX, joblib ...) out of a wheelhouse bound in
read-only (``agent.container.binds`` + ``agent.package_manager.extra_args: [--no-index,
--find-links, DIR]``, as docs/containers.md tells users of nodes without internet). The
container reaches the server on the host's loopback (Docker ``--network host``; Apptainer
shares the host's network). ``Task.init()`` and ``Task.current_task()`` attach to the
executor's task, and its scalars, console, artifact and ``output_uri`` model uploads and the
framework auto-logging land in that task on the configured server (tests/sdk_tier.py compare).

The root filesystem, bwrap and Docker fixtures come from test_container_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_execute, task_log_lines
from sdk_tier import CASES, Run, Runner, Tier, compare, make_tier, result, tier_conf
from test_container_e2e import STANDIN, _image_python, bwrap, docker_image, rootfs  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

#: Args, scalars, an artifact upload, Task.current_task(); then framework auto-logging with an
#: output_uri model upload.
CONTAINER_CASES = ["init_argparse", "framework_autolog"]


@pytest.fixture
def tier(tmp_path: Path, embedded_server_session: Any) -> Tier:
    """A tier per test: each runs a case again (a case finds its task by the tier's tag)."""
    return make_tier(tmp_path, embedded_server_session)


def container_runner(kind: str, image: str) -> Runner:
    """hpcagent execute in container mode (``kind`` docker or apptainer) with the tier's
    wheelhouse bound read-only into the container."""

    def run(tier: Tier, task_id: str, manager: str) -> Run:
        conf = tier_conf(tier, f"{kind}-{task_id}", manager)
        data = json.loads(conf.read_text())
        data["agent"]["container"] = {
            "binary": str(STANDIN),
            "cache_dir": str(tier.root / "images"),
            "binds": [f"{tier.wheelhouse}:{tier.wheelhouse}:ro"],
        }
        conf.write_text(json.dumps(data))
        flag = "--docker" if kind == "docker" else "--container"
        res = run_execute(task_id, conf, flag, image, timeout=900)
        return result(tier, task_id, res.returncode, res.stdout + res.stderr)

    return run


@pytest.mark.parametrize("case", CONTAINER_CASES)
@pytest.mark.parametrize("kind", [pytest.param("docker", marks=pytest.mark.docker), "apptainer"])
def test_sdk_task_in_container_as_under_clearml_agent(
    tier: Tier, kind: str, case: str, request: pytest.FixtureRequest
) -> None:
    if kind == "docker":
        image = request.getfixturevalue("docker_image")
    else:
        request.getfixturevalue("bwrap")
        image = str(request.getfixturevalue("rootfs"))
    hp, _ = compare(tier, CASES[case](tier), container_runner(kind, image))
    assert hp.args is not None
    assert hp.args["same_task"] is True
    # it ran in the image: the executor's notes in the task's log name the container, and the
    # venv was built with the image's Python (bookworm's), not this host's
    lines = task_log_lines(tier.server, hp.task_id)
    shown = "docker image " if kind == "docker" else "image "
    assert any(line.startswith(f"hpcagent: container: {shown}{image}") for line in lines), lines
    python = _image_python(Path(str(request.getfixturevalue("rootfs"))))
    env_line = next(line for line in lines if line.startswith("hpcagent: environment: Python "))
    assert env_line.startswith(f"hpcagent: environment: Python {python},"), env_line
