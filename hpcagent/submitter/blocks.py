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

import dataclasses
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcagent.config import ContainerSettings
from hpcagent.container.base import task_image
from hpcagent.container.cache import ensure_image
from hpcagent.container.shim import activate_line, template_wraps_agent_execute, wrapped_execute
from hpcagent.errors import ContainerError, ImagePullError, TemplateError
from hpcagent.submitter.options import QueueRef, SubmitterOptions, job_name
from hpcagent.templating import NameCache, RenderContext, render_file

CONTAINER_MODES = ("singularity", "container")


def prepull_for_task(
    task: Mapping[str, Any], cfg: ContainerSettings, container_mode: str | None
) -> str:
    """The SIF pulled here (login node) into the shared cache for the task in singularity mode
    with ``agent.container.pull_on_submit``; "" when that does not apply. The same pull-once
    code the executor uses. Raises ImagePullError when the pull fails."""
    wanted = task_image(task, cfg) if container_mode == "singularity" else ""
    if not wanted or not cfg.pull_on_submit:
        return ""
    try:
        return ensure_image(wanted, cfg)
    except ContainerError as exc:
        raise ImagePullError(f"pulling {wanted} failed: {exc}") from exc


def _wrapped_execute(
    image: str, command: str, hpcagent: Sequence[str], cfg: ContainerSettings
) -> tuple[str, str]:
    """For the seed's form: ``IMAGE <command>`` and, in mode host, the pre-setup line that
    puts hpcagent's singularity/apptainer shims first on PATH (they run the command on the
    host; see hpcagent.container.shim)."""
    if not image:
        raise TemplateError(
            "singularity mode: the task has no container.image and agent.default_docker.image "
            "is empty"
        )
    shim = ""
    if cfg.mode == "host":
        python = hpcagent[0] if list(hpcagent[1:3]) == ["-m", "hpcagent"] else sys.executable
        shim = activate_line(python)
    try:
        return wrapped_execute(image, command), shim
    except ContainerError as exc:
        raise TemplateError(str(exc)) from exc


def default_hpcagent_argv() -> list[str]:
    """The argv prefix that starts hpcagent on the compute node when ``slurm.hpcagent_command``
    is empty: the interpreter the submitter runs under, with ``-m hpcagent``."""
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
    pre_setup: str = "",
    post_setup: str = "",
    project_name: str = "",
    template_text: str = "",
    image: str = "",
    container: ContainerSettings | None = None,
) -> RenderContext:
    """The render context for one task. ``config`` answers ``${CONFIG…}`` lookups in templates;
    ``pre_setup``/``post_setup`` are ``slurm.pre_setup/post_setup``; ``hpcagent`` is the argv
    prefix of ``${CLEARML_AGENT_EXECUTE}`` (:func:`default_hpcagent_argv` when None).

    In singularity mode with the seed's ``singularity exec ${CLEARML_AGENT_EXECUTE}`` in
    ``template_text``, the image goes in front of the command (``image``: a pre-pulled SIF,
    else the task's or the default image) and the shim line is added to the pre-setup.
    ``container`` is ``Settings.container`` (defaults when not given).
    """
    pre, post = pre_setup, post_setup
    argv = list(hpcagent) if hpcagent is not None else default_hpcagent_argv()
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
    if container_mode == "singularity" and template_wraps_agent_execute(template_text):
        cfg = container or ContainerSettings()
        execute, shim = _wrapped_execute(image or task_image(task, cfg), execute, argv, cfg)
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


def render_for(
    task: Mapping[str, Any],
    q: QueueRef,
    opts: SubmitterOptions,
    config: Callable[..., Any],
    extra: Mapping[str, Any] | None = None,
    *,
    names: NameCache | None = None,
) -> str:
    """The job script of ``task`` from queue ``q``: what the submitter submits and what
    ``--dry-run`` prints (one code path, so the two never differ).

    With ``agent.container.pull_on_submit`` in singularity mode the image is pulled here first
    (a cached image returns at once) and the script names the pulled SIF. ``extra`` adds
    template values (the daemon's GPUs); ``names`` resolves project/parent/queue names for the
    templates (the loop keeps one per round). Raises :class:`ImagePullError` when that pull fails,
    :class:`TemplateError` when the template cannot be rendered for this task.
    """
    image = prepull_for_task(task, opts.container, opts.container_mode)
    ctx = build_context(
        task,
        queue_name=q.name,
        queue_id=q.id,
        worker_id=opts.worker_id,
        config=config,
        config_file=opts.config_file,
        container_mode=opts.container_mode,
        hpcagent=opts.hpcagent_argv,
        pre_setup=opts.pre_setup,
        post_setup=opts.post_setup,
        template_text=q.template.read_text(),
        image=image,
        container=opts.container,
    )
    if names is not None:
        ctx = dataclasses.replace(ctx, names=names)
    if extra:
        ctx = dataclasses.replace(ctx, extra={**ctx.extra, **extra})
    return render_file(q.template, ctx)
