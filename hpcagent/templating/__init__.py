"""Rendering sbatch templates: ClearML ``${CLEARML_...}`` placeholders and Jinja2 (``*.j2``).

Public API::

    ctx = RenderContext(task=task_dict, queue_name="q", queue_id="…", worker_id="w",
                        config=settings.get, pre_setup="…", agent_execute="…", post_setup="…")
    script = render_file(Path("templates/slurm.example.template"), ctx)
    script = render_string(text, ctx, name="inline.template")   # *.j2 names use Jinja2

Both raise :class:`hpcagent.errors.TemplateError` (naming template, line and placeholder)
when a value is missing or cannot be placed safely. The safety rules are in
``values.py`` and docs/templates.md.
"""

from __future__ import annotations

from pathlib import Path

from hpcagent.errors import TemplateError
from hpcagent.templating.clearml import render_clearml
from hpcagent.templating.context import RenderContext, lookup_path
from hpcagent.templating.jinja import render_jinja

__all__ = ["RenderContext", "TemplateError", "lookup_path", "render_file", "render_string"]


def render_string(text: str, ctx: RenderContext, name: str = "<template>") -> str:
    """Render template ``text``; a ``name`` ending in ``.j2`` selects Jinja2."""
    if name.endswith(".j2"):
        return render_jinja(text, ctx, name)
    return render_clearml(text, ctx, name)


def render_file(path: Path, ctx: RenderContext) -> str:
    """Read and render the template at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template: {exc}", template=str(path)) from None
    return render_string(text, ctx, str(path))
