"""The trusted blocks the submitter puts into templates, and the render context.

``${CLEARML_AGENT_EXECUTE}`` becomes one shell command that runs the executor for the
task on the compute node::

    env CLEARML_CONFIG_FILE=<state>/clearml.conf [HPCAGENT_CONTAINER_MODE=singularity] \\
        <python> -m hpcagent execute --id <task id>

Every piece is ``shlex.quote``-d. The configuration reaches the job through a 0600 file
in the state folder, never through the script text or argv (no secrets in either).
``<python> -m hpcagent`` is the interpreter the submitter runs under unless the config
key ``slurm.hpcagent_command`` (a command line, split like a shell would) says otherwise.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcagent.templating import RenderContext

CONTAINER_MODES = ("singularity", "container")


def hpcagent_argv(config: Callable[..., Any]) -> list[str]:
    """The argv prefix that starts hpcagent on the compute node."""
    custom = config("slurm.hpcagent_command", None)
    if isinstance(custom, str) and custom.strip():
        return shlex.split(custom)
    if isinstance(custom, list) and custom:
        return [str(x) for x in custom]
    return [sys.executable, "-m", "hpcagent"]


def agent_execute_command(
    task_id: str,
    *,
    hpcagent: Sequence[str],
    config_file: Path | None,
    container_mode: str | None = None,
) -> str:
    """The ``${CLEARML_AGENT_EXECUTE}`` command line (every word shell-quoted)."""
    words: list[str] = []
    env: list[str] = []
    if config_file is not None:
        env.append(f"CLEARML_CONFIG_FILE={config_file}")
    if container_mode:
        env.append(f"HPCAGENT_CONTAINER_MODE={container_mode}")
    if env:
        words += ["env", *env]
    words += [*hpcagent, "execute", "--id", task_id]
    return " ".join(shlex.quote(w) for w in words)


def build_context(
    task: Mapping[str, Any],
    *,
    queue_name: str,
    queue_id: str,
    worker_id: str,
    config: Callable[..., Any],
    config_file: Path | None,
    container_mode: str | None = None,
    hpcagent: Sequence[str] | None = None,
    project_name: str = "",
) -> RenderContext:
    """The render context for one task (pre/post setup from ``slurm.pre_setup/post_setup``)."""
    pre = config("slurm.pre_setup", "") or ""
    post = config("slurm.post_setup", "") or ""
    argv = list(hpcagent) if hpcagent is not None else hpcagent_argv(config)
    extra: dict[str, Any] = {"CLEARML_JOB_NAME": f"clearml_task_{task.get('id', '')}"}
    if project_name:
        extra["CLEARML_PROJECT_NAME"] = project_name
    extra["CLEARML_PROJECT_ID"] = task.get("project") or ""
    return RenderContext(
        task=task,
        queue_name=queue_name,
        queue_id=queue_id,
        worker_id=worker_id,
        config=config,
        pre_setup=str(pre),
        agent_execute=agent_execute_command(
            str(task.get("id", "")),
            hpcagent=argv,
            config_file=config_file,
            container_mode=container_mode,
        ),
        post_setup=str(post),
        extra=extra,
    )
