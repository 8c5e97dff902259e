"""What a template can refer to: the task, the queue, the worker, config and blocks.

The variable model (docs/templates.md has the table):

* ``CLEARML_QUEUE_NAME``, ``CLEARML_QUEUE_ID``, ``CLEARML_WORKER_ID``, ``CLEARML_JOB_NAME``,
  ``CLEARML_PROJECT_ID``, ``CLEARML_PROJECT_NAME``: single values.
* ``CLEARML_TASK.<path>``: any field of the task as ``tasks.get_all`` returns it.
  The fields that hold the id of another entity (:data:`REF_FIELDS`: ``project``,
  ``parent``, ``execution.queue``) are ``{id, name}``: ``${CLEARML_TASK.project.id}``,
  ``${CLEARML_TASK.project.name}``; the bare field still renders the id, as in ClearML
  (``${CLEARML_TASK.project}``). The id comes from the task itself; the name is asked of
  ``RenderContext.names`` only when a template uses it.
* ``CONFIG.<path>`` / ``CLEARML_CONFIG.<path>``: the agent configuration.
* ``CLEARML_PRE_SETUP``, ``CLEARML_AGENT_EXECUTE``, ``CLEARML_POST_SETUP``: trusted blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Task fields holding the id of another entity → the kind of that entity.
REF_FIELDS: dict[str, str] = {"project": "project", "parent": "task", "execution.queue": "queue"}

#: The single-value names every render context has (``extra`` may add more).
SCALAR_NAMES = (
    "CLEARML_QUEUE_NAME",
    "CLEARML_QUEUE_ID",
    "CLEARML_WORKER_ID",
    "CLEARML_JOB_NAME",
    "CLEARML_PROJECT_ID",
    "CLEARML_PROJECT_NAME",
)
BLOCK_NAMES = ("CLEARML_PRE_SETUP", "CLEARML_AGENT_EXECUTE", "CLEARML_POST_SETUP")


def _no_config(path: str, default: Any = None) -> Any:
    return default


def _no_names(kind: str, entity_id: str) -> str | None:
    return None


@dataclass(frozen=True)
class RenderContext:
    """Everything a template is rendered against.

    ``task`` is the task dict as ``tasks.get_all`` returns it. ``config`` looks up a
    dotted path in the agent configuration (``Settings.get``). ``names(kind, id)`` gives
    the name of a project, task or queue (``None`` when unknown); the submitter passes a
    cached lookup (:class:`hpcagent.templating.entities.NameCache`). The three blocks are
    trusted text built by the submitter from configuration, never from the task.
    ``extra`` adds more ``CLEARML_<NAME>`` values (for example ``CLEARML_DAEMON_GPUS``).
    """

    task: Mapping[str, Any]
    queue_name: str = ""
    queue_id: str = ""
    worker_id: str = ""
    config: Callable[..., Any] = _no_config
    pre_setup: str = ""
    agent_execute: str = ""
    post_setup: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    names: Callable[[str, str], str | None] = _no_names

    @property
    def blocks(self) -> dict[str, str]:
        """The trusted block placeholders, inserted as they are."""
        return {
            "CLEARML_PRE_SETUP": self.pre_setup,
            "CLEARML_AGENT_EXECUTE": self.agent_execute,
            "CLEARML_POST_SETUP": self.post_setup,
        }

    def ref(self, path: str) -> dict[str, Any] | None:
        """``{id, name}`` of the entity the task field ``path`` points to (None: no id)."""
        entity_id = lookup_path(self.task, path.split("."))
        if entity_id is None or entity_id == "":
            return None
        entity_id = str(entity_id)
        return {"id": entity_id, "name": self.names(REF_FIELDS[path], entity_id)}

    def scalars(self, with_names: bool = True) -> dict[str, Any]:
        """The job-level scalar names (values still to be made safe); ``with_names=False``
        leaves out ``CLEARML_PROJECT_NAME`` (no name lookup)."""
        out: dict[str, Any] = {
            "CLEARML_QUEUE_NAME": self.queue_name,
            "CLEARML_QUEUE_ID": self.queue_id,
            "CLEARML_WORKER_ID": self.worker_id,
            "CLEARML_PROJECT_ID": self._task_field("project.id"),
        }
        if with_names:
            out["CLEARML_PROJECT_NAME"] = self._task_field("project.name")
        out.update(self.extra)
        return out

    def lookup(self, key: str) -> Any:
        """Resolve a placeholder key; return ``None`` when there is no value.

        ``CLEARML_TASK.<path>`` walks the task dict (with :data:`REF_FIELDS` as
        ``{id, name}``), ``CONFIG.<path>`` (or ``CLEARML_CONFIG.<path>``) asks the
        configuration; other names are scalars. Raises ``KeyError`` for a name that is
        not known at all.
        """
        root, _, path = key.partition(".")
        if root == "CLEARML_TASK":
            return self._task_field(path) if path else None
        if root in ("CONFIG", "CLEARML_CONFIG"):
            return self.config(path, None) if path else None
        if path:
            raise KeyError(key)
        if root in self.extra:
            value = self.extra[root]
        elif root == "CLEARML_PROJECT_ID":
            value = self._task_field("project.id")
        elif root == "CLEARML_PROJECT_NAME":  # asked of ``names`` only when a template uses it
            value = self._task_field("project.name")
        elif root in SCALAR_NAMES:  # CLEARML_JOB_NAME: set by the submitter (its job-name rule)
            value = self.scalars(with_names=False).get(root)
        else:
            raise KeyError(key)
        return value if value != "" else None

    def _task_field(self, path: str) -> Any:
        for ref_path in REF_FIELDS:
            if path == ref_path:  # the bare field: its id, as ClearML renders it
                return lookup_path(self.task, path.split("."))
            if path.startswith(ref_path + "."):
                rest = path[len(ref_path) + 1 :]
                if rest == "id":
                    return lookup_path(self.task, ref_path.split("."))
                if rest == "name":
                    ref = self.ref(ref_path)
                    return ref["name"] if ref else None
        return lookup_path(self.task, path.split("."))

    def jinja_vars(self) -> dict[str, Any]:
        """The same context for Jinja2 templates (``CLEARML_TASK`` with the refs resolved)."""
        out: dict[str, Any] = {k: v for k, v in self.scalars().items() if v is not None}
        out.update(self.blocks)
        task = _RefTask(self)
        out["CLEARML_TASK"] = task
        out["task"] = task
        out["queue_name"] = self.queue_name
        out["queue_id"] = self.queue_id
        out["worker_id"] = self.worker_id
        return out


class _RefTask(dict):  # type: ignore[type-arg]
    """The task dict for Jinja2, where the :data:`REF_FIELDS` are ``{id, name}``."""

    def __init__(self, ctx: RenderContext) -> None:
        super().__init__(ctx.task)
        for path in REF_FIELDS:
            ref = ctx.ref(path)
            if ref is None:
                continue
            head, _, leaf = path.rpartition(".")
            if head:  # execution.queue: a copy of the execution section with the ref in it
                self[head] = {**(self.get(head) or {}), leaf: EntityRef(ref)}
            else:
                self[path] = EntityRef(ref)


class EntityRef(dict):  # type: ignore[type-arg]
    """``{id, name}`` that prints as its id (``{{ task.project }}`` is the project id)."""

    def __str__(self) -> str:
        return str(self["id"])


def lookup_path(obj: Any, parts: list[str]) -> Any:
    """Walk ``parts`` into nested dicts/lists; ``None`` when a step is missing.

    Keys that contain dots (``hyperparams.Args.my.name``) are found by trying the
    single segment first and then longer joins of the following segments.
    """
    if not parts:
        return obj
    if isinstance(obj, Mapping):
        for width in range(1, len(parts) + 1):
            key = ".".join(parts[:width])
            if key in obj:
                found = lookup_path(obj[key], parts[width:])
                if found is not None:
                    return found
        return None
    if isinstance(obj, (list, tuple)) and parts[0].isdigit():
        idx = int(parts[0])
        return lookup_path(obj[idx], parts[1:]) if idx < len(obj) else None
    return None
