"""The scheduler backends, found as Python entry points in the group ``hpcagent.schedulers``.

pyproject.toml declares hpcagent's own (``slurm``, ``gridengine``, ``local``); another
distribution adds a backend by declaring its own entry point there, pointing at a
:class:`~hpcagent.scheduler.base.Scheduler` subclass whose ``name`` is the entry point's name.
Nothing else in hpcagent names a backend: ``hpcagent-slurm --scheduler`` offers
:func:`names`, ``auto`` is :func:`choose`, and the executor asks :func:`job_identity`.

Reading entry points (``importlib.metadata``: ~15 ms of CPU to import, then every
distribution's metadata) is a noticeable part of a short ``hpcagent execute``, which asks
for its job identity in every job: the group's ``(name, value)`` pairs are kept in a per-user
cache (:func:`entry_point_pairs`), valid while every ``entry_points.txt`` on ``sys.path``
keeps its path, size and modification time. Importing every backend to ask it (~0.007 s of CPU
for hpcagent's three) is avoided the same way: :func:`job_identity` asks only the backends one
of whose ``job_env_prefixes`` the environment has (:func:`job_env_index`, cached too).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping

from hpcagent.config.loader import cache_root, write_cache_entry
from hpcagent.errors import ConfigError, UsageError
from hpcagent.scheduler.base import JobIdentity, Scheduler

GROUP = "hpcagent.schedulers"


def _metadata_key() -> str:
    """A digest of what ``importlib.metadata`` would read entry points from: each
    ``*.dist-info``/``*.egg-info`` ``entry_points.txt`` in the ``sys.path`` folders (path, size,
    mtime), the zip files on ``sys.path``, and the interpreter. Installing, removing or
    upgrading a distribution changes it."""
    seen: list[str] = [sys.version, sys.prefix, GROUP]
    for entry in sys.path:
        try:
            listing = os.scandir(entry or ".")
        except NotADirectoryError:  # a zip on sys.path
            with contextlib.suppress(OSError):
                st = os.stat(entry)
                seen.append(f"{entry}\0{st.st_size}\0{st.st_mtime_ns}")
            continue
        except OSError:
            continue
        with listing:
            for item in listing:
                if not item.name.endswith((".dist-info", ".egg-info")):
                    continue
                path = os.path.join(item.path, "entry_points.txt")
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    seen.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(seen).encode()).hexdigest()


def entry_point_pairs(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The ``(name, value)`` of every entry point in :data:`GROUP`, as ``importlib.metadata``
    lists them, through the per-user cache (``<cache_root>/entry-points/``, one file per
    interpreter prefix, :func:`hpcagent.config.loader.write_cache_entry`). Any failure to read
    the cache falls back to ``importlib.metadata``."""
    environ = os.environ if env is None else env
    name = hashlib.sha256(sys.prefix.encode()).hexdigest()[:32] + ".json"
    entry = cache_root(environ) / "entry-points" / name
    key = _metadata_key()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(entry.read_text("utf-8"))
        if doc["key"] == key:
            return [(str(name), str(value)) for name, value in doc["pairs"]]
    from importlib.metadata import entry_points

    pairs = [(ep.name, ep.value) for ep in entry_points(group=GROUP)]
    write_cache_entry(entry, {"key": key, "pairs": pairs})
    return pairs


def load_entry_point(value: str) -> object:
    """What ``importlib.metadata.EntryPoint(value=value).load()`` returns: ``module`` or
    ``module:attr.path`` (extras in brackets ignored)."""
    module, _, attrs = value.split("[", 1)[0].partition(":")
    obj: object = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


def _load_backend(name: str, value: str) -> type[Scheduler]:
    """The Scheduler of entry point ``name = value``; :class:`ConfigError` when it is not one."""
    cls = load_entry_point(value)
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)) or cls.name != name:
        raise ConfigError(f"entry point {GROUP}:{name} = {value} is not its Scheduler")
    return cls


@functools.cache
def backends() -> dict[str, type[Scheduler]]:
    """Every registered backend by name, highest ``auto_priority`` first.

    Raises :class:`ConfigError` when none is registered (hpcagent's install metadata is older
    than its entry points: reinstall it) or an entry point is not a Scheduler of that name.
    """
    found: dict[str, type[Scheduler]] = {}
    for name, value in entry_point_pairs():
        found[name] = _load_backend(name, value)
    if not found:
        raise ConfigError(
            f"no scheduler backends registered (entry points {GROUP}); "
            "reinstall hpcagent (pip install -e .) so that its metadata lists them"
        )
    return dict(sorted(found.items(), key=lambda kv: (-kv[1].auto_priority, kv[0])))


def names() -> list[str]:
    """The registered backend names (highest auto priority first)."""
    return list(backends())


def get(name: str) -> type[Scheduler]:
    """The backend registered as ``name``; :class:`UsageError` for an unknown name."""
    try:
        return backends()[name]
    except KeyError:
        raise UsageError(
            f"unknown scheduler {name!r}; registered: {', '.join(backends())}"
        ) from None


def choose(kind: str, env: Mapping[str, str] | None = None) -> type[Scheduler]:
    """``kind`` itself, or for ``auto`` the available backend with the highest priority."""
    if kind != "auto":
        return get(kind)
    env = os.environ if env is None else env
    for cls in backends().values():
        if cls.available(env):
            return cls
    raise UsageError(f"no scheduler is available here (tried {', '.join(backends())})")


def cancel_own_job(env: Mapping[str, str] | None = None) -> JobIdentity | None:
    """Cancel the job this process runs in through its backend, from rank 0 only; that job, or
    None outside a job, on another rank, or where the backend does not cancel its own jobs.
    Raises :class:`~hpcagent.errors.SchedulerError` when the cancel command fails."""
    job = job_identity(env)
    if job is None or (job.rank or 0) != 0:
        return None
    return job if backends()[job.scheduler].cancel_own_job(job) else None


def _module_stamps(values: list[str]) -> list[str]:
    """Path, size and mtime of each entry point's module file (found, not imported): a backend
    edited in place (an editable install) changes them."""
    stamps: list[str] = []
    for value in values:
        module = value.split("[", 1)[0].partition(":")[0].strip()
        try:
            spec = importlib.util.find_spec(module)
            origin = str(spec.origin) if spec is not None else ""
            st = os.stat(origin)
            stamps.append(f"{origin}\0{st.st_size}\0{st.st_mtime_ns}")
        except (ImportError, ValueError, OSError):
            stamps.append(f"{module}\0?")
    return stamps


@functools.cache
def job_env_index() -> list[tuple[str, str, tuple[str, ...]]]:
    """``(name, entry point value, job_env_prefixes)`` of every backend, in the order
    :func:`job_identity` asks them (lowest ``auto_priority`` first), through a per-user cache
    next to :func:`entry_point_pairs`'s, valid while the entry points and each backend's module
    file (:func:`_module_stamps`) stay as they were. A miss imports every backend."""
    pairs = entry_point_pairs()
    fname = hashlib.sha256(sys.prefix.encode()).hexdigest()[:32] + ".json"
    entry = cache_root(os.environ) / "job-env" / fname
    key = json.dumps([pairs, _module_stamps([value for _, value in pairs])])
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(entry.read_text("utf-8"))
        if doc["key"] == key:
            return [(str(n), str(v), tuple(str(p) for p in ps)) for n, v, ps in doc["index"]]
    values = dict(pairs)
    index = [
        (name, values[name], tuple(cls.job_env_prefixes))
        for name, cls in reversed(backends().items())
    ]
    write_cache_entry(entry, {"key": key, "index": index})
    return index


def job_identity(env: Mapping[str, str] | None = None) -> JobIdentity | None:
    """The job this process runs in, or None outside any scheduler's job.

    The lowest ``auto_priority`` asks first: it is the innermost scheduler (a local job of
    ``hpcagent daemon`` started inside a Slurm allocation is that local job). A backend is
    asked (and imported) only when a variable of ``env`` starts with one of its
    ``job_env_prefixes``, or when it declares none (the Scheduler contract: without such a
    variable its ``job_identity`` is None).
    """
    env = os.environ if env is None else env
    for name, value, prefixes in job_env_index():
        if prefixes and not any(key.startswith(prefixes) for key in env):
            continue
        identity = _load_backend(name, value).job_identity(env)
        if identity is not None:
            return identity
    return None
