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

import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcagent.errors import CommandError, TemplateError
from hpcagent.process import run_command
from hpcagent.submitter.options import job_name
from hpcagent.templating import RenderContext

CONTAINER_MODES = ("singularity", "container")
# The seed's template form `[srun] singularity exec ${CLEARML_AGENT_EXECUTE}` (docs/containers.md;
# same rule as hpcagent.executor.container_shim.template_wraps_agent_execute).
_WRAPPED = re.compile(r"\b(singularity|apptainer)\s+exec\b[^\n]*\$\{CLEARML_AGENT_EXECUTE\}")


def task_image(task: Mapping[str, Any], config: Callable[..., Any]) -> str:
    """The task's ``container.image``, else ``agent.default_docker.image``."""
    container = task.get("container") or {}
    image = str(container.get("image") or "").strip()
    return image or str(config("agent.default_docker.image", "") or "").strip()


def prepull_image(image: str, config_file: Path | None, timeout_s: float) -> str:
    """Pull ``image`` once into the shared cache here (login node) and return the SIF path,
    through the executor's pull-once code as a subprocess (agent.container.pull_on_submit)."""
    argv = [sys.executable, "-m", "hpcagent.executor.container_cache", "pull", image]
    if config_file is not None:
        argv += ["--config-file", str(config_file)]
    try:
        res = run_command(argv, timeout=timeout_s)
    except CommandError as exc:
        raise TemplateError(f"pulling {image} failed: {exc}") from exc
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise TemplateError(f"pulling {image} failed: {res.stderr.strip()[-1000:]}")
    return lines[-1]


def prepull_for_task(
    task: Mapping[str, Any],
    config: Callable[..., Any],
    container_mode: str | None,
    config_file: Path | None,
) -> str:
    """The pre-pulled SIF for the task in singularity mode with
    ``agent.container.pull_on_submit``; "" when that does not apply. Raises TemplateError."""
    wanted = task_image(task, config) if container_mode == "singularity" else ""
    if not wanted or str(config("agent.container.pull_on_submit", False)).lower() not in (
        "true",
        "1",
        "yes",
    ):
        return ""
    timeout = float(config("agent.container.pull_timeout_sec", 1800) or 1800) + 120
    return prepull_image(wanted, config_file, timeout)


def _wrapped_execute(
    image: str, command: str, hpcagent: Sequence[str], config: Callable[..., Any]
) -> tuple[str, str]:
    """For the seed's form: ``IMAGE <command>`` and, in mode host, the pre-setup line that
    puts hpcagent's singularity/apptainer shims first on PATH (they run the command on the
    host; see hpcagent.executor.container_shim)."""
    if not image:
        raise TemplateError(
            "singularity mode: the task has no container.image and agent.default_docker.image "
            "is empty"
        )
    if "://" not in image and not image.startswith(("/", ".", "~")) and not image.endswith(".sif"):
        image = "docker://" + image  # a bare Docker name, as ClearML configs usually hold
    shim = ""
    if str(config("agent.container.mode", "host") or "host") == "host":
        python = hpcagent[0] if list(hpcagent[1:3]) == ["-m", "hpcagent"] else sys.executable
        shim = f'eval "$({shlex.quote(python)} -m hpcagent.executor.container_shim activate)"'
    return f"{shlex.quote(image)} {command}", shim


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
    template_text: str = "",
    image: str = "",
) -> RenderContext:
    """The render context for one task (pre/post setup from ``slurm.pre_setup/post_setup``).

    In singularity mode with the seed's ``singularity exec ${CLEARML_AGENT_EXECUTE}`` in
    ``template_text``, the image goes in front of the command (``image``: a pre-pulled SIF,
    else the task's or the default image) and the shim line is added to the pre-setup.
    """
    pre = config("slurm.pre_setup", "") or ""
    post = config("slurm.post_setup", "") or ""
    argv = list(hpcagent) if hpcagent is not None else hpcagent_argv(config)
    extra: dict[str, Any] = {"CLEARML_JOB_NAME": job_name(str(task.get("id", "")))}
    if project_name:
        extra["CLEARML_PROJECT_NAME"] = project_name
    extra["CLEARML_PROJECT_ID"] = task.get("project") or ""
    execute = agent_execute_command(
        str(task.get("id", "")),
        hpcagent=argv,
        config_file=config_file,
        container_mode=container_mode,
    )
    if container_mode == "singularity" and _WRAPPED.search(template_text):
        execute, shim = _wrapped_execute(image or task_image(task, config), execute, argv, config)
        pre = f"{pre}\n{shim}" if pre and shim else (pre or shim)
    return RenderContext(
        task=task,
        queue_name=queue_name,
        queue_id=queue_id,
        worker_id=worker_id,
        config=config,
        pre_setup=str(pre),
        agent_execute=execute,
        post_setup=str(post),
        extra=extra,
    )
