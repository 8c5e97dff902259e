"""The state of one remote part (the API server, slurmctld, slurmdbd) as a long-running part
sees it, logged once per change.

A long-running part (``hpcagent-slurm``, ``hpcagent daemon``) retries what does not answer for
as long as it takes; one line says when the part went away and one when it came back, never a
line per attempt (docs/reliability.md):

    WARNING API server http://host:8008 unreachable since 05:20:11 UTC (connection refused);
            retrying every <= 30 s
    INFO    API server http://host:8008 back after 83 s

:class:`Outage` is that state. It is thread-safe: the submitter's record threads and its main
loop share one per remote part, so an outage several of them run into is still one line.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time


class Outage:
    """Up, or down since a time (``what`` names the part in the two log lines).

    :meth:`down` is called after a failed attempt that the caller counts as an outage (the
    API client: when its quiet retry budget is spent; the Slurm backend: a command that could
    not reach its daemon); :meth:`up` after any answer. Only the change is logged; ``retry_s``
    is the longest wait between attempts, named in the first line.
    """

    def __init__(
        self, what: str, logger: logging.Logger, retry_s: float | None, meanwhile: str = ""
    ) -> None:
        self.what = what
        self.log = logger
        self.retry_s = retry_s
        #: What happens meanwhile, said in the first line when there is no fixed retry pace.
        self.meanwhile = meanwhile
        self._lock = threading.Lock()
        self._since: float | None = None  # wall clock, for the message
        self._since_mono = 0.0
        #: How many outages began and ended (tests and the chaos figures read them).
        self.outages = 0
        self.recoveries = 0

    @property
    def is_down(self) -> bool:
        return self._since is not None

    def down(self, reason: str, began: float | None = None) -> bool:
        """The part did not answer; True when this call began the outage (and logged it).
        ``began`` (a ``time.monotonic()`` value) is when the first failed attempt was made,
        if earlier than now (the client declares an outage after its quiet retries)."""
        with self._lock:
            if self._since is not None:
                return False
            now_mono = time.monotonic()
            self._since_mono = min(now_mono, began) if began is not None else now_mono
            self._since = time.time() - (now_mono - self._since_mono)
            self.outages += 1
        when = dt.datetime.fromtimestamp(self._since, dt.timezone.utc).strftime("%H:%M:%S UTC")
        tail = f"retrying every <= {self.retry_s:g} s" if self.retry_s else self.meanwhile
        self.log.warning("%s unreachable since %s (%s); %s", self.what, when, reason, tail)
        return True

    def up(self) -> bool:
        """The part answered; True when this call ended an outage (and logged it)."""
        if self._since is None:  # the common case, without the lock
            return False
        with self._lock:
            if self._since is None:
                return False
            lasted = time.monotonic() - self._since_mono
            self._since = None
            self.recoveries += 1
        self.log.info("%s back after %.0f s", self.what, lasted)
        return True
