"""Command-line entry points: ``hpcagent`` and ``hpcagent-slurm``.

This is the only module that exits the process. Commands live in ``hpcagent.commands.*`` and
raise :class:`~hpcagent.errors.HpcAgentError` subclasses; :func:`run` turns those into one
clear line on stderr and the error's exit code (see ``hpcagent.errors``).

click is imported on first use (``main_group`` is built then): the command a Slurm job runs,
``<python> -m hpcagent execute --id TASK``, is read by :func:`job_execute_args` and run
without it (click and what it imports cost that short-lived process ~0.01-0.02 s of CPU).
Anything else on the command line goes through click.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hpcagent import __version__
from hpcagent.errors import HpcAgentError

if TYPE_CHECKING:
    import click

#: (name, module, attribute) of each command of the ``hpcagent`` group, imported only when that
#: command runs (or ``--help`` lists them), so that ``hpcagent task list`` does not pay for the
#: server's or the executor's imports. A missing module is skipped, so a partial checkout still
#: runs; registration spot for new command modules:
COMMANDS: list[tuple[str, str, str]] = [
    ("config", "hpcagent.commands.config_cmd", "config_group"),
    ("init", "hpcagent.commands.config_cmd", "init_cmd"),
    ("server", "hpcagent.commands.server", "server_cmd"),
    ("task", "hpcagent.commands.task", "task_group"),
    ("task", "hpcagent.commands.task_edit", "task_group"),  # edit, delete, scalars
    ("queue", "hpcagent.commands.queue", "queue_group"),
    ("workers", "hpcagent.commands.queue", "workers_group"),
    ("execute", "hpcagent.commands.execute", "execute_cmd"),
    ("build", "hpcagent.commands.build", "build_cmd"),
    ("daemon", "hpcagent.commands.daemon", "daemon_cmd"),
    ("templates", "hpcagent.commands.templates", "templates_group"),
]

#: The ``hpcagent-slurm`` command.
SLURM_COMMAND = ("hpcagent.commands.slurm", "slurm_cmd")


def _setup_logging(debug: bool) -> None:
    debug = debug or os.environ.get("CLEARML_SLURM_GLUE_DEBUG") == "1"
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


#: Options of the ``hpcagent`` group that may also come after the sub-command (as
#: ``hpcagent-slurm`` takes them): ``hpcagent task list --config-file c.conf``.
GLOBAL_FLAGS = ("--debug",)
GLOBAL_OPTIONS = ("--config-file",)


def hoist_global_options(args: list[str]) -> list[str]:
    """Move the group's own options that come after the sub-command in front of it (nothing
    after ``--`` moves)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0]
        if arg in GLOBAL_FLAGS or (name in GLOBAL_OPTIONS and "=" in arg):
            front.append(arg)
        elif arg in GLOBAL_OPTIONS and i + 1 < len(args):
            front += args[i : i + 2]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


#: What :func:`job_execute_args` reads: flags and options with a value, by the parameter
#: names of the click group and command they mirror; the group's own come before ``execute``.
JOB_FLAGS = {
    "--debug": "debug",
    "--force": "force",
    "--clone": "clone",
    "--disable-monitoring": "disable_monitoring",
}
JOB_VALUES = {"--config-file": "config_file", "--id": "task_id"}
_GROUP_OPTIONS = frozenset(GLOBAL_FLAGS + GLOBAL_OPTIONS)


def job_execute_args(args: Sequence[str]) -> dict[str, Any] | None:
    """A job's ``[--config-file F] [--debug] execute --id TASK [--force] [--clone]
    [--disable-monitoring]`` (the group's options also after the sub-command, ``--opt=value``
    forms, each option at most once) as the keyword arguments of ``execute_task`` plus
    ``debug``; None for any other command line, which click then reads (help, usage errors,
    the other options, a value that starts with ``-``, a directory as ``--config-file``).
    tests/unit/test_cli_errors.py checks that click reads the same from what this accepts."""
    words = hoist_global_options(list(args))
    if "execute" not in words:
        return None
    cut = words.index("execute")
    out: dict[str, Any] = {"config_file": None, "task_id": None}
    out.update(dict.fromkeys(JOB_FLAGS.values(), False))
    seen: set[str] = set()
    i = 0
    while i < len(words):
        if i == cut:
            i += 1
            continue
        name, eq, value = words[i].partition("=")
        if name in seen or (name in _GROUP_OPTIONS) != (i < cut):
            return None
        if name in JOB_FLAGS and not eq:
            out[JOB_FLAGS[name]] = True
        elif name in JOB_VALUES:
            if not eq:
                i += 1
                if i >= len(words) or i == cut:
                    return None
                value = words[i]
            if not value or value.startswith("-"):
                return None
            out[JOB_VALUES[name]] = value
        else:
            return None
        seen.add(name)
        i += 1
    if out["task_id"] is None or (out["config_file"] and os.path.isdir(out["config_file"])):
        return None
    return out


@functools.cache
def _main_group() -> click.Group:
    """The ``hpcagent`` click group (click imported here, on first use)."""
    import click

    class _MainGroup(click.Group):
        """The ``hpcagent`` group: global options anywhere, sub-commands imported on first
        use."""

        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            return super().parse_args(ctx, hoist_global_options(list(args)))

        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted({name for name, _, _ in COMMANDS} | set(self.commands))

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            if cmd_name not in self.commands:
                _register(self, [(n, m, a) for n, m, a in COMMANDS if n == cmd_name])
            return self.commands.get(cmd_name)

    @click.group(
        cls=_MainGroup,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    @click.version_option(__version__, prog_name="hpcagent")
    @click.option(
        "--config-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="clearml.conf-style HOCON file (default: $CLEARML_CONFIG_FILE, else ~/clearml.conf).",
    )
    @click.option("--debug", is_flag=True, help="Verbose logging.")
    @click.pass_context
    def main_group(ctx: click.Context, config_file: str | None, debug: bool) -> None:
        """hpcagent: run ClearML-style queued ML tasks on Slurm clusters.

        \b
        Typical use:
          hpcagent server                      # embedded ClearML-compatible server
          hpcagent task create ... ; hpcagent task enqueue ID --queue default
          hpcagent-slurm --template-files t.sbatch --queue default
          hpcagent execute --id TASK           # inside a Slurm job (rendered by hpcagent-slurm)
        """
        _setup_logging(debug)
        ctx.ensure_object(dict)
        ctx.obj["config_file"] = config_file
        ctx.obj["debug"] = debug

    return main_group


def __getattr__(name: str) -> Any:
    """``main_group``: the ``hpcagent`` click group, built on first use."""
    if name == "main_group":
        return _main_group()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register(group: click.Group, entries: Sequence[tuple[str, str, str]]) -> None:
    import click

    for name, module_name, attr in entries:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        command = getattr(module, attr, None)
        if isinstance(command, click.Command):
            group.add_command(command, name)


def _fail(message: str, code: int, kind: str, as_json: bool) -> int:
    """Print one error line on stderr (JSON with ``--json``) and return ``code``."""
    import click

    if as_json:
        doc = {"error": {"message": message, "exit_code": code, "kind": kind}}
        click.echo(json.dumps(doc, sort_keys=True), err=True)
    else:
        click.echo(f"error: {message}", err=True)
    return code


def _usage_hint(exc: click.ClickException) -> str:
    """Click's usage error as one line, pointing at the command's --help."""
    import click

    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(ctx, click.Context):
        message = f"{message.rstrip('.')} (see '{ctx.command_path} --help')"
    return message


def run(
    command: Callable[..., object], args: Sequence[str] | None = None, prog_name: str | None = None
) -> int:
    """Run a click command; map hpcagent errors to one stderr line and an exit code.

    Every error, click's usage errors included, is one line ``error: <message>`` on stderr;
    with ``--json`` on the command line it is one JSON object
    ``{"error": {"message", "exit_code", "kind"}}`` on stderr instead. ``prog_name`` names the
    program in messages (default: ``hpcagent`` for the main group, else the command's name).
    """
    import click

    argv = list(args) if args is not None else sys.argv[1:]
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    try:
        if prog_name is None:
            named = command is _main_group()
            prog_name = "hpcagent" if named else getattr(command, "name", None)
        rv = command.main(args=argv, prog_name=prog_name, standalone_mode=False)  # type: ignore[attr-defined]
    except HpcAgentError as exc:
        return _fail(str(exc), exc.exit_code, type(exc).__name__, as_json)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, EOFError):  # a prompt met the end of stdin: not Ctrl-C
            click.echo("")  # end the prompt's line
            message = "no input: stdin ended at a prompt (give the value as an option)"
            return _fail(message, 2, "NoInput", as_json)
        return _fail("aborted", 130, "Abort", as_json)
    except click.ClickException as exc:
        return _fail(_usage_hint(exc), exc.exit_code, type(exc).__name__, as_json)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0  # ctx.exit(n) in non-standalone mode returns n


def run_job(job: dict[str, Any]) -> int:
    """Run what :func:`job_execute_args` read, as the click command would (the same logging
    set-up, errors reported as :func:`run` reports them)."""
    job = dict(job)
    _setup_logging(job.pop("debug"))
    try:
        from hpcagent.executor.launch import execute_task

        return execute_task(job.pop("task_id"), **job)
    except HpcAgentError as exc:
        return _fail(str(exc), exc.exit_code, type(exc).__name__, False)
    except KeyboardInterrupt:
        return 130


def main(args: Sequence[str] | None = None) -> None:
    """Console script ``hpcagent`` (and ``python -m hpcagent``)."""
    argv = list(args) if args is not None else sys.argv[1:]
    job = job_execute_args(argv)
    sys.exit(run_job(job) if job is not None else run(_main_group(), argv))


def slurm_main(args: Sequence[str] | None = None) -> None:
    """Console script ``hpcagent-slurm``."""
    module = importlib.import_module(SLURM_COMMAND[0])
    command = getattr(module, SLURM_COMMAND[1])
    sys.exit(run(command, args))


if __name__ == "__main__":
    main()
