"""The task's arguments and environment: the contract of ``clearml-agent execute``.

**Nothing goes on argv by default.** The official agent never adds the task's ``Args`` to the
command line: a script that uses the clearml SDK gets them from ``Task.init()``, whose argparse
binding reads ``Args/*`` from the server and overrides the parser's values (by argparse *dest*
names: ``batch_size`` for ``--batch-size``, positionals by their dest too). Putting those names
back on argv would break such scripts (``--batch_size`` is rejected, positionals and
``store_false`` options cannot be spelled from a dest), so the executor only has to give the
child the environment under which ``Task.init()`` attaches to the task (:func:`sdk_env`).

**Scripts without the SDK** get their Args on argv only when the task asks for it (see
:func:`args_on_argv`): ``hpcagent task create --args`` records the property ``args-on-argv`` and
the option strings as typed. The rendering (:func:`args_to_argv`) is documented in
docs/executor.md ("Arguments").
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hpcagent.executor.options import ExecutorConfig

#: Names an ``Args/*`` item may have to be put on the command line as an option.
_OPTION_NAME = r"^-{0,2}[A-Za-z_][A-Za-z0-9_.\-]*$"
#: ``Args/1``, ``Args/2``, ...: positionals, in their numeric order, before the options.
_POSITIONAL_NAME = r"^[0-9]{1,3}$"

#: SDK variables a child must never inherit from whoever started the executor: with them the
#: SDK would attach the task's ``Task.init()`` to another process's task (the "process master").
INHERITED_SDK_VARS = (
    "CLEARML_PROC_MASTER_ID",
    "TRAINS_PROC_MASTER_ID",
    "CLEARML_TASK_ID",
    "TRAINS_TASK_ID",
    "CLEARML_SIMULATE_REMOTE_TASK",
)

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def args_on_argv(properties: Mapping[str, str], configured: bool) -> bool:
    """Whether the task's Args go on argv.

    The task's property ``args-on-argv`` (``true``/``false``) wins; without it the configured
    ``executor.args_to_cli`` (default ``false``: the agent's contract) decides.
    """
    if not properties:  # most tasks: no need to import hpcagent.taskbuild (its TaskSpec) at all
        return configured
    from hpcagent.taskbuild import ARGS_ON_ARGV_PROPERTY

    value = str(properties.get(ARGS_ON_ARGV_PROPERTY, "")).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return configured


def _as_list(value: str) -> list[str] | None:
    """``"[1, 2]"`` / ``"['a', 'b']"`` (how lists are recorded) as argv items, else None."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(parsed, list | tuple):
        return None
    return [str(item) for item in parsed]


def args_to_argv(args: tuple[tuple[str, str], ...]) -> list[str]:
    """Render ``Args/*`` items as command-line arguments (for tasks with Args on argv).

    * ``1``, ``2``, ... are positionals: their values come first, in numeric order;
    * any other name is an option: used as is when it starts with ``-`` (``--batch-size``,
      ``-v``), else ``--`` is put in front;
    * ``"true"`` gives the bare flag (``store_true``/``store_false`` options);
      ``"false"``, ``""`` and ``"None"`` give nothing (the script's default applies);
    * a list value (``[1, 2]``, as recorded for ``nargs``) gives the option and one argv item
      per element (an empty list gives nothing);
    * anything else gives the option and the value as ONE argv item (no shell, no splitting);
    * names that are neither are skipped.
    """
    positionals: list[tuple[int, list[str]]] = []
    options: list[str] = []
    for name, value in args:
        items = _as_list(value)
        if re.match(_POSITIONAL_NAME, name):
            positionals.append((int(name), items if items is not None else [value]))
            continue
        if not re.match(_OPTION_NAME, name):
            continue
        flag = name if name.startswith("-") else f"--{name}"
        low = value.strip().lower()
        if low in ("false", "", "none") or items == []:
            continue
        if low == "true":
            options.append(flag)
        elif items is not None:
            options.extend([flag, *items])
        else:
            options.extend([flag, value])
    argv = [item for _, items in sorted(positionals, key=lambda p: p[0]) for item in items]
    return argv + options


def sdk_env(
    env: Mapping[str, str], *, task_id: str, config_file: str, worker: str
) -> dict[str, str]:
    """``env`` with what ``clearml-agent execute`` gives a task, so that ``Task.init()``,
    ``Task.current_task()`` and the argparse binding attach to ``task_id``.

    Inherited process-master and task variables are dropped first (:data:`INHERITED_SDK_VARS`);
    then ``CLEARML_TASK_ID``, ``CLEARML_CONFIG_FILE`` and ``CLEARML_LOG_TASK_TO_BACKEND=0``
    (each with its ``TRAINS_`` twin), ``CLEARML_LOG_LEVEL`` (``INFO`` unless set) and the
    worker id are set.
    """
    out = {k: v for k, v in env.items() if k not in INHERITED_SDK_VARS}
    for prefix in ("CLEARML", "TRAINS"):
        out[f"{prefix}_TASK_ID"] = task_id
        out[f"{prefix}_CONFIG_FILE"] = config_file
        out[f"{prefix}_LOG_TASK_TO_BACKEND"] = "0"
    level = out.get("CLEARML_LOG_LEVEL") or out.get("TRAINS_LOG_LEVEL") or "INFO"
    out["CLEARML_LOG_LEVEL"] = out["TRAINS_LOG_LEVEL"] = level
    out["CLEARML_WORKER_ID"] = worker
    return out


def child_env(
    cfg: ExecutorConfig,
    host_env: Mapping[str, str],
    task_env: Iterable[tuple[str, str]],
    workdir: Path,
    *,
    python: Path,
    code_dir: Path,
    task_id: str,
    worker: str,
) -> dict[str, str]:
    """The environment the task's entry point runs under (docs/executor.md, "Environment").

    ``host_env`` plus the task's own variables (only with ``enable_task_env``), then
    :func:`sdk_env`, the ``CLEARML_*`` hosts and credentials, the venv of ``python`` first on
    ``PATH`` and ``code_dir`` first on ``PYTHONPATH``; ``PYTHONHOME`` is dropped. Writes
    ``workdir/clearml.conf`` (mode 0600) for the SDK: secrets go only into the returned
    environment and that file, never on argv.
    """
    env = dict(host_env)
    if cfg.enable_task_env:
        env.update(dict(task_env))
    conf = workdir / "clearml.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # The SDK needs a web and a files host; when they cannot be derived from the API host
    # (a non-8008 port), the API host stands in (it only serves links and uploads).
    web = cfg.web_server or cfg.api_server
    files = cfg.files_server or cfg.api_server
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "api {\n"
            f"  api_server: {json.dumps(cfg.api_server)}\n"
            f"  web_server: {json.dumps(web)}\n"
            f"  files_server: {json.dumps(files)}\n"
            "  credentials {\n"
            f"    access_key: {json.dumps(cfg.access_key)}\n"
            f"    secret_key: {json.dumps(cfg.secret_key)}\n"
            "  }\n}\n"
        )
    venv_bin = str(python.parent)
    env = sdk_env(env, task_id=task_id, config_file=str(conf), worker=worker)
    env.update(
        {
            "CLEARML_API_HOST": cfg.api_server,
            "CLEARML_WEB_HOST": web,
            "CLEARML_FILES_HOST": files,
            "CLEARML_API_ACCESS_KEY": cfg.access_key,
            "CLEARML_API_SECRET_KEY": cfg.secret_key,
            "PYTHONUNBUFFERED": "1",
            "VIRTUAL_ENV": str(python.parent.parent),
            "PATH": venv_bin + os.pathsep + env.get("PATH", os.defpath),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(code_dir), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env.pop("PYTHONHOME", None)
    return env
