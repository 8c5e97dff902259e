"""The seed's template form ``[srun] singularity exec ${CLEARML_AGENT_EXECUTE}``.

ClearML's Slurm glue renders ``${CLEARML_AGENT_EXECUTE}`` as ``IMAGE <agent> execute --id T``,
so the agent itself runs inside the image and the image must contain it. hpcagent prefers
the executor on the host, driving the container (docs/containers.md), and supports both:

* ``mode: host`` (default): in singularity mode the submitter renders the same
  ``IMAGE hpcagent execute --id T`` and puts :func:`shim_pre_setup` into
  ``${CLEARML_PRE_SETUP}``. That line puts a shim folder first on PATH; its ``singularity``
  and ``apptainer`` shims recognise exactly one call shape, ``exec [FLAGS] IMAGE hpcagent
  execute ...`` (also behind ``env K=V`` and ``PYTHON -m``), and run that hpcagent command on
  the host instead, with the image and the
  flags in ``HPCAGENT_CONTAINER_*`` variables (read back by :func:`request_from_env`). Every
  other call goes to the real binary unchanged. PATH survives ``srun``, so ``srun singularity
  exec ...`` works too, and the executor then runs inside the step.
* ``mode: inside``: no shim; the real binary runs hpcagent in the image (which must contain
  it); the executor sees ``APPTAINER_CONTAINER`` and runs the task without nesting.

Templates without the ``singularity exec`` prefix get ``env HPCAGENT_CONTAINER_MODE=singularity
hpcagent execute --id T`` (hpcagent.submitter.blocks).

The submitter's pre-setup line is ``eval "$(PYTHON -m hpcagent.container.shim activate)"``
(:func:`activate_line`), which writes the shims on the node and prints the PATH line;
:func:`wrapped_execute` puts the image in front of the command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcagent import process

if TYPE_CHECKING:
    from hpcagent.container.base import ContainerRequest

ENV_IMAGE = "HPCAGENT_CONTAINER_IMAGE"
ENV_ARGS = "HPCAGENT_CONTAINER_ARGS"
ENV_BINARY = "HPCAGENT_CONTAINER_BINARY"
SHIM_NAMES = ("singularity", "apptainer")
SHIM_MARK = b"# hpcagent shim"
_WRAPPED = r"\b(singularity|apptainer)\s+exec\b[^\n]*\$\{CLEARML_AGENT_EXECUTE\}"


def template_wraps_agent_execute(template_text: str) -> bool:
    """True when a line runs ``singularity|apptainer exec ... ${CLEARML_AGENT_EXECUTE}``."""
    return bool(re.search(_WRAPPED, template_text))


def wrapped_execute(image: str, command: str) -> str:
    """``${CLEARML_AGENT_EXECUTE}`` for the seed's form: the image (a bare Docker name gets
    ``docker://``), quoted, in front of ``command`` (already shell text)."""
    from hpcagent.container.images import apptainer_image  # the submitter's, not every job's

    return f"{shlex.quote(apptainer_image(image))} {command}"


def shim_pre_setup(shim_dir: Path | str) -> str:
    """The line for ``${CLEARML_PRE_SETUP}`` that activates the shims (mode host)."""
    return f'export PATH={shlex.quote(str(shim_dir))}:"$PATH"'


def default_shim_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$TMPDIR/hpcagent-shims-<uid>`` on the node (one per user; installs are atomic)."""
    env = os.environ if env is None else env
    return Path(env.get("TMPDIR") or "/tmp") / f"hpcagent-shims-{os.getuid()}"  # noqa: S108


def activate_line(python: str) -> str:
    """The ``${CLEARML_PRE_SETUP}`` line for mode host that needs nothing prepared: it writes
    the shims on the node with ``python`` (which must import hpcagent there) and puts them
    first on PATH. The submitter builds it from its own interpreter, without importing this."""
    return f'eval "$({shlex.quote(python)} -m hpcagent.container.shim activate)"'


def install_shims(directory: Path, python: str = sys.executable) -> Path:
    """Write the ``singularity``/``apptainer`` shims into ``directory`` (idempotent, atomic).

    ``python`` must be an interpreter that imports hpcagent on the compute nodes (the
    submitter's own venv on a shared filesystem is the usual choice).
    """
    directory.mkdir(parents=True, exist_ok=True)
    body = (
        "#!/bin/sh\n"
        "# hpcagent shim (docs/containers.md): 'exec [FLAGS] IMAGE hpcagent execute ...' runs\n"
        "# the executor on the host; any other call goes to the real binary.\n"
        f"exec {shlex.quote(python)} -m hpcagent.container.shim shim "
        f'"$(basename "$0")" {shlex.quote(str(directory))} "$@"\n'
    )
    for name in SHIM_NAMES:
        tmp = directory / f".{name}.{os.getpid()}"
        tmp.write_text(body)
        tmp.chmod(0o755)
        os.replace(tmp, directory / name)
    return directory


def _is_shim(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return SHIM_MARK in fh.read(256)
    except OSError:
        return False


def find_real_binary(name: str, shim_dir: Path, path_var: str) -> str | None:
    """``name`` on PATH, skipping the shim folder and any other hpcagent shim (two shim
    folders on PATH would otherwise hand the call to each other forever)."""
    skip = os.path.realpath(shim_dir)
    for folder in path_var.split(os.pathsep):
        if not folder or os.path.realpath(folder) == skip:
            continue
        found = shutil.which(name, path=folder)
        if found and not _is_shim(found):
            return found
    return None


def _is_hpcagent_execute(args: Sequence[str], i: int) -> bool:
    return os.path.basename(args[i]) == "hpcagent" and args[i + 1] == "execute"


def split_wrapped_call(args: Sequence[str]) -> tuple[str, list[str], list[str]] | None:
    """For ``exec [FLAGS] IMAGE LAUNCHER... hpcagent execute REST``:
    ``(IMAGE, FLAGS, [*LAUNCHER, "hpcagent", "execute", *REST])``; None for any other call.

    The launcher is what starts hpcagent on the host, as the submitter rendered it: nothing
    (``hpcagent execute``), ``PYTHON -m hpcagent execute``, either behind
    ``env K=V ...``. The image is the word just before it.
    """
    if len(args) < 4 or args[0] != "exec":
        return None
    for i in range(2, len(args) - 1):
        if not _is_hpcagent_execute(args, i):
            continue
        start = i
        if start >= 2 and args[start - 1] == "-m":
            start -= 2  # PYTHON -m hpcagent
        while start >= 2 and "=" in args[start - 1] and not args[start - 1].startswith("-"):
            start -= 1  # K=V of env
        if start >= 2 and os.path.basename(args[start - 1]) == "env":
            start -= 1
        if start < 2:
            return None
        return args[start - 1], list(args[1 : start - 1]), list(args[start:])
    return None


def request_from_env(env: Mapping[str, str] | None = None) -> tuple[ContainerRequest, str] | None:
    """What the shim handed over: ``(request, runtime binary)``; None when not started by it.

    The executor calls this at start and, when it returns a request, runs the task in that
    image with that binary (overriding ``agent.container.binary``).
    """
    env = os.environ if env is None else env
    image = env.get(ENV_IMAGE, "").strip()
    if not image:
        return None
    # Imported here: every job asks, few run in a container (hpcagent execute's start-up).
    from hpcagent.container.base import ContainerRequest, split_arguments

    return ContainerRequest(image, split_arguments(env.get(ENV_ARGS, ""))), env.get(ENV_BINARY, "")


def shim_exec(name: str, shim_dir: Path, args: Sequence[str]) -> int:
    """Replace this process: the host executor for a wrapped call, else the real binary."""
    env = dict(os.environ)
    real = find_real_binary(name, shim_dir, env.get("PATH", ""))
    wrapped = split_wrapped_call(args)
    if wrapped is not None:
        image, flags, launcher = wrapped
        env[ENV_IMAGE] = image
        env[ENV_ARGS] = shlex.join(flags)
        env[ENV_BINARY] = real or ""
        if launcher[0] == "hpcagent" and not shutil.which("hpcagent", path=env.get("PATH")):
            launcher = [sys.executable, "-m", *launcher]  # the shim's own Python has hpcagent
        # Replaces the shim (no extra process): signals from srun/Slurm reach the executor.
        process.replace_with(launcher, env)
    if real is None:
        print(f"hpcagent shim: {name} not found on PATH (outside {shim_dir})", file=sys.stderr)
        return 127
    process.replace_with([real, *args], env)  # the real runtime (a path), argv unchanged
    return 127  # not reached


def _main(argv: Sequence[str]) -> int:
    usage = (
        "usage: python -m hpcagent.container.shim activate [DIR]\n"
        "       python -m hpcagent.container.shim install DIR [PYTHON]\n"
        "       python -m hpcagent.container.shim shim NAME DIR [ARGS...]"
    )
    if argv and argv[0] == "activate":
        folder = Path(argv[1]) if len(argv) > 1 else default_shim_dir()
        print(shim_pre_setup(install_shims(folder, sys.executable)))
        return 0
    if len(argv) >= 2 and argv[0] == "install":
        python = argv[2] if len(argv) > 2 else sys.executable
        print(install_shims(Path(argv[1]), python))
        return 0
    if len(argv) >= 3 and argv[0] == "shim":
        return shim_exec(argv[1], Path(argv[2]), argv[3:])
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
