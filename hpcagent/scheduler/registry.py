"""The scheduler backends, found as Python entry points in the group ``hpcagent.schedulers``.

pyproject.toml declares hpcagent's own (``slurm``, ``gridengine``, ``local``); another
distribution adds a backend by declaring its own entry point there, pointing at a
:class:`~hpcagent.scheduler.base.Scheduler` subclass whose ``name`` is the entry point's name.
Nothing else in hpcagent names a backend: ``hpcagent-slurm --scheduler`` offers
:func:`names`, ``auto`` is :func:`choose`, and the executor asks :func:`job_identity`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from importlib.metadata import entry_points

from hpcagent.errors import ConfigError, UsageError
from hpcagent.scheduler.base import JobIdentity, Scheduler

GROUP = "hpcagent.schedulers"


@functools.cache
def backends() -> dict[str, type[Scheduler]]:
    """Every registered backend by name, highest ``auto_priority`` first.

    Raises :class:`ConfigError` when none is registered (hpcagent's install metadata is older
    than its entry points: reinstall it) or an entry point is not a Scheduler of that name.
    """
    found: dict[str, type[Scheduler]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Scheduler)) or cls.name != ep.name:
            raise ConfigError(f"entry point {GROUP}:{ep.name} = {ep.value} is not its Scheduler")
        found[ep.name] = cls
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


def job_identity(env: Mapping[str, str] | None = None) -> JobIdentity | None:
    """The job this process runs in, or None outside any scheduler's job.

    The lowest ``auto_priority`` asks first: it is the innermost scheduler (a local job of
    ``hpcagent daemon`` started inside a Slurm allocation is that local job).
    """
    env = os.environ if env is None else env
    for cls in reversed(backends().values()):
        identity = cls.job_identity(env)
        if identity is not None:
            return identity
    return None
