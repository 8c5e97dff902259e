"""``hpcagent daemon``: option parsing, worker ids, state folders and the job script."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcagent.cli import main_group, run
from hpcagent.commands.daemon import GREEDY, MachineStats, daemon_cmd
from hpcagent.commands.longrunning import expand_greedy
from hpcagent.daemon.run import DaemonRequest, job_template, state_dir_for, worker_id_for
from hpcagent.daemon.slots import GPU_VAR, NVIDIA_VAR
from hpcagent.templating import RenderContext, render_string


def test_expand_greedy_repeats_multi_value_flags() -> None:
    args = ["--queue", "quad=4", "dual=2", "--gpus", "0-7", "--uptime", "8-18 MON-FRI", "--x"]
    assert expand_greedy(args, GREEDY) == [
        "--queue", "quad=4", "--queue", "dual=2", "--gpus", "0-7",
        "--uptime", "8-18 MON-FRI", "--x",
    ]  # fmt: skip
    assert expand_greedy(["--queue", "a", "--", "b"], GREEDY) == ["--queue", "a", "--", "b"]


def test_worker_ids_differ_per_gpu_set_and_mode() -> None:
    ids = {
        worker_id_for("h", ["0"]),
        worker_id_for("h", ["1"]),
        worker_id_for("h", ["0", "1"]),
        worker_id_for("h", []),
        worker_id_for("h", None),
        worker_id_for("h", ["0", "1"], dynamic=True),
        worker_id_for("h", [], services=True),
    }
    assert ids == {
        "h:gpu0", "h:gpu1", "h:gpu0,1", "h:cpu", "h:gpuall", "h:dgpu0,1", "h:cpu:service",
    }  # fmt: skip
    dirs = {state_dir_for(Path("/r"), w) for w in ids}
    assert len(dirs) == len(ids)
    assert all(d.parent == Path("/r") for d in dirs)
    assert state_dir_for(Path("/r"), "a/../b:gpu0").name == "a_.._b_gpu0"


def _render(gpu_env: bool, extra: dict[str, str]) -> str:
    ctx = RenderContext(
        task={"id": "abc123"},
        queue_name="q x",
        worker_id="h:gpu0,1",
        agent_execute="python -m hpcagent execute --id abc123",
        extra=extra,
    )
    return render_string(job_template(gpu_env), ctx)


def test_job_script_exports_the_task_gpus() -> None:
    text = _render(True, {GPU_VAR: "0,1", NVIDIA_VAR: "0,1"})
    lines = text.splitlines()
    assert "export CUDA_VISIBLE_DEVICES=0,1" in lines
    assert "export NVIDIA_VISIBLE_DEVICES=0,1" in lines
    assert "export CLEARML_WORKER_ID=h:gpu0,1" in lines
    assert lines[-1] == "python -m hpcagent execute --id abc123"
    assert "from queue q_x" in text  # comment values are made safe (slug)
    cpu = _render(True, {GPU_VAR: "", NVIDIA_VAR: "none"}).splitlines()
    assert "export CUDA_VISIBLE_DEVICES=''" in cpu
    assert "export NVIDIA_VISIBLE_DEVICES=none" in cpu
    assert "CUDA_VISIBLE_DEVICES" not in _render(False, {})


def test_request_limit_rules(tmp_path: Path) -> None:
    def req(**kw: object) -> DaemonRequest:
        return DaemonRequest(
            queues=[("q", None)], state_dir=tmp_path, worker_id="w", job_config=tmp_path, **kw
        )  # type: ignore[arg-type]

    assert req().limit == 1
    assert req(dynamic=True).limit is None
    assert req(services=0).limit is None
    assert req(services=3).limit == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queue", "q", "--gpus", "0", "--cpu-only"], "not both"),
        (["--queue", "q", "--dynamic-gpus"], "needs --gpus"),
        (["--dynamic-gpus", "--gpus", "0-1", "--queue", "quad=4"], "needs 4 GPUs"),
        (["--gpus", "0"], "at least one --queue"),
        (["--queue", "q", "--gpus", "x;y"], "bad GPU id"),
        (["--queue", "q", "--gpus", "0", "--stop"], "is not running"),
        (["--queue", "q", "--singularity-mode", "--container-mode"], "not both"),
    ],
)
def test_usage_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(main_group, ["daemon", "--state-dir", str(tmp_path), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_machine_stats_use_the_agent_keys_and_are_throttled() -> None:
    stats = MachineStats(gpus=["0"], interval_s=3600.0)
    first = stats()
    machine = first["machine_stats"]
    assert machine["memory_free"] > 0
    assert isinstance(machine["cpu_usage"], list)
    assert stats() == {}  # the next report only after the interval
    assert MachineStats(gpus=[], interval_s=0.0).gpu is None  # --cpu-only: no GPU probe


@pytest.mark.parametrize(
    ("args", "services", "queues"),
    [
        (["--services-mode", "--queue", "q"], 0, ("q",)),
        (["--queue", "q", "--services-mode"], 0, ("q",)),
        (["--services-mode", "3", "--queue", "a", "b"], 3, ("a", "b")),
        (["--queue", "q"], None, ("q",)),
    ],
)
def test_services_mode_takes_an_optional_number(
    args: list[str], services: int | None, queues: tuple[str, ...]
) -> None:
    ctx = daemon_cmd.make_context("daemon", args)
    assert ctx.params["services"] == services
    assert ctx.params["queues"] == queues


@pytest.mark.parametrize(
    ("args", "docker", "gpus"),
    [
        (["--docker", "--gpus", "0", "--queue", "q"], "", "0"),  # clearml-agent's habit
        (["--queue", "q", "--docker"], "", None),
        (
            ["--docker", "nvidia/cuda:12.4.1-runtime", "--queue", "q"],
            "nvidia/cuda:12.4.1-runtime",
            None,
        ),
        (["--queue", "q"], None, None),
    ],
)
def test_docker_takes_an_optional_image(
    args: list[str], docker: str | None, gpus: str | None
) -> None:
    ctx = daemon_cmd.make_context("daemon", args)
    assert (ctx.params["docker"], ctx.params["gpus"], ctx.params["queues"]) == (
        docker,
        gpus,
        ("q",),
    )


def test_docker_runs_in_container_mode_with_the_default_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpcagent.daemon.run as daemon_run

    seen: list[Any] = []
    monkeypatch.setattr(
        daemon_run, "run_daemon", lambda settings, req, **kw: seen.append((settings, req))
    )
    conf = tmp_path / "c.conf"
    conf.write_text('api { api_server: "http://127.0.0.1:9" }\n')
    common = ["--config-file", str(conf), "daemon", "--state-dir", str(tmp_path / "s")]
    assert (
        run(main_group, [*common, "--docker", "python:3.12-slim", "--gpus", "0", "--queue", "q"])
        == 0
    )
    assert run(main_group, [*common, "--docker", "--cpu-only", "--queue", "q"]) == 0
    (s1, r1), (s2, r2) = seen
    assert (r1.container_mode, s1.container.default_image) == ("container", "python:3.12-slim")
    assert (r2.container_mode, s2.container.default_image) == ("container", "")
    assert run(main_group, [*common, "--docker", "--singularity-mode", "--queue", "q"]) == 2


def test_status_of_a_daemon_that_does_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text('api { api_server: "http://127.0.0.1:9" }\n')
    common = [
        "--config-file",
        str(conf),
        "daemon",
        "--state-dir",
        str(tmp_path / "s"),
        "--gpus",
        "1",
    ]
    capsys.readouterr()
    assert run(main_group, [*common, "--status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["running"] is False
    assert doc["worker"].endswith(":gpu1")
    assert doc["tasks"] == []
    assert run(main_group, [*common, "--status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(":gpu1: not running")
    assert out[-1] == "no tasks"
