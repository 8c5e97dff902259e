"""Rendering sbatch templates: ClearML ``${CLEARML_...}`` placeholders and Jinja2 (``*.j2``).

Public API::

    ctx = RenderContext(task=task_dict, queue_name="q", queue_id="…", worker_id="w",
                        config=settings.get, pre_setup="…", agent_execute="…", post_setup="…",
                        names=NameCache(fetch))       # project/parent/queue names, per round
    script = render_file(Path("templates/slurm.example.template"), ctx)
    script = render_string(text, ctx, name="inline.template")   # *.j2 names use Jinja2
    check_file(path)          # at start: every problem that does not depend on a task
    builtin_path("example")   # a template shipped with the package

Rendering and checking raise :class:`hpcagent.errors.TemplateError` naming template, line,
column and placeholder. The safety rules are in ``values.py``, ``directives.py``,
``shell_context.py`` and docs/templates.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hpcagent.errors import TemplateError
from hpcagent.templating.analysis import problems
from hpcagent.templating.builtin import BUILTIN, builtin_path, resolve_template
from hpcagent.templating.clearml import render_clearml
from hpcagent.templating.context import RenderContext, lookup_path
from hpcagent.templating.entities import NameCache, api_fetch
from hpcagent.templating.jinja import jinja_problems, render_jinja

__all__ = [
    "BUILTIN",
    "NameCache",
    "RenderContext",
    "TemplateError",
    "api_fetch",
    "builtin_path",
    "check_file",
    "check_string",
    "lookup_path",
    "render_file",
    "render_string",
    "resolve_template",
]


def render_string(text: str, ctx: RenderContext, name: str = "<template>") -> str:
    """Render template ``text``; a ``name`` ending in ``.j2`` selects Jinja2."""
    if name.endswith(".j2"):
        return render_jinja(text, ctx, name)
    return render_clearml(text, ctx, name)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template: {exc}", template=str(path)) from None


def render_file(path: Path, ctx: RenderContext) -> str:
    """Read and render the template at ``path``."""
    return render_string(_read(path), ctx, str(path))


def check_string(text: str, name: str, extra_names: Iterable[str] = ()) -> list[TemplateError]:
    """Every problem of a template that does not depend on a task (empty list: fine):
    syntax, unknown names and filters, placeholders where no quoting protects a value,
    misplaced blocks, a missing ``${CLEARML_AGENT_EXECUTE}``."""
    if name.endswith(".j2"):
        found = jinja_problems(text, name)
        if "CLEARML_AGENT_EXECUTE" not in text:
            found.append(TemplateError("no {{ CLEARML_AGENT_EXECUTE }}", template=name))
        return found
    return problems(text, name, extra_names)


def check_file(path: Path, extra_names: Iterable[str] = ()) -> None:
    """Raise one :class:`TemplateError` listing every problem of the template at ``path``."""
    found = check_string(_read(path), str(path), extra_names)
    if found:
        lines = "\n  ".join(str(e) for e in found)
        raise TemplateError(f"template refused ({len(found)} problem(s)):\n  {lines}")
