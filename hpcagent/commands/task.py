"""``hpcagent task …`` and ``hpcagent queue …``: create, enqueue, inspect and control tasks.

Every command talks to the API server of the effective configuration (``--config-file`` of
the top-level group, ``CLEARML_API_*``) through :class:`hpcagent.api.ApiClient`. Output is a
readable table or summary by default and JSON with ``--json``. Errors are raised as
:class:`~hpcagent.errors.HpcAgentError` subclasses (one line on stderr, non-zero exit status).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from hpcagent.api import ApiClient
from hpcagent.api.tasks import TASK_STATUSES
from hpcagent.commands.common import clip, emit_json, get_client, json_option, local_time, table
from hpcagent.errors import ApiError, NotFoundError, ServerUnreachable, TaskEndedError
from hpcagent.taskbuild import TaskSpec, create_task, merge_params, parse_pairs

#: Statuses in which a task may still produce log lines.
_LIVE_STATUSES = {"queued", "in_progress"}


def _resolve_queue(client: ApiClient, queue: str | None) -> str | None:
    """The id of ``queue`` (name or id) when given; an unknown queue fails before anything is
    created."""
    return str(client.queues.resolve(queue)["id"]) if queue else None


def _enqueue_and_print(
    client: ApiClient,
    task_id: str,
    queue_id: str | None,
    command: str,
    as_json: bool,
    **extra: str | None,
) -> None:
    """The end of ``task create`` / ``task clone``: enqueue the new task in ``queue_id`` when
    given, then print its id, or JSON with its id, queue id and ``extra``. When the enqueue
    fails the new task's id is printed all the same and the error says the task exists."""
    try:
        if queue_id:
            client.tasks.enqueue(
                task_id, queue_id, status_reason=f"enqueued by hpcagent task {command}"
            )
    except ApiError as exc:
        click.echo(json.dumps({"id": task_id, **extra, "queue": None}) if as_json else task_id)
        raise type(exc)(
            exc.endpoint,
            exc.result_code,
            exc.subcode,
            f"task {task_id} was created but not enqueued: {exc.message}",
        ) from exc
    if as_json:
        emit_json({"id": task_id, **extra, "queue": queue_id})
    else:
        click.echo(task_id)


def _queue_names(client: ApiClient) -> dict[str, str]:
    return {str(q.get("id")): str(q.get("name", "")) for q in client.queues.get_all()}


# -- task ----------------------------------------------------------------------------------------


@click.group("task")
def task_group() -> None:
    """Create, enqueue, inspect and control tasks on the API server."""


@task_group.command("create")
@click.option("--project", required=True, help="Project name (created when missing).")
@click.option("--name", required=True, help="Task name (at least 3 characters).")
@click.option(
    "--script",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A local script; its text is stored in the task (no repository).",
)
@click.option("--repo", help="Git repository URL to clone.")
@click.option("--branch", help="Branch to check out (with --repo).")
@click.option("--commit", help="Commit to check out (with --repo).")
@click.option("--entry-point", help="Script inside the repository (with --repo), e.g. train.py.")
@click.option("--working-dir", default=".", show_default=True, help="Folder to run from.")
@click.option(
    "--requirements",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A requirements.txt to install.",
)
@click.option("--packages", help='Packages to install, space separated: "numpy==2.0 pandas".')
@click.option(
    "--args",
    "args",
    multiple=True,
    help="Script argument on its command line: name=value (--name value), -x=value, "
    "name=true (a flag), name=[1,2] (nargs), 1=value (first positional).",
)
@click.option("--container", help="Container image to run the task in.")
@click.option("--container-args", default="", help="Extra container arguments (one string).")
@click.option("--user-property", multiple=True, help="User property k=v (hyperparams properties).")
@click.option("--binary", default="python3", show_default=True, help="Interpreter to run with.")
@click.option("--type", "task_type", default="training", show_default=True, help="Task type.")
@click.option("--enqueue", "queue", help="Enqueue the new task in this queue (name or id).")
@json_option
@click.pass_context
def create_cmd(
    ctx: click.Context,
    project: str,
    name: str,
    script: Path | None,
    repo: str | None,
    branch: str | None,
    commit: str | None,
    entry_point: str | None,
    working_dir: str,
    requirements: Path | None,
    packages: str | None,
    args: tuple[str, ...],
    container: str | None,
    container_args: str,
    user_property: tuple[str, ...],
    binary: str,
    task_type: str,
    queue: str | None,
    as_json: bool,
) -> None:
    """Create a task from a local script or a git repository; print its id."""
    spec = TaskSpec(
        project=project,
        name=name,
        script_text=script.read_text(encoding="utf-8") if script is not None else None,
        script_name=script.name if script is not None else "",
        repo=repo,
        branch=branch or "",
        commit=commit or "",
        entry_point=entry_point or "",
        working_dir=working_dir,
        binary=binary,
        task_type=task_type,
        requirements=requirements.read_text(encoding="utf-8") if requirements else None,
        packages=tuple(packages.split()) if packages else (),
        args=parse_pairs(args, "--args"),
        user_properties=parse_pairs(user_property, "--user-property"),
        container_image=container or "",
        container_args=container_args,
    )
    spec.check()  # before any server call
    client = get_client(ctx)
    queue_id = _resolve_queue(client, queue)  # an unknown queue fails before the task exists
    task_id, project_id = create_task(client, spec)
    _enqueue_and_print(client, task_id, queue_id, "create", as_json, project=project_id)


@task_group.command("enqueue")
@click.argument("task_id")
@click.option("--queue", "-q", required=True, help="Queue name or id.")
@json_option
@click.pass_context
def enqueue_cmd(ctx: click.Context, task_id: str, queue: str, as_json: bool) -> None:
    """Put task TASK_ID into a queue."""
    client = get_client(ctx)
    q = client.queues.resolve(queue)
    reply = client.tasks.enqueue(task_id, str(q["id"]), status_reason="enqueued by hpcagent")
    if as_json:
        emit_json({"id": task_id, "queue": q["id"], "queue_name": q.get("name"), **reply})
    else:
        click.echo(f"task {task_id} queued in {q.get('name') or q['id']}")


@task_group.command("list")
@click.option("--status", type=click.Choice(TASK_STATUSES), help="Only tasks with this status.")
@click.option("--queue", "-q", help="Only tasks whose execution queue is this (name or id).")
@click.option("--project", help="Only tasks of this project (name).")
@click.option("--limit", default=50, show_default=True, help="Show at most this many (newest).")
@json_option
@click.pass_context
def list_cmd(
    ctx: click.Context,
    status: str | None,
    queue: str | None,
    project: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tasks, newest first."""
    client = get_client(ctx)
    filters: dict[str, Any] = {
        "only_fields": [
            "id",
            "name",
            "status",
            "status_message",
            "project",
            "execution.queue",
            "last_update",
            "created",
        ]
    }
    if status:
        filters["status"] = [status]
    if not queue:  # the queue is filtered here, so page on the server only without it
        filters.update(order_by=["-last_update"], page=0, page_size=max(1, limit))
    if project:
        proj = client.projects.by_name(project)
        if proj is None:
            raise NotFoundError("projects.get_all", 400, 101, f"no project named {project!r}")
        filters["project"] = [proj["id"]]
    tasks = client.tasks.get_all(**filters)
    names = _queue_names(client)
    if queue:
        qid = str(client.queues.resolve(queue)["id"])
        tasks = [t for t in tasks if _obj(t.get("execution")).get("queue") == qid]
    if status:  # servers may ignore unknown filters; filter again here
        tasks = [t for t in tasks if t.get("status") == status]
    tasks.sort(key=lambda t: str(t.get("last_update") or t.get("created") or ""), reverse=True)
    tasks = tasks[: max(0, limit)]
    if as_json:
        emit_json(tasks)
        return
    rows = [
        [
            t.get("id"),
            t.get("name"),
            t.get("status"),
            names.get(str(_obj(t.get("execution")).get("queue") or ""), ""),
            local_time(t.get("last_update") or t.get("created")),
            clip(t.get("status_message"), 200),
        ]
        for t in tasks
    ]
    table(
        ["ID", "NAME", "STATUS", "QUEUE", "UPDATED", "MESSAGE"],
        rows,
        empty="no tasks match",
        shrink=("NAME", "MESSAGE"),
    )


_SECTIONS = ("script", "execution", "container", "hyperparams", "configuration", "runtime")


def _obj(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else empty (a stored field of the wrong type)."""
    return value if isinstance(value, dict) else {}


@task_group.command("show")
@click.argument("task_id")
@json_option
@click.pass_context
def show_cmd(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task: status, code, requirements, container, parameters."""
    client = get_client(ctx)
    task = client.tasks.get_by_id(task_id)
    if as_json:
        emit_json(task)
        return
    # A stored record may hold anything (clearml-server keeps what it was given): a section
    # of the wrong type is shown as such, never a traceback.
    odd = [k for k in _SECTIONS if task.get(k) is not None and not isinstance(task.get(k), dict)]
    script, execution, container, reqs = (
        _obj(task.get("script")),
        _obj(task.get("execution")),
        _obj(task.get("container")),
        _obj(_obj(task.get("script")).get("requirements")),
    )
    queue_id = execution.get("queue") or ""
    queue_name = _queue_names(client).get(str(queue_id), "") if queue_id else ""
    pip = str(reqs.get("pip") or "").strip()
    project = str(task.get("project") or "")
    if project:
        with contextlib.suppress(ApiError):  # a deleted project: show the id alone
            project = f"{client.projects.get_by_id(project).get('name')} ({project})"
    lines: list[tuple[str, Any]] = [
        ("id", task.get("id")),
        ("name", task.get("name")),
        ("project", project),
        ("type", task.get("type")),
        ("status", task.get("status")),
        ("status_reason", task.get("status_reason")),
        ("status_message", task.get("status_message")),
        ("queue", f"{queue_name} ({queue_id})" if queue_name else queue_id),
        ("created", local_time(task.get("created"))),
        ("started", local_time(task.get("started"))),
        ("completed", local_time(task.get("completed"))),
        ("last_update", local_time(task.get("last_update"))),
        ("last_worker", task.get("last_worker")),
        ("repository", script.get("repository")),
        ("branch", script.get("branch")),
        ("commit", script.get("version_num")),
        ("entry_point", script.get("entry_point")),
        ("working_dir", script.get("working_dir")),
        ("binary", script.get("binary")),
        ("script text", f"{len(script.get('diff') or '')} chars" if script.get("diff") else ""),
        ("requirements", pip),
        (
            "container",
            " ".join(str(v) for v in (container.get("image"), container.get("arguments")) if v),
        ),
        ("invalid fields", ", ".join(f"{k} ({type(task[k]).__name__})" for k in odd)),
    ]
    for section, params in sorted(_obj(task.get("hyperparams")).items(), key=lambda kv: str(kv[0])):
        if not isinstance(params, dict):
            lines.append((str(section), params))
            continue
        for key, item in sorted(params.items(), key=lambda kv: str(kv[0])):
            value = item.get("value") if isinstance(item, dict) else item
            lines.append((f"{section}/{key}", value))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        if value not in (None, ""):  # a value of several lines (requirements) stays aligned
            text = str(value).replace("\n", "\n" + " " * (width + 2))
            click.echo(f"{key:<{width}}  {text}")


def _iter_log(client: ApiClient, task_id: str, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Log events of ``task_id`` newer than ``state`` (updated in place), oldest first."""
    batch = 500
    while True:
        body: dict[str, Any] = {"batch_size": batch, "navigate_earlier": False}
        if state.get("last_ts") is not None:
            body["from_timestamp"] = state["last_ts"]
        data = client.events.get_task_log(task_id, **body)
        events = sorted(
            (e for e in data.get("events") or [] if isinstance(e, dict)),
            key=lambda e: int(e.get("timestamp") or 0),
        )
        new = 0
        for event in events:
            ts = int(event.get("timestamp") or 0)
            key = (ts, str(event.get("msg", "")))
            last = state.get("last_ts")
            if last is not None and (ts < last or (ts == last and key in state["seen"])):
                continue
            if last is None or ts > last:
                state["last_ts"], state["seen"] = ts, set()
            state["seen"].add(key)
            new += 1
            yield event
        if new == 0 or len(events) < batch:
            return


@task_group.command("log")
@click.argument("task_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the task ends.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between polls.")
@click.option(
    "--outage",
    default=120.0,
    show_default=True,
    help="With --follow: seconds to wait for a server that stopped answering.",
)
@json_option
@click.pass_context
def log_cmd(
    ctx: click.Context, task_id: str, follow: bool, interval: float, outage: float, as_json: bool
) -> None:
    """Print the console log of a task (JSON: one event object per line).

    With --follow, wait until the task ends: exit 0 when it completed, 8 when it failed or was
    stopped (so that ``task log ID --follow && next`` waits for success). Once following, a
    server that stops answering (a restart) is waited for up to --outage seconds, with one
    line on stderr, before the command gives up (exit 5)."""
    client = get_client(ctx)
    client.tasks.get_status(task_id)  # a clear error for an unknown task
    state: dict[str, Any] = {"last_ts": None, "seen": set()}

    def emit_new() -> None:
        for event in _iter_log(client, task_id, state):
            if as_json:
                click.echo(json.dumps(event, sort_keys=True, default=str))
            else:
                click.echo(str(event.get("msg", "")).rstrip("\n"))

    emit_new()
    down_since: float | None = None
    while follow:
        try:
            status = client.tasks.get_status(task_id)
            live = status.get("status") in _LIVE_STATUSES
            if live:
                time.sleep(interval)
            emit_new()  # once more after the end: lines sent just before the final status
        except ServerUnreachable as exc:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                click.echo(f"warning: {exc}; still following for up to {outage:g} s", err=True)
            if now - down_since >= outage:
                raise
            time.sleep(interval)
            continue
        if down_since is not None:
            click.echo("warning: the server answers again; following", err=True)
            down_since = None
        if not live:
            _check_ended(client, task_id, status)
            return


def _check_ended(client: ApiClient, task_id: str, status: dict[str, Any]) -> None:
    """Raise TaskEndedError when the task ended failed or stopped (a created task, never run,
    also counts: following it cannot wait for anything)."""
    state = str(status.get("status") or "")
    if state in ("completed", "published", "closed"):
        return
    task = client.tasks.get_by_id(task_id)
    why = task.get("status_message") or task.get("status_reason") or "no reason given"
    raise TaskEndedError(f"task {task_id} is {state}: {why}")


@task_group.command("abort")
@click.argument("task_id")
@json_option
@click.pass_context
def abort_cmd(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Abort a task: a queued task stops at once, a running one is asked to stop."""
    client = get_client(ctx)
    client.tasks.stop(task_id, status_reason="aborted by user (hpcagent task abort)")
    status = client.tasks.get_status(task_id)
    if as_json:
        emit_json(status)
    elif status.get("status") == "stopped":
        click.echo(f"task {task_id} stopped")
    else:
        click.echo(
            f"task {task_id}: stop requested ({status.get('status')}, "
            f"{status.get('status_message') or 'no message'})"
        )


@task_group.command("clone")
@click.argument("task_id")
@click.option("--name", help="Name of the new task (default: the server's).")
@click.option("--args", "args", multiple=True, help="Override script argument k=v.")
@click.option("--enqueue", "queue", help="Enqueue the clone in this queue (name or id).")
@json_option
@click.pass_context
def clone_cmd(
    ctx: click.Context,
    task_id: str,
    name: str | None,
    args: tuple[str, ...],
    queue: str | None,
    as_json: bool,
) -> None:
    """Clone a task, optionally changing arguments and enqueuing it; print the new id."""
    overrides = parse_pairs(args, "--args")
    client = get_client(ctx)
    queue_id = _resolve_queue(client, queue)
    new_id = client.tasks.clone(task_id, new_task_name=name)
    if overrides:
        # hyperparams are replaced whole by tasks.edit: read, merge, write back (as the SDK does)
        hyper = client.tasks.get_by_id(new_id).get("hyperparams") or {}
        client.tasks.edit(new_id, hyperparams=merge_params(hyper, "Args", overrides))
    _enqueue_and_print(client, new_id, queue_id, "clone", as_json, parent=task_id)


@task_group.command("reset")
@click.argument("task_id")
@click.option("--force", is_flag=True, help="Ask the server to reset even a finished task.")
@json_option
@click.pass_context
def reset_cmd(ctx: click.Context, task_id: str, force: bool, as_json: bool) -> None:
    """Reset a task to created (clears its queue, run times, runtime info and log)."""
    client = get_client(ctx)
    client.tasks.reset(task_id, force=force)
    status = client.tasks.get_status(task_id)
    if as_json:
        emit_json(status)
    else:
        click.echo(f"task {task_id} is {status.get('status')}")
