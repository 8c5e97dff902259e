"""The executor's background threads (abort poll, metrics, log shipping) share their lifecycle:
one daemon thread runs the subclass's ``_loop`` until ``_stop`` is set."""

from __future__ import annotations

import threading
from typing import TypeVar

_T = TypeVar("_T", bound="BackgroundThread")


class BackgroundThread:
    """Base of a class whose work runs in one daemon thread named :attr:`thread_name`.

    Subclasses call ``super().__init__()`` and implement :meth:`_loop`, which must return soon
    after ``_stop`` is set (:meth:`_wake_loop` wakes a loop that waits on something else).
    """

    thread_name = "hpcagent-background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self: _T) -> _T:
        """Start the thread; returns ``self`` (``x = Watcher(...).start()``)."""
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end (:meth:`_wake_loop` after ``_stop`` is set) and wait up to
        ``timeout`` seconds for the thread."""
        self._stop.set()
        self._wake_loop()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _wake_loop(self) -> None:
        """Wake a loop that waits on something other than ``_stop`` (nothing by default)."""

    def _loop(self) -> None:
        raise NotImplementedError
