"""SDK-made tasks under ``hpcagent execute`` and under the official ``clearml-agent execute``
(issue 13): ``Task.init`` + argparse, ``execute_remotely``, ``clearml-task`` with local changes,
``Task.create(argparse_args=...)``, a zero-context diff on a feature-branch commit, a task that
fails itself, a Poetry project; status, arguments seen and scalars equal (tests/sdk_tier.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import get_task
from sdk_tier import CASES, Tier, compare, make_tier

# a case installs its venv twice (hpcagent, clearml-agent): minutes on a loaded machine
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory, embedded_server_session: Any) -> Tier:
    return make_tier(tmp_path_factory.mktemp("sdk-tier"), embedded_server_session)


@pytest.mark.parametrize("kind", list(CASES))
def test_sdk_made_task_runs_as_under_clearml_agent(tier: Tier, kind: str) -> None:
    hp, _ = compare(tier, CASES[kind](tier))
    if kind == "fails_itself":
        assert get_task(tier.server, hp.task_id)["status_reason"] == "the script failed itself"
