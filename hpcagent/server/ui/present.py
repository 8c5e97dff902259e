"""How the UI shows a task: its Slurm job, times, durations and metric values (pure functions,
also used as Jinja filters). Everything returned here is plain text; templates escape it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

#: The submitter's status message while a job lives: "<job_label> <id>: STATE (reason)", the
#: label being the scheduler's ("slurm job", "gridengine job", "local job").
_SLURM_MESSAGE = re.compile(
    r"^(?:[\w-]+ )?job (?P<job>\S+): (?P<state>[A-Z_]+)(?: \((?P<reason>.*)\))?"
)


#: Statuses after which a task's job has ended.
FINAL_STATUSES = frozenset({"completed", "failed", "stopped", "published", "closed"})


def urlencode(params: dict[str, Any]) -> str:
    """A query string; list values repeat the key, empty values are left out."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((key, str(v)) for v in values if v not in (None, "", False))
    return urllib.parse.urlencode(pairs)


def prop(task: dict[str, Any], name: str) -> str:
    """A value of the task's ``properties`` hyperparameter section ("" when absent)."""
    section = (task.get("hyperparams") or {}).get("properties") or {}
    item = section.get(name) if isinstance(section, dict) else None
    return str(item.get("value") or "") if isinstance(item, dict) else ""


def slurm_info(task: dict[str, Any]) -> dict[str, str]:
    """``{job, state, reason, nodes}`` of the task's scheduler job, from what the submitter
    (properties ``job-id``/``job-nodes``, ``slurm-*`` on tasks of earlier versions, the status
    message while pending) and the executor (runtime ``job_id``/``job_nodes``, earlier
    ``slurm_job_id``/``slurm_nodes``) wrote (docs/structure.md, "Who writes what on a task").
    """
    runtime = task.get("runtime") or {}
    job = (
        prop(task, "job-id")
        or prop(task, "slurm-job-id")
        or str(runtime.get("job_id") or runtime.get("slurm_job_id") or "")
    )
    nodes = (
        prop(task, "job-nodes")
        or prop(task, "slurm-nodes")
        or str(runtime.get("job_nodes") or runtime.get("slurm_nodes") or "")
    )
    state = reason = ""
    match = _SLURM_MESSAGE.match(str(task.get("status_message") or ""))
    end = job_output(task)["end"]
    if match:
        job = job or match.group("job")
        state = match.group("state")
        reason = match.group("reason") or ""
    elif end:
        state, _, rest = end.partition(" ")
        reason = rest.strip().removeprefix("(").removesuffix(")")
    elif job:
        state = {
            "in_progress": "RUNNING",
            "completed": "COMPLETED",
            "failed": "FAILED",
            "stopped": "CANCELLED",
        }.get(str(task.get("status")), "")
    return {"job": job, "state": state, "reason": reason, "nodes": nodes}


def job_output(task: dict[str, Any]) -> dict[str, str]:
    """``{end, path, tail}``: how the task's job ended, its output file and that file's last
    lines, as the submitter recorded them once it saw the job end (properties ``job-end``,
    ``job-output``, ``job-output-tail``; scheduler.base ``PROP_END``...). Empty for a task
    not in a final status: a reset or cloned task carries its earlier job's values until its
    own job ends."""
    if task.get("status") not in FINAL_STATUSES:
        return {"end": "", "path": "", "tail": ""}
    return {
        "end": prop(task, "job-end"),
        "path": prop(task, "job-output"),
        "tail": prop(task, "job-output-tail"),
    }


def parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)


def when(value: Any) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC), "" for none."""
    parsed = parse_time(value)
    return parsed.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if parsed else ""


def duration(task: dict[str, Any], now: _dt.datetime | None = None) -> str:
    """How long the task ran (until now while it runs): ``1h 02m 03s``; "" if it never started."""
    started = parse_time(task.get("started"))
    if started is None:
        return ""
    end = parse_time(task.get("completed"))
    if end is None:
        if task.get("status") != "in_progress":
            return ""
        end = now or _dt.datetime.now(_dt.timezone.utc)
    seconds = max(0, int((end - started).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def metric_names(tasks: list[dict[str, Any]]) -> list[str]:
    """Every ``metric/variant`` in the tasks' ``last_metrics``, sorted."""
    names: set[str] = set()
    for task in tasks:
        for variants in (task.get("last_metrics") or {}).values():
            if isinstance(variants, dict):
                for entry in variants.values():
                    if isinstance(entry, dict):
                        names.add(f"{entry.get('metric', '')}/{entry.get('variant', '')}")
    return sorted(names)


def last_value(task: dict[str, Any], column: str) -> str:
    """The last reported value of ``metric/variant`` (a metric column), "" when none."""
    metric, _, variant = column.rpartition("/")
    entry = ((task.get("last_metrics") or {}).get(_md5(metric)) or {}).get(_md5(variant))
    if not isinstance(entry, dict) or "value" not in entry:
        return ""
    value = entry["value"]
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def hyper_sections(task: dict[str, Any]) -> list[tuple[str, list[dict[str, str]]]]:
    """The hyperparameter sections as ``(section, [{name, value, type, description}])``,
    ``Args`` first, ``properties`` (user properties) last."""
    sections = task.get("hyperparams") or {}

    def rank(name: str) -> tuple[int, str]:
        return ({"Args": 0, "properties": 2}.get(name, 1), name)

    out = []
    for name in sorted((n for n in sections if isinstance(sections[n], dict)), key=rank):
        items = [
            {
                "name": str(item.get("name", key)),
                "value": "" if item.get("value") is None else str(item.get("value")),
                "type": str(item.get("type") or ""),
                "description": str(item.get("description") or ""),
            }
            for key, item in sorted(sections[name].items())
            if isinstance(item, dict)
        ]
        out.append((name, items))
    return out


def requirements_text(task: dict[str, Any]) -> str:
    reqs = (task.get("script") or {}).get("requirements") or {}
    if isinstance(reqs, dict):
        return str(reqs.get("pip") or "")
    return str(reqs)


def pretty(value: Any) -> str:
    """A configuration value as text (objects as indented JSON)."""
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def size(value: Any) -> str:
    """A byte count as ``12.3 MB``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if amount < 1024 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return ""


FILTERS: dict[str, Callable[..., Any]] = {
    "when": when,
    "duration": duration,
    "slurm": slurm_info,
    "job_output": job_output,
    "last_value": last_value,
    "pretty": pretty,
    "size": size,
    "urlencode_view": urlencode,
}
