"""What a template can refer to: the task, the queue, the worker, config and blocks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _no_config(path: str, default: Any = None) -> Any:
    return default


@dataclass(frozen=True)
class RenderContext:
    """Everything a template is rendered against.

    ``task`` is the task dict as ``tasks.get_all`` returns it. ``config`` looks up a
    dotted path in the agent configuration (``Settings.get``). The three blocks are
    trusted text built by the submitter from configuration, never from the task.
    ``extra`` adds more ``CLEARML_<NAME>`` values (for example ``CLEARML_PROJECT_NAME``).
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

    @property
    def blocks(self) -> dict[str, str]:
        """The trusted block placeholders, inserted as they are."""
        return {
            "CLEARML_PRE_SETUP": self.pre_setup,
            "CLEARML_AGENT_EXECUTE": self.agent_execute,
            "CLEARML_POST_SETUP": self.post_setup,
        }

    def scalars(self) -> dict[str, Any]:
        """The job-level scalar names (values still to be made safe)."""
        out: dict[str, Any] = {
            "CLEARML_QUEUE_NAME": self.queue_name,
            "CLEARML_QUEUE_ID": self.queue_id,
            "CLEARML_WORKER_ID": self.worker_id,
        }
        out.update(self.extra)
        return out

    def lookup(self, key: str) -> Any:
        """Resolve a placeholder key; return ``None`` when there is no value.

        ``CLEARML_TASK.<path>`` walks the task dict, ``CONFIG.<path>`` (or
        ``CLEARML_CONFIG.<path>``) asks the configuration; other names are scalars.
        Raises ``KeyError`` for a name that is not known at all.
        """
        root, _, path = key.partition(".")
        if root == "CLEARML_TASK":
            return lookup_path(self.task, path.split(".")) if path else None
        if root in ("CONFIG", "CLEARML_CONFIG"):
            if not path:
                return None
            value = self.config(path, None)
            return value
        if path:
            raise KeyError(key)
        scalars = self.scalars()
        if root not in scalars:
            raise KeyError(key)
        value = scalars[root]
        return value if value != "" else None

    def jinja_vars(self) -> dict[str, Any]:
        """The same context for Jinja2 templates."""
        out: dict[str, Any] = dict(self.scalars())
        out.update(self.blocks)
        out["CLEARML_TASK"] = self.task
        out["task"] = self.task
        out["queue_name"] = self.queue_name
        out["queue_id"] = self.queue_id
        out["worker_id"] = self.worker_id
        return out


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
