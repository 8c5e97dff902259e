"""Task records no client should write, as a server may still hold them (the daemon's corpus).

A real ClearML server stores what an older SDK, a script or a database edit put there, and the
embedded server's own data may predate a validation rule. Whatever a record holds, the daemon,
the submitter and the executor fail that task with a reason and go on with the queue.

Each entry is ``(label, patch, end)``: the patch is applied to the stored task document (a valid
literal-script task) directly in the server's SQLite, with :data:`DROP` removing a key; dotted
keys reach into a section. :func:`plant` does that for a stopped embedded server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson

DROP = object()


def _nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


#: ``(label, patch, how the task ends)``: "failed" (with a reason naming the field, where the
#: executor refuses the record) or "completed" (a field the run does not use, or one it rewrites).
CORPUS: list[tuple[str, dict[str, Any], str]] = [
    ("script is a string", {"script": "print('x')"}, "failed"),
    ("script is a number", {"script": 5}, "failed"),
    ("script is a list", {"script": ["a", "b"]}, "failed"),
    ("script missing", {"script": DROP}, "failed"),
    ("script is null", {"script": None}, "failed"),
    ("entry_point is a number", {"script.entry_point": 5}, "failed"),
    ("entry_point is a list", {"script.entry_point": ["run.py"]}, "failed"),
    ("entry_point empty", {"script.entry_point": ""}, "failed"),
    ("entry_point unbalanced quote", {"script.entry_point": "run.py 'oops"}, "failed"),
    ("diff is a list", {"script.diff": ["print(1)"]}, "failed"),
    ("diff is an object", {"script.diff": {"a": 1}}, "failed"),
    ("requirements is a string", {"script.requirements": "numpy"}, "failed"),
    ("requirements.pip is a number", {"script.requirements": {"pip": 5}}, "failed"),
    ("requirements.pip is a list", {"script.requirements": {"pip": ["numpy", 3]}}, "failed"),
    ("repository is a number", {"script.repository": 5}, "failed"),
    ("repository is an object", {"script.repository": {"url": "x"}}, "failed"),
    ("working_dir is a list", {"script.working_dir": ["a"]}, "failed"),
    ("working_dir leaves the tree", {"script.working_dir": "../../.."}, "completed"),
    ("binary is a number", {"script.binary": 7}, "failed"),
    ("binary is an object", {"script.binary": {"py": 3}}, "failed"),
    ("container is a string", {"container": "ubuntu:22.04"}, "failed"),
    ("container is a list", {"container": ["ubuntu"]}, "failed"),
    ("container.image is a number", {"container": {"image": 5}}, "failed"),
    ("container.arguments is a list", {"container": {"arguments": ["--x"]}}, "failed"),
    ("setup_shell_script is a number", {"container": {"setup_shell_script": 5}}, "failed"),
    ("hyperparams is a string", {"hyperparams": "lr=1"}, "failed"),
    ("hyperparams is a list", {"hyperparams": [1, 2]}, "failed"),
    ("properties is a number", {"hyperparams": {"properties": 5}}, "failed"),
    ("Args is a list", {"hyperparams": {"Args": ["lr"]}}, "failed"),
    ("Args item is a number", {"hyperparams": {"Args": {"lr": 5}}}, "completed"),
    (
        "Args value is an object",
        {"hyperparams": {"Args": {"lr": {"name": "lr", "value": {"a": 1}}}}},
        "failed",
    ),
    ("Environment is a string", {"hyperparams": {"Environment": "A=1"}}, "failed"),
    ("execution is a string", {"execution": "fast"}, "completed"),
    ("execution.queue is a number", {"execution.queue": 5}, "completed"),
    ("execution.parameters is a list", {"execution.parameters": [1]}, "completed"),
    ("runtime is a string", {"runtime": "x"}, "completed"),
    ("runtime is a list", {"runtime": [1]}, "completed"),
    ("configuration is a string", {"configuration": "x"}, "completed"),
    ("tags are numbers", {"tags": [1, 2]}, "completed"),
    ("system_tags is a string", {"system_tags": "x"}, "completed"),
    ("tags are objects", {"tags": [{"a": 1}, ["b"]]}, "completed"),
    ("parent is an object", {"parent": {"id": "x"}}, "completed"),
    ("name missing", {"name": DROP}, "completed"),
    ("name is a number", {"name": 5}, "completed"),
    ("type is a number", {"type": 5}, "completed"),
    ("project is a number", {"project": 5}, "completed"),
    ("status_message is an object", {"status_message": {"a": 1}}, "completed"),
    # nested about as deep as the store (orjson: 254 levels) can hold
    (
        "configuration nested 240 deep",
        {"configuration": {"deep": {"value": _nest(240)}}},
        "completed",
    ),
]


def apply(doc: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with ``patch`` applied (dotted keys reach into a section; :data:`DROP` deletes)."""
    out = dict(doc)
    for key, value in patch.items():
        head, _, rest = key.partition(".")
        if rest:
            section = out.get(head)
            section = dict(section) if isinstance(section, dict) else {}
            if value is DROP:
                section.pop(rest, None)
            else:
                section[rest] = value
            out[head] = section
        elif value is DROP:
            out.pop(head, None)
        else:
            out[head] = value
    return out


def plant(data_dir: Path, patches: Mapping[str, Mapping[str, Any]]) -> None:
    """Rewrite the stored documents of tasks ``{task id: patch}`` in a stopped embedded
    server's database (``<data_dir>/server.db``)."""
    db_path = next(p for p in (data_dir / "server.db", *data_dir.glob("*.db")) if p.exists())
    with closing(sqlite3.connect(db_path)) as db, db:
        for task_id, patch in patches.items():
            (doc,) = db.execute("SELECT doc FROM tasks WHERE id = ?", (task_id,)).fetchone()
            new = apply(orjson.loads(doc), patch)
            db.execute(
                "UPDATE tasks SET doc = ? WHERE id = ?",
                (orjson.dumps(new, option=orjson.OPT_NON_STR_KEYS), task_id),
            )
