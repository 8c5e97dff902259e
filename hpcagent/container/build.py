"""``hpcagent build``: an image with a task's environment that runs the task at launch.

As ``clearml-agent build`` (the seed's docs)::

    hpcagent build --id TASK --docker --target NAME [--entry-point reuse_task|clone_task]
    hpcagent build --id TASK --singularity --target NAME.def|NAME.sif [--entry-point ...]

The image is the task's base image (``container.image``, else ``agent.default_docker.image``)
plus

* hpcagent in its own venv at ``/opt/hpcagent/venv``, installed from a wheelhouse that this
  host fills (``pip wheel`` of hpcagent and of the task's recorded requirements, for the
  image's Python version), so the image build itself needs no index and no registry: Docker
  builds work offline from a local base image;
* the task's venv, built at image build time by the executor's own venv code
  (:mod:`hpcagent.executor.prebuild`) into the venv cache ``/opt/hpcagent/venvs-cache``, so a
  launch finds it (``venv cache: hit``) instead of installing;
* the entry point: ``reuse_task`` runs ``hpcagent execute --id TASK``, ``clone_task`` runs
  ``hpcagent execute --id TASK --clone`` (a fresh copy per launch); without one the image
  only holds the environment.

No credentials go into the image: give them at launch (``docker run -e CLEARML_API_HOST
-e CLEARML_API_ACCESS_KEY -e CLEARML_API_SECRET_KEY ...`` or a bound ``clearml.conf``).

The Apptainer equivalent is a definition file converted from the same Dockerfile by spython
(``DockerParser`` → ``SingularityWriter``), always written; ``apptainer build`` makes the SIF
where ``apptainer`` exists. A base image that is in the local Docker engine becomes
``Bootstrap: docker-daemon`` (no registry); a local SIF ``Bootstrap: localimage``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spython.main.parse.parsers import DockerParser
from spython.main.parse.writers import SingularityWriter

import hpcagent
from hpcagent.config import ContainerSettings
from hpcagent.container.apptainer import resolve_runtime
from hpcagent.container.base import task_image
from hpcagent.container.docker import docker
from hpcagent.container.images import ImageRef
from hpcagent.errors import CommandError, ContainerError
from hpcagent.process import run_command

ENTRY_POINTS = ("reuse_task", "clone_task")
PREFIX = "/opt/hpcagent"
VENV = f"{PREFIX}/venv"
VENVS_CACHE = f"{PREFIX}/venvs-cache"
WHEELS_IN_IMAGE = "/tmp/hpcagent-wheels"  # noqa: S108 - build-time only, removed in the layer
BUILD_TIMEOUT_S = 3600.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_SAFE_IMAGE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
Logger = Callable[[str], None]


@dataclass(frozen=True)
class BuildSpec:
    """What goes into the image (everything the recipe is rendered from)."""

    task_id: str
    base_image: str
    requirements: tuple[str, ...] = ()
    container_image: str = ""  # the task's own container.image (part of the venv cache key)
    script_binary: str = ""
    entry_point: str | None = None

    def __post_init__(self) -> None:
        if not _SAFE_ID.match(self.task_id):
            raise ContainerError(f"task id {self.task_id!r} cannot be used in an image recipe")
        if not _SAFE_IMAGE.match(self.base_image):
            raise ContainerError(f"base image {self.base_image!r} is not a plain image name")
        if self.entry_point is not None and self.entry_point not in ENTRY_POINTS:
            raise ContainerError(f"--entry-point must be one of {', '.join(ENTRY_POINTS)}")

    @classmethod
    def for_task(
        cls, task: Mapping[str, Any], cfg: ContainerSettings, entry_point: str | None
    ) -> BuildSpec:
        """From the task record: its image (else the default), recorded requirements and the
        task's interpreter name."""
        base = task_image(task, cfg)
        if not base:
            raise ContainerError(
                "the task has no container.image and agent.default_docker.image is empty: "
                "nothing to build on"
            )
        script = task.get("script") or {}
        pip = ((script.get("requirements") or {}).get("pip")) or ""
        reqs = [x.strip() for x in str(pip).splitlines()]
        return cls(
            task_id=str(task.get("id") or ""),
            base_image=base.removeprefix("docker://"),
            requirements=tuple(r for r in reqs if r and not r.startswith("#")),
            container_image=str((task.get("container") or {}).get("image") or ""),
            script_binary=str(script.get("binary") or ""),
            entry_point=entry_point,
        )

    def entry_argv(self) -> list[str]:
        if self.entry_point is None:
            return []
        argv = [f"{VENV}/bin/hpcagent", "execute", "--id", self.task_id]
        return [*argv, "--clone"] if self.entry_point == "clone_task" else argv

    def build_json(self) -> str:
        """What :mod:`hpcagent.executor.prebuild` reads inside the image (no secrets)."""
        doc = {
            "task_id": self.task_id,
            "requirements": list(self.requirements),
            "container_image": self.container_image,
            "script_binary": self.script_binary,
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def render_dockerfile(spec: BuildSpec) -> str:
    """The Dockerfile (paths relative to the build context: ``wheels/``, ``build.json``)."""
    env = {
        "CLEARML_AGENT__AGENT__VENVS_CACHE__PATH": VENVS_CACHE,
        "CLEARML_AGENT__AGENT__VENVS_CACHE__FREE_SPACE_THRESHOLD_GB": "0",
        "CLEARML_AGENT__AGENT__PACKAGE_MANAGER__TYPE": "pip",
    }
    lines = [
        f"# hpcagent build --id {spec.task_id} (docs/containers.md): the task's environment",
        f"FROM {spec.base_image}",
        f'LABEL org.hpcagent.task="{spec.task_id}"',
        *(f"ENV {k}={v}" for k, v in env.items()),
        f"COPY wheels {WHEELS_IN_IMAGE}",
        f"COPY build.json {PREFIX}/build.json",
        f"RUN python3 -m venv {VENV} && "
        f"{VENV}/bin/pip install --no-index --find-links {WHEELS_IN_IMAGE} hpcagent && "
        f"PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELS_IN_IMAGE} "
        f"{VENV}/bin/python -m hpcagent.executor.prebuild {PREFIX}/build.json && "
        f"rm -rf {WHEELS_IN_IMAGE}",
    ]
    entry = spec.entry_argv()
    if entry:
        lines.append("ENTRYPOINT " + json.dumps(entry))
    return "\n".join(lines) + "\n"


def dockerfile_to_def(dockerfile: Path, *, bootstrap: str, base: str, context: Path) -> str:
    """The Apptainer definition for ``dockerfile`` (spython's conversion), with the bootstrap
    agent for ``base``, the ``%files`` sources made absolute (``context``), so that
    ``apptainer build X.sif X.def`` works from any folder, and the ``ENV`` values exported in
    ``%post`` (the prebuild step reads them there)."""
    if re.search(r"\s", str(context)):
        raise ContainerError(f"build folder {context} contains a space (Apptainer's %files)")
    recipe = DockerParser(str(dockerfile)).recipe
    text = str(SingularityWriter(recipe).convert())
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("Bootstrap:"):
            line = f"Bootstrap: {bootstrap}"
        elif line.startswith("From:"):
            line = f"From: {base}"
        elif line.startswith("%"):
            section = line.split()[0]
        elif section == "%files" and line.strip() and not line.startswith("/"):
            line = f"{context / line}"
        elif section == "%post" and _ASSIGNMENT.match(line):
            line = f"export {line}"  # spython writes ENV as plain assignments: the build needs them
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


# -- the wheelhouse ------------------------------------------------------------------------


def _hpcagent_source() -> str:
    """The checkout hpcagent runs from (pip can build it), else ``hpcagent==VERSION``."""
    root = Path(hpcagent.__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return str(root)
    return f"hpcagent=={hpcagent.__version__}"


def wheelhouse_argv(folder: Path, requirements: Sequence[str], image_python: str) -> list[str]:
    """``pip wheel`` (same Python minor as here) or ``pip download`` of binary wheels for the
    image's Python (another minor) of hpcagent and the task's requirements into ``folder``."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pip = [sys.executable, "-m", "pip"]
    if image_python in ("", here):
        return [*pip, "wheel", "-q", "-w", str(folder), _hpcagent_source(), *requirements]
    abi = "cp" + image_python.replace(".", "")
    return [
        *pip,
        "download",
        "-q",
        "--only-binary=:all:",
        "--python-version",
        image_python,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(folder),
        _hpcagent_source(),
        *requirements,
    ]


def _minor(version: str) -> str:
    parts = version.strip().split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else ""


def _checked(argv: list[str], what: str, timeout: float = BUILD_TIMEOUT_S) -> str:
    try:
        res = run_command(argv, timeout=timeout)
    except CommandError as exc:
        raise ContainerError(f"{what} failed: {exc}") from exc
    if res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip())[-2000:]
        raise ContainerError(f"{what} failed (exit {res.returncode}): {detail}")
    return str(res.stdout)


# -- the builds ----------------------------------------------------------------------------


@dataclass
class Builder:
    """Makes the context folder and runs the build (``log`` gets one line per step)."""

    spec: BuildSpec
    settings: ContainerSettings
    context: Path
    log: Logger = print

    def prepare(self, image_python: str) -> Path:
        """Write ``Dockerfile``, ``build.json`` and ``wheels/`` into the context folder."""
        self.context.mkdir(parents=True, exist_ok=True)
        wheels = self.context / "wheels"
        wheels.mkdir(exist_ok=True)
        self.log(f"build: wheelhouse for Python {image_python or 'as here'} in {wheels}")
        _checked(wheelhouse_argv(wheels, self.spec.requirements, image_python), "pip wheel")
        (self.context / "build.json").write_text(self.spec.build_json())
        dockerfile = self.context / "Dockerfile"
        dockerfile.write_text(render_dockerfile(self.spec))
        return dockerfile

    def _docker(self) -> str:
        found = shutil.which(self.settings.docker_binary)
        if not found:
            raise ContainerError(f"{self.settings.docker_binary} not found (needed for --docker)")
        return found

    def _docker_has(self, client: str, image: str) -> bool:
        return docker([client, "image", "inspect", image]).returncode == 0

    def _image_python(self, client: str | None) -> str:
        probe = ["python3", "-c", "import platform; print(platform.python_version())"]
        if client is not None:
            out = _checked(
                [client, "run", "--rm", "--entrypoint", "", self.spec.base_image, *probe],
                "probing python3 in the base image",
                timeout=600,
            )
            return _minor(out.strip().splitlines()[-1] if out.strip() else "")
        return ""

    def docker_build(self, target: str) -> str:
        """``docker build --network host -t TARGET`` of the context; returns the image id."""
        client = self._docker()
        if not self._docker_has(client, self.spec.base_image):
            self.log(f"build: base image {self.spec.base_image} is not local; docker will pull")
        dockerfile = self.prepare(self._image_python(client))
        self.log(f"build: docker build -t {target} {self.context}")
        _checked(
            [
                client,
                "build",
                "--network",
                "host",
                "-t",
                target,
                "-f",
                str(dockerfile),
                str(self.context),
            ],
            "docker build",
        )
        image_id = _checked([client, "image", "inspect", "--format", "{{.Id}}", target], "inspect")
        return image_id.strip()

    def singularity_build(self, target: Path) -> tuple[Path, Path | None]:
        """The definition file (always) and the SIF (where apptainer exists): ``(def, sif)``."""
        ref = ImageRef.parse(self.spec.base_image)
        client = shutil.which(self.settings.docker_binary)
        if not ref.scheme and ref.looks_local:
            bootstrap, base = "localimage", str(Path(ref.name).expanduser().resolve())
            client = None
        elif client is not None and self._docker_has(client, self.spec.base_image):
            bootstrap, base = "docker-daemon", self.spec.base_image
        else:
            bootstrap, base, client = "docker", ref.name, None
        python = self._image_python(client)
        if not python:
            self.log("build: the base image's Python is not known here; wheels for this Python")
        dockerfile = self.prepare(python)
        definition = target.with_suffix(".def")
        definition.write_text(
            dockerfile_to_def(dockerfile, bootstrap=bootstrap, base=base, context=self.context)
        )
        self.log(f"build: definition file {definition}")
        if target.suffix != ".sif":
            return definition, None
        try:
            runtime = resolve_runtime(self.settings.binary)
        except ContainerError as exc:
            self.log(f"build: no SIF ({exc}); run: apptainer build {target} {definition}")
            return definition, None
        self.log(f"build: {runtime.describe()} build {target}")
        _checked([runtime.path, "build", "--force", str(target), str(definition)], "build")
        return definition, target
