"""GPU lists, per-queue GPU demands and the GPU pool of ``hpcagent daemon``.

Syntax (the seed agent's):

* ``--gpus 0,1`` / ``--gpus 0-7`` / ``--gpus 0-3,6``: the GPUs this daemon owns (indices as
  ``CUDA_VISIBLE_DEVICES`` takes them; any other word such as a ``GPU-…`` UUID is kept as is).
* ``--queue quad=4 dual=2 opportunistic=1-4`` with ``--dynamic-gpus``: a task from ``quad``
  needs exactly 4 GPUs, from ``opportunistic`` at least 1 and up to 4 (it takes as many as are
  free, at most 4).

:class:`GpuPool` is the allocator. Its contract, checked by property tests: an allocation
never hands out a GPU that is already held, never more than the demand's ``max``, never fewer
than its ``min`` (it refuses instead), and a release returns exactly what was held. The pool
can be saved to and loaded from a small JSON file, so a restarted daemon keeps the GPUs of
tasks it still follows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcagent.errors import UsageError

_RANGE = re.compile(r"^(\d+)-(\d+)$")
_QUEUE = re.compile(r"^(?P<name>.+?)=(?P<min>\d+)(?:-(?P<max>\d+))?$")


@dataclass(frozen=True)
class GpuDemand:
    """How many GPUs a task of a queue takes: at least ``min``, at most ``max``."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min or self.max < 1:
            raise UsageError(f"bad GPU demand {self.min}-{self.max} (need 0 <= min <= max, max>=1)")

    def __str__(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}-{self.max}"


def parse_gpus(text: str) -> list[str]:
    """``"0,1"`` / ``"0-7"`` / ``"0-3,6"`` → ``["0", "1", ...]`` (order kept, no duplicates)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise UsageError(f"bad GPU range {part!r} (low-high)")
            items = [str(i) for i in range(lo, hi + 1)]
        elif re.fullmatch(r"[A-Za-z0-9_.:\-]+", part):
            items = [str(int(part))] if part.isdigit() else [part]
        else:
            raise UsageError(f"bad GPU id {part!r} in --gpus {text!r}")
        out += [i for i in items if i not in out]
    if not out:
        raise UsageError(f"no GPU in --gpus {text!r}")
    return out


def parse_queue(text: str) -> tuple[str, GpuDemand | None]:
    """``"quad=4"`` → ("quad", 4-4); ``"opp=1-4"`` → ("opp", 1-4); ``"q"`` → ("q", None).

    A name without ``=N`` gets no demand (the daemon then uses 1 GPU per task).
    """
    m = _QUEUE.match(text)
    if not m:
        return text, None
    lo = int(m.group("min"))
    hi = int(m.group("max")) if m.group("max") else lo
    return m.group("name"), GpuDemand(lo, hi)


class GpuPool:
    """The GPUs of one daemon and who holds them (see the module docstring)."""

    def __init__(self, gpus: Sequence[str]) -> None:
        self.gpus: tuple[str, ...] = tuple(dict.fromkeys(gpus))
        self._held: dict[str, tuple[str, ...]] = {}

    # -- queries -------------------------------------------------------------------------
    @property
    def held(self) -> Mapping[str, tuple[str, ...]]:
        """``{key: gpus}`` of every live allocation (a copy)."""
        return dict(self._held)

    def free(self) -> list[str]:
        """The GPUs nobody holds, in pool order."""
        taken = {g for gs in self._held.values() for g in gs}
        return [g for g in self.gpus if g not in taken]

    def fits(self, demand: GpuDemand) -> bool:
        """Whether :meth:`allocate` would succeed for ``demand`` now."""
        return demand.min <= len(self.free())

    # -- changes -------------------------------------------------------------------------
    def allocate(self, key: str, demand: GpuDemand) -> tuple[str, ...]:
        """Give ``key`` between ``demand.min`` and ``demand.max`` free GPUs (as many as are
        free, up to max); ValueError when fewer than min are free or ``key`` already holds
        GPUs (one allocation per task)."""
        if key in self._held:
            raise ValueError(f"{key} already holds GPUs {','.join(self._held[key])}")
        free = self.free()
        if len(free) < demand.min:
            raise ValueError(f"{key} needs {demand.min} GPU(s); {len(free)} free")
        got = tuple(free[: demand.max])
        self._held[key] = got
        return got

    def release(self, key: str) -> tuple[str, ...]:
        """Return what ``key`` held (nothing when it held nothing)."""
        return self._held.pop(key, ())

    def reconcile(self, live: Iterable[str]) -> list[str]:
        """Release every key not in ``live``; returns the released keys."""
        keep = set(live)
        gone = [k for k in self._held if k not in keep]
        for k in gone:
            self.release(k)
        return gone

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the allocations to ``path`` atomically (0600)."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({k: list(v) for k, v in self._held.items()}).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Take back allocations saved by :meth:`save`; GPUs no longer in the pool, and GPUs
        already taken by an earlier entry, are dropped (never two holders of one GPU)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        for key, gpus in data.items():
            if not isinstance(gpus, list) or str(key) in self._held:
                continue
            free = set(self.free())
            got = tuple(dict.fromkeys(str(g) for g in gpus if str(g) in free))
            if got:
                self._held[str(key)] = got
