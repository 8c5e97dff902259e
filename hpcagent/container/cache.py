"""Pull once: a shared cache of SIF images, filled under a lock with an atomic rename.

Many array jobs that start at once and all pull the same ``docker://`` image corrupt
Apptainer's layer cache or fail (apptainer/singularity#3634, #5020); the maintainers advise
pulling once and running the SIF. So::

    <cache_dir>/<slug>-<sha12>.sif     the image, complete (only ever created by rename)
    <cache_dir>/.pull.lock             one lock for the whole cache (images share layers)
    <cache_dir>/.<name>.pulling.<pid>  a pull in progress (removed on failure)

:func:`ensure_image` returns at once when the SIF exists; otherwise it takes the lock, checks
again (another job may have finished the pull meanwhile), pulls to the temporary name and
renames it. Jobs that come while a pull runs wait on the lock and then find the file.

The lock is ``filelock.FileLock`` (``flock``), released by the kernel when a holder dies, so a
crashed pull leaves no stale lock. Where the shared filesystem has no ``flock`` (Lustre without
the ``flock`` mount option) it falls back to ``SoftFileLock`` (``O_EXCL`` file); see
docs/containers.md for clearing a stale one.

The submitter calls :func:`ensure_image` itself on the login node before ``sbatch``
(``agent.container.pull_on_submit``); compute nodes without internet then find the image in
the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

from hpcagent.config import ContainerSettings
from hpcagent.container.apptainer import Runtime, resolve_runtime
from hpcagent.container.images import is_pull_source, normalise_image
from hpcagent.errors import CommandError, ContainerError
from hpcagent.process import run_command

Logger = Callable[[str], None]
LOCK_NAME = ".pull.lock"


def _quiet(_: str) -> None:
    pass


def cache_name(source: str) -> str:
    """Fixed file name of a pulled source: readable slug plus a hash of the full source."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.split("://", 1)[-1]).strip("._")[:80]
    return f"{slug or 'image'}-{digest}.sif"


def cached_image_path(source: str, cache_dir: Path) -> Path:
    """Where ``source`` lives (or will live) in the cache."""
    return cache_dir / cache_name(source)


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, timeout_s: float, log: Logger) -> Iterator[None]:
    path = str(cache_dir / LOCK_NAME)
    lock: BaseFileLock = FileLock(path, timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout as exc:
        raise ContainerError(f"waited {timeout_s:.0f} s for the image cache lock {path}") from exc
    except OSError as exc:  # no flock on this filesystem
        log(f"flock unavailable on {cache_dir} ({exc}); using an O_EXCL lock file")
        lock = SoftFileLock(path + ".soft", timeout=timeout_s)
        try:
            lock.acquire()
        except Timeout as exc2:
            raise ContainerError(
                f"waited {timeout_s:.0f} s for {path}.soft (remove it if no pull is running)"
            ) from exc2
    try:
        yield
    finally:
        lock.release()


def pull_argv(runtime: Runtime, source: str, dest: Path) -> list[str]:
    """``<bin> pull <dest> <source>``: the SIF goes to ``dest`` exactly."""
    return [runtime.path, "pull", str(dest), source]


def ensure_image(
    image: str,
    settings: ContainerSettings,
    runtime: Runtime | None = None,
    *,
    log: Logger = _quiet,
) -> str:
    """A local image path for ``image``: local SIF/sandbox as is, sources pulled once.

    Safe when many processes on many hosts call it at once for the same image on a shared
    cache folder: exactly one pulls, the others wait and reuse the result.

    Raises ContainerError when the pull fails or times out (the temporary file is removed).
    """
    source = normalise_image(image)
    if not is_pull_source(source):
        return source
    cache_dir = settings.cache_dir
    target = cached_image_path(source, cache_dir)
    if target.is_file():
        return str(target)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContainerError(f"cannot create the image cache {cache_dir}: {exc}") from exc
    runtime = runtime or resolve_runtime(settings.binary)
    started = time.monotonic()
    with _cache_lock(cache_dir, settings.lock_timeout_s, log):
        if target.is_file():  # pulled by another job while this one waited
            log(f"image {source}: pulled by another job ({time.monotonic() - started:.0f} s wait)")
            return str(target)
        # Holding the lock, nobody else pulls: leftovers are from pulls that were killed.
        for stale in cache_dir.glob(f".{target.name}.pulling.*"):
            log(f"removing {stale.name}, left by an interrupted pull")
            stale.unlink(missing_ok=True)
        tmp = cache_dir / f".{target.name}.pulling.{os.getpid()}"
        log(f"pulling {source} into {target} with {runtime.describe()}")
        try:
            res = run_command(pull_argv(runtime, source, tmp), timeout=settings.pull_timeout_s)
        except CommandError as exc:
            tmp.unlink(missing_ok=True)
            raise ContainerError(f"pulling {source} failed: {exc}") from exc
        if res.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            detail = (res.stderr.strip() or res.stdout.strip())[-2000:]
            raise ContainerError(f"pulling {source} failed (exit {res.returncode}): {detail}")
        os.replace(tmp, target)
        log(f"pulled {source} in {time.monotonic() - started:.0f} s")
    return str(target)
