"""Image references: what is pulled, what is local, what Docker calls it.

One set of rules for the executor, the submitter's pull on submit and ``hpcagent build``:

* ``docker://``, ``oras://``, ``library://``, ``shub://``, ``docker-archive://`` (and
  ``https://``) are sources, pulled once into the shared cache (:mod:`hpcagent.container.cache`);
* a local ``.sif``, sandbox folder or ``file://`` path is used as it is;
* a bare name (``nvidia/cuda:12.2.0-runtime-ubuntu22.04``, the usual value of
  ``agent.default_docker.image``) is a Docker image: ``docker://`` for Apptainer, unchanged for
  Docker.

The URI is split by spython (``spython.utils.split_uri``), the same parsing Singularity's
Python client uses, so ``docker://repo/`` and ``repo`` name the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcagent.errors import ContainerError

#: Sources that must be pulled to a SIF before they can run.
PULL_SCHEMES = ("docker", "oras", "shub", "library", "docker-archive", "https")


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: ``scheme`` ("" for a local path or bare name) and the rest."""

    scheme: str
    name: str

    @classmethod
    def parse(cls, image: str) -> ImageRef:
        text = image.strip()
        if not text:
            raise ContainerError("no container image given")
        from spython.utils import split_uri  # not loaded by a run without a container

        scheme, name = split_uri(text)
        if scheme == "file":
            return cls("", name)
        return cls(str(scheme), str(name))

    @property
    def is_source(self) -> bool:
        return self.scheme in PULL_SCHEMES

    @property
    def looks_local(self) -> bool:
        """A path: absolute, relative with ``.``/``~``, a ``.sif``, or an existing file/folder."""
        if self.scheme:
            return False
        n = self.name
        return n.startswith(("/", ".", "~")) or n.endswith(".sif") or Path(n).exists()

    def uri(self) -> str:
        """For Apptainer: the source URI, a local path as written, a bare name as docker://."""
        if self.scheme:
            return f"{self.scheme}://{self.name}"
        return self.name if self.looks_local else f"docker://{self.name}"


def is_pull_source(image: str) -> bool:
    """True for registry sources that are pulled to a SIF (``docker://``, ``oras://``, ...)."""
    return ImageRef.parse(image).is_source


def apptainer_image(image: str) -> str:
    """The reference Apptainer gets, without touching the filesystem of a local path
    (the submitter renders it for a node that may see other paths)."""
    return ImageRef.parse(image).uri()


def normalise_image(image: str) -> str:
    """A source as a URI, a local path made absolute (it must exist), a bare Docker name as
    ``docker://``."""
    ref = ImageRef.parse(image)
    if ref.scheme or not ref.looks_local:
        return ref.uri()
    path = Path(ref.name).expanduser()
    if not path.exists():
        raise ContainerError(f"container image {image} does not exist")
    return str(path.resolve())


def docker_image_name(image: str) -> str:
    """``docker://repo:tag`` → ``repo:tag``; Docker has no scheme. Other schemes are refused."""
    ref = ImageRef.parse(image)
    if ref.scheme not in ("", "docker"):
        raise ContainerError(f"Docker mode cannot run {image}: only Docker image names")
    return ref.name


def image_identity(image_path: str) -> str:
    """A stable identity of a local image: path, size and mtime of a SIF (hashing a multi-GB
    file per job would cost minutes); path and mtime of a sandbox folder."""
    path = Path(image_path)
    try:
        st = path.stat()
    except OSError:
        return image_path
    return f"{path}|{st.st_size if path.is_file() else 'dir'}|{int(st.st_mtime)}"
