"""Building a new task's ClearML fields from what a user gives (a script or a repository, its
requirements, arguments, properties and container): the one place for these rules, shared by
``hpcagent task create`` and any other front end (a web form).

:class:`TaskSpec` holds the input as values (the script's text, not its path), so the caller
decides where it comes from. :func:`task_fields` turns a checked spec into the ``script``,
``hyperparams`` and ``container`` bodies of ``tasks.edit`` in the shape the clearml SDK writes
them; :func:`create_task` creates the task (and its project) through an
:class:`~hpcagent.api.ApiClient`. Bad input raises :class:`~hpcagent.errors.UsageError`
before anything is created.

This module imports nothing of hpcagent but the errors (the client only for type checking), so
the server's web UI, which may not import the client side, can build the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcagent.errors import UsageError

if TYPE_CHECKING:
    from hpcagent.api import ApiClient

#: The user property (``hyperparams.properties``) with which a task asks the executor to put
#: its Args on the script's command line (docs/executor.md, "Arguments").
ARGS_ON_ARGV_PROPERTY = "args-on-argv"


@dataclass(frozen=True)
class TaskSpec:
    """A task to create. Exactly one of ``script_text`` (a local script, stored in the task)
    or ``repo`` (cloned at ``branch`` or ``commit``; ``entry_point`` is then required)."""

    project: str
    name: str
    script_text: str | None = None
    script_name: str = ""  # the local script's file name: the entry point unless given
    repo: str | None = None
    branch: str = ""
    commit: str = ""
    entry_point: str = ""
    working_dir: str = "."
    binary: str = "python3"
    task_type: str = "training"
    requirements: str | None = None  # a requirements.txt's text
    packages: tuple[str, ...] = ()  # or package specifiers, one per requirement line
    args: Mapping[str, str] = field(default_factory=dict)  # Args/*: on the command line
    user_properties: Mapping[str, str] = field(default_factory=dict)
    container_image: str = ""
    container_args: str = ""
    comment: str = "created by hpcagent"

    def check(self) -> None:
        """Raise :class:`UsageError` naming the first thing that is wrong."""
        if (self.script_text is None) == (self.repo is None):
            raise UsageError("give exactly one of --script FILE or --repo URL")
        if self.branch and self.commit:
            raise UsageError("give --branch or --commit, not both")
        if self.requirements is not None and self.packages:
            raise UsageError("give --requirements or --packages, not both")
        if len(self.name) < 3:
            raise UsageError("--name must have at least 3 characters")
        if self.script_text is not None and (self.branch or self.commit):
            raise UsageError("--branch/--commit need --repo")
        if self.repo is not None and not self.entry_point:
            raise UsageError("--repo needs --entry-point")
        if self.script_text is not None and not (self.entry_point or self.script_name):
            raise UsageError("a script needs a name or --entry-point")


def parse_pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{k: v}`` (values may contain ``=``, keys are stripped); an item
    without ``=`` or with an empty key is a :class:`UsageError` naming ``option``."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects key=value, got {item!r}")
        pairs[key.strip()] = val
    return pairs


def param_items(section: str, pairs: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """One hyperparameter section as the SDK writes it (string values, empty description)."""
    return {
        k: {"section": section, "name": k, "value": v, "type": "str", "description": ""}
        for k, v in pairs.items()
    }


def merge_params(
    hyperparams: Mapping[str, Any], section: str, pairs: Mapping[str, str]
) -> dict[str, Any]:
    """``hyperparams`` with ``pairs`` set in ``section`` (other items and sections kept): for
    ``tasks.edit``, which replaces the whole map, so callers read, merge and write back."""
    out = dict(hyperparams)
    out[section] = {**(out.get(section) or {}), **param_items(section, pairs)}
    return out


def pip_requirements(packages: Sequence[str]) -> dict[str, str]:
    """``script.requirements`` for package specifiers: one per line, as a requirements.txt."""
    return {"pip": "\n".join(packages) + "\n"}


def script_section(spec: TaskSpec) -> dict[str, Any]:
    """The task's ``script``: the stored script (``diff``, no repository) or the repository
    at its branch/commit, the entry point, working dir, interpreter and requirements."""
    out: dict[str, Any] = {"binary": spec.binary, "working_dir": spec.working_dir}
    if spec.script_text is not None:
        out.update(
            repository="",
            entry_point=spec.entry_point or spec.script_name,
            diff=spec.script_text,
        )
    else:
        out.update(
            repository=spec.repo,
            branch=spec.branch,
            version_num=spec.commit,
            entry_point=spec.entry_point,
        )
    if spec.requirements is not None:
        out["requirements"] = {"pip": spec.requirements}
    elif spec.packages:
        out["requirements"] = pip_requirements(spec.packages)
    return out


def hyperparams(spec: TaskSpec) -> dict[str, Any]:
    """``Args`` (with the property that puts them on the script's command line, as typed:
    docs/executor.md, "Arguments") and ``properties`` (the user properties)."""
    out: dict[str, Any] = {}
    props = dict(spec.user_properties)
    if spec.args:
        out["Args"] = param_items("Args", spec.args)
        props.setdefault(ARGS_ON_ARGV_PROPERTY, "true")
    if props:
        out["properties"] = param_items("properties", props)
    return out


def task_fields(spec: TaskSpec) -> dict[str, Any]:
    """The ``tasks.edit`` fields of a checked spec: ``script``, and ``hyperparams`` and
    ``container`` when there is something to say."""
    fields: dict[str, Any] = {"script": script_section(spec)}
    params = hyperparams(spec)
    if params:
        fields["hyperparams"] = params
    if spec.container_image:
        fields["container"] = {
            "image": spec.container_image,
            "arguments": spec.container_args,
            "setup_shell_script": "",
        }
    return fields


def create_task(client: ApiClient, spec: TaskSpec) -> tuple[str, str]:
    """Check ``spec``, create its project when missing and the task with its fields (one
    ``tasks.create``: ClearML's create takes script, hyperparams and container as edit does);
    returns the task id and the project id."""
    spec.check()
    fields = task_fields(spec)
    project_id = client.projects.get_or_create(spec.project)
    task_id = client.tasks.create(
        spec.name, project_id, type=spec.task_type, comment=spec.comment, **fields
    )
    return task_id, project_id
