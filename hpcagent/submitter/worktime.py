"""Working hours (``--uptime`` / ``--downtime``) and the force switches.

Span syntax (the seed's): ``"<hours> [<days>]"`` where hours are ``H`` or ``H1-H2`` (0-23,
inclusive: ``17-20`` is 17:00 to 20:59; ``22-6`` wraps past midnight) and days are ``DAY``
or ``DAY1-DAY2`` (SUN MON TUE WED THU FRI SAT, inclusive, may wrap; default every day).
Several spans may be given. With uptime spans the submitter pulls only inside one of
them; with downtime spans it never pulls inside one. Running jobs are left alone.

Overrides, strongest first: a queue tag ``force_workers:on``/``force_workers:off`` (that
queue only), then the worker runtime property ``force`` = ``on``/``off`` (its expiry is
kept by the server), then the spans.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hpcagent.errors import UsageError

DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_SPAN = re.compile(
    r"^\s*(\d{1,2})(?:\s*-\s*(\d{1,2}))?(?:\s+([A-Za-z]{3})(?:\s*-\s*([A-Za-z]{3}))?)?\s*$"
)


def _range(start: int, end: int, size: int) -> frozenset[int]:
    if start <= end:
        return frozenset(range(start, end + 1))
    return frozenset(list(range(start, size)) + list(range(0, end + 1)))


@dataclass(frozen=True)
class Span:
    """Hours (0-23) and days (0=SUN .. 6=SAT) a span covers."""

    hours: frozenset[int]
    days: frozenset[int]

    def contains(self, when: dt.datetime) -> bool:
        day = (when.weekday() + 1) % 7  # Python: Monday=0; ours: Sunday=0
        return when.hour in self.hours and day in self.days


def parse_span(text: str) -> Span:
    """Parse one span such as ``"17-20 SUN-TUE"``; UsageError when malformed."""
    m = _SPAN.match(text)
    if not m:
        raise UsageError(f"bad uptime/downtime span {text!r} (expected e.g. '17-20 SUN-TUE')")
    h1 = int(m.group(1))
    h2 = int(m.group(2)) if m.group(2) else h1
    if not (0 <= h1 <= 23 and 0 <= h2 <= 23):
        raise UsageError(f"bad hour in span {text!r} (0-23)")
    if m.group(3):
        try:
            d1 = DAYS.index(m.group(3).upper())
            d2 = DAYS.index((m.group(4) or m.group(3)).upper())
        except ValueError:
            raise UsageError(f"bad day in span {text!r} (SUN MON TUE WED THU FRI SAT)") from None
        days = _range(d1, d2, 7)
    else:
        days = frozenset(range(7))
    return Span(_range(h1, h2, 24), days)


def parse_spans(texts: Iterable[str]) -> list[Span]:
    """Parse several spans; each item may also hold several spans separated by ``,``."""
    out: list[Span] = []
    for text in texts:
        out += [parse_span(part) for part in str(text).split(",") if part.strip()]
    return out


@dataclass(frozen=True)
class WorkingHours:
    uptime: tuple[Span, ...] = ()
    downtime: tuple[Span, ...] = ()

    @classmethod
    def parse(cls, uptime: Iterable[str], downtime: Iterable[str]) -> WorkingHours:
        up, down = parse_spans(uptime), parse_spans(downtime)
        if up and down:
            raise UsageError("give --uptime or --downtime, not both")
        return cls(tuple(up), tuple(down))

    def working(self, when: dt.datetime) -> bool:
        """Whether the spans allow pulling at ``when`` (local time)."""
        if self.uptime:
            return any(s.contains(when) for s in self.uptime)
        return not any(s.contains(when) for s in self.downtime)


def force_from_properties(properties: Iterable[dict[str, object]]) -> bool | None:
    """The worker runtime property ``force``: True (on), False (off) or None (unset)."""
    for prop in properties:
        if str(prop.get("key", "")).lower() == "force":
            value = str(prop.get("value", "")).strip().lower()
            if value in ("on", "true", "1", "yes"):
                return True
            if value in ("off", "false", "0", "no"):
                return False
    return None


def force_from_tags(tags: Iterable[str]) -> bool | None:
    """A queue's ``force_workers:on``/``force_workers:off`` tag, or None."""
    result: bool | None = None
    for tag in tags:
        if tag == "force_workers:on":
            result = True
        elif tag == "force_workers:off":
            result = False
    return result


def may_pull(hours: bool, worker_force: bool | None, queue_force: bool | None) -> bool:
    """Combine the switches: queue tag, then worker property, then working hours."""
    if queue_force is not None:
        return queue_force
    if worker_force is not None:
        return worker_force
    return hours
