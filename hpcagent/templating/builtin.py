"""The templates shipped with the package (``templates/`` in the source tree).

``hpcagent/templating/builtin`` is a link to the top-level ``templates/`` folder, so the
files users copy from the repository and the ones a wheel install carries are the same.
``--template-files`` takes a built-in name (:data:`BUILTIN`) or a path.
"""

from __future__ import annotations

from pathlib import Path

#: Built-in name → file in the builtin folder.
BUILTIN: dict[str, str] = {
    "example": "slurm.example.template",
    "gpu": "slurm.gpu.template",
    "singularity": "slurm.singularity.template",
    "jinja": "slurm.example.j2",
    "gridengine": "gridengine.example.template",
}

#: Built-in name → what it is for (``hpcagent templates list``).
ABOUT: dict[str, str] = {
    "example": "the ClearML Slurm Glue documentation's example, verbatim",
    "gpu": "GPU jobs; partition, GPUs, CPUs, memory, time from task user properties",
    "singularity": "for --singularity-mode: the task runs inside its container image",
    "jinja": "the example in Jinja2 (*.j2)",
    "gridengine": "the example for Grid Engine (--scheduler gridengine)",
}


def builtin_dir() -> Path:
    """The folder of the shipped templates."""
    return Path(__file__).resolve().parent / "builtin"


def builtin_path(name: str) -> Path:
    """The file of built-in template ``name``; ``KeyError`` when there is none."""
    return builtin_dir() / BUILTIN[name]


def resolve_template(name_or_path: str) -> Path:
    """A built-in name becomes its shipped file, unless a file of that name exists here;
    anything else is a path."""
    path = Path(name_or_path)
    if name_or_path in BUILTIN and not path.exists():
        return builtin_path(name_or_path)
    return path
