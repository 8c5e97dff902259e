"""The SDK-made tasks tier under real sbatch: every kind of task (tests/sdk_tier.py) is enqueued
to a queue that ``hpcagent-slurm`` serves on the one-host Slurm, and what the job's executor
made of it is compared with ``clearml-agent execute`` on a clone: status, arguments seen and
scalars equal.

Needs ``tests/slurm/cluster.sh up``; skipped with the reason when Slurm does not answer.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers as h
import pytest
from sdk_tier import CASES, SLURM_TEMPLATE, Run, Tier, compare, make_tier, result, tier_conf

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.timeout(1800)]


class Submitters:
    """One ``hpcagent-slurm`` per package manager type (uv, poetry), each on its own queue."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.procs: list[subprocess.Popen[bytes]] = []
        self.queues: dict[str, str] = {}
        self.logs: dict[str, Path] = {}
        template = tier.root / "sdk.template"
        template.write_text(SLURM_TEMPLATE)
        for manager in ("uv", "poetry"):
            conf = tier_conf(tier, f"slurm-{manager}", manager)
            data = json.loads(conf.read_text())
            data["slurm"] = {"state_dir": str(tier.root / f"state-{manager}")}
            conf.write_text(json.dumps(data))
            queue = tier.name(f"slurm-{manager}")
            tier.server.send("queues.create", {"name": queue})
            log = tier.root / f"submitter-{manager}.log"
            argv = [
                *h.SLURM_MAIN, "--config-file", str(conf), "--scheduler", "slurm",
                "--poll-interval", "1", "--template-files", str(template), "--queue", queue,
            ]  # fmt: skip
            self.procs.append(h.start_logged(argv, log, cwd=tier.root, env=h.clean_env()))
            self.queues[manager], self.logs[manager] = queue, log

    def run(self, tier: Tier, task_id: str, manager: str) -> Run:
        """Enqueue ``task_id`` for the submitter of ``manager`` and wait for its end."""
        tier.server.send("tasks.enqueue", {"task": task_id, "queue_name": self.queues[manager]})
        final = ("completed", "failed", "stopped")
        h.wait_status(tier.server, task_id, final, log=self.logs[manager], timeout=900)
        return result(tier, task_id, 0, "\n".join(h.task_log_lines(tier.server, task_id)))

    def stop(self) -> None:
        for proc in self.procs:
            h.stop_process(proc)


@pytest.fixture(scope="module")
def slurm_tier(embedded_server_session: Any) -> Iterator[tuple[Tier, Submitters]]:
    h.require_slurm()
    tier = make_tier(h.slurm_workdir("sdk-tier"), embedded_server_session)
    subs = Submitters(tier)
    try:
        yield tier, subs
    finally:
        subs.stop()


@pytest.mark.parametrize("kind", list(CASES))
def test_sdk_made_task_under_sbatch_as_under_clearml_agent(
    slurm_tier: tuple[Tier, Submitters], kind: str
) -> None:
    tier, subs = slurm_tier
    hp, _ = compare(tier, CASES[kind](tier), subs.run)
    task = h.get_task(tier.server, hp.task_id)
    runtime = task["runtime"]
    assert runtime.get("job_scheduler") == "slurm", runtime  # it ran in a Slurm job
    assert runtime.get("job_id"), runtime
