"""``hpcagent queue …`` and ``hpcagent workers …``: queues and the agents that serve them.

Same conventions as ``hpcagent task``: the interactive client, a table by default, ``--json``.
"""

from __future__ import annotations

from typing import Any

import click

from hpcagent.api import ApiClient
from hpcagent.commands.common import clip, emit_json, get_client, json_option, local_time, table
from hpcagent.errors import ApiError, NotFoundError

# -- queue ---------------------------------------------------------------------------------------


@click.group("queue")
def queue_group() -> None:
    """Create, list, reorder and delete queues."""


@queue_group.command("create")
@click.argument("name")
@json_option
@click.pass_context
def queue_create_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create queue NAME and print its id; an existing queue's id is printed as it is (so that
    scripts can run this again)."""
    client = get_client(ctx)
    try:
        queue = client.queues.by_name(name)
        created = False
    except NotFoundError:
        queue = {"id": client.queues.create(name), "name": name}
        created = True
    if as_json:
        emit_json({"id": queue["id"], "name": queue.get("name", name), "created": created})
    else:
        click.echo(queue["id"])


def _pending(client: ApiClient, queue: dict[str, Any]) -> list[str]:
    entries = queue.get("entries")
    if not isinstance(entries, list):
        entries = client.queues.get_by_id(str(queue["id"])).get("entries") or []
    return [str(e.get("task")) for e in entries if isinstance(e, dict) and e.get("task")]


@queue_group.command("list")
@json_option
@click.pass_context
def queue_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List queues with the number of pending tasks."""
    client = get_client(ctx)
    queues = client.queues.get_all()
    rows = []
    for q in sorted(queues, key=lambda q: str(q.get("name", "")).lower()):
        entries = q.get("entries")
        if isinstance(entries, list):
            pending = len(entries)
        else:
            pending = client.queues.get_num_entries(str(q["id"]))
        rows.append({"id": q.get("id"), "name": q.get("name"), "pending": pending})
    if as_json:
        emit_json(rows)
    else:
        table(
            ["ID", "NAME", "PENDING"],
            [[r["id"], r["name"], r["pending"]] for r in rows],
            empty="no queues (hpcagent queue create NAME makes one)",
            shrink=("NAME",),
        )


@queue_group.command("show")
@click.argument("queue")
@json_option
@click.pass_context
def queue_show_cmd(ctx: click.Context, queue: str, as_json: bool) -> None:
    """The tasks pending in QUEUE (name or id), next first."""
    client = get_client(ctx)
    q = client.queues.get_by_id(str(client.queues.resolve(queue)["id"]))
    ids = _pending(client, q)
    tasks = {
        str(t.get("id")): t
        for t in (client.tasks.get_all(id=ids, only_fields=["id", "name", "status"]) if ids else [])
    }
    rows = [{"position": i, "id": tid, **tasks.get(tid, {})} for i, tid in enumerate(ids)]
    if as_json:
        emit_json({"id": q.get("id"), "name": q.get("name"), "entries": rows})
        return
    table(
        ["#", "TASK", "NAME", "STATUS"],
        [[r["position"], r["id"], r.get("name"), r.get("status")] for r in rows],
        empty=f"queue {q.get('name')} is empty",
        shrink=("NAME",),
    )


_MOVES = ("front", "back", "up", "down")


@queue_group.command("move")
@click.argument("queue")
@click.argument("task_id")
@click.argument("where", type=click.Choice(_MOVES))
@click.option("--count", default=1, show_default=True, help="Places to move with up/down.")
@json_option
@click.pass_context
def queue_move_cmd(
    ctx: click.Context, queue: str, task_id: str, where: str, count: int, as_json: bool
) -> None:
    """Move TASK_ID inside QUEUE: to the front (next to run), the back, up or down COUNT
    places; print its new position (0 = next)."""
    client = get_client(ctx)
    qid = str(client.queues.resolve(queue)["id"])
    if where == "front":
        position = client.queues.move_task_to_front(qid, task_id)
    elif where == "back":
        position = client.queues.move_task_to_back(qid, task_id)
    elif where == "up":
        position = client.queues.move_task_forward(qid, task_id, count)
    else:
        position = client.queues.move_task_backward(qid, task_id, count)
    if as_json:
        emit_json({"queue": qid, "task": task_id, "position": position})
    else:
        click.echo(f"task {task_id} is at position {position} in {queue}")


@queue_group.command("delete")
@click.argument("queue")
@click.option("--force", is_flag=True, help="Delete even when tasks are pending in it.")
@json_option
@click.pass_context
def queue_delete_cmd(ctx: click.Context, queue: str, force: bool, as_json: bool) -> None:
    """Delete QUEUE (name or id). A queue with pending tasks needs --force; its tasks stay
    ``queued`` without a queue, so dequeue or abort them first when they should not run."""
    client = get_client(ctx)
    q = client.queues.resolve(queue)
    try:
        client.send("queues.delete", {"queue": q["id"], "force": force})
    except ApiError as exc:
        if exc.result_code == 400 and "not empty" in exc.message.lower():
            raise ApiError(
                exc.endpoint,
                exc.result_code,
                exc.subcode,
                f"queue {q.get('name') or q['id']} has pending tasks; --force deletes it anyway",
            ) from exc
        raise
    if as_json:
        emit_json({"id": q["id"], "name": q.get("name"), "deleted": True})
    else:
        click.echo(f"deleted queue {q.get('name') or q['id']}")


# -- workers -------------------------------------------------------------------------------------


@click.group("workers")
def workers_group() -> None:
    """The agents (hpcagent-slurm, hpcagent daemon, clearml-agent) that report to the server."""


@workers_group.command("list")
@json_option
@click.pass_context
def workers_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Workers seen in the last 10 minutes: their queues, current task and last report."""
    client = get_client(ctx)
    workers = sorted(client.workers.get_all(), key=lambda w: str(w.get("id", "")))
    if as_json:
        emit_json(workers)
        return
    rows = []
    for w in workers:
        queues = ", ".join(
            str(q.get("name") or q.get("id")) if isinstance(q, dict) else str(q)
            for q in w.get("queues") or []
        )
        task = w.get("task") or {}
        task_text = f"{task.get('id')} {clip(task.get('name'), 40)}".strip() if task else ""
        rows.append([w.get("id"), queues, task_text, local_time(w.get("last_activity_time"))])
    table(
        ["WORKER", "QUEUES", "TASK", "LAST SEEN"],
        rows,
        empty="no workers reported in the last 10 minutes",
        shrink=("QUEUES", "TASK"),
    )
