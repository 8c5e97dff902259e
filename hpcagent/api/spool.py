"""Log events kept on disk until the server has them: delivery exactly once, also by a later run.

A spool folder holds one file per ``events.add_batch`` request (``<seq>-<part>.jsonl``, one event
per line, delivered in name order). The run that writes a spool holds it (:func:`hold`: an
exclusive ``flock`` on ``<spool>/.lock``) while it lives; a spool that nobody holds was left by
a run that ended (or was killed) before the server took everything, and any later run may
deliver it: the executor's next run and the submitter/daemon look for such spools under the
executor's work folder (``agent.venvs_dir``: ``task-*/log-spool``) with
:func:`deliver_orphans`.

Exactly once: before a file is sent, the verifier asks the server whether the file's first
event is already stored (a reply lost after the server stored the request must not send it
again; one request is stored whole, and a run's events have strictly increasing timestamps);
the file is deleted only after the server took it. A run killed between the two finds the
file again and the verifier says it is there.

This module imports only the standard library and ``hpcagent.errors`` (the executor's log
shipper, the submitter and the daemon all use it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hpcagent.errors import ApiError

log = logging.getLogger(__name__)

#: ``send_lines("events.add_batch", events)``; raises on failure.
Sender = Callable[[list[dict[str, Any]]], None]
#: "Is this log event already stored on the server?"; raises when it cannot tell.
Verifier = Callable[[dict[str, Any]], bool]

LOCK_NAME = ".lock"
#: Where the executor keeps a run's spool inside its work folder (``task-*/``).
SPOOL_DIR_NAME = "log-spool"
#: The executor's work folders under ``agent.venvs_dir`` (``tempfile.mkdtemp`` prefix).
WORKDIR_PREFIX = "task-"


class Client(Protocol):
    def send(self, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def send_lines(
        self, endpoint: str, items: Any, *, repeat: bool = True
    ) -> list[dict[str, Any]]: ...


def files(spool_dir: Path) -> list[Path]:
    """The spool's request files, oldest first."""
    return sorted(spool_dir.glob("*.jsonl"))


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def hold(spool_dir: Path) -> int | None:
    """Take the spool for this process (non-blocking); the descriptor, or None when another
    live process holds it. Closing the descriptor (or the process ending) lets it go."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(spool_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def already_delivered(events: list[dict[str, Any]], verify: Verifier | None) -> bool | None:
    """Whether a spooled request already reached the server (None: cannot tell now)."""
    if verify is None or not events:
        return False
    try:
        return verify(events[0])
    except Exception as exc:
        log.debug("cannot tell whether a spooled request was delivered: %s", exc)
        return None


def make_verifier(client: Any, task: str) -> Verifier:
    """A :data:`Verifier` over ``events.get_task_log`` (the first event at or after the
    event's timestamp must be that very event)."""

    def delivered(event: dict[str, Any]) -> bool:
        data = client.send(
            "events.get_task_log",
            {
                "task": task,
                "from_timestamp": int(event["timestamp"]) - 1,
                "navigate_earlier": False,
                "batch_size": 1,
            },
        )
        found = data.get("events") or []
        return bool(found) and (
            found[0].get("timestamp") == event["timestamp"] and found[0].get("msg") == event["msg"]
        )

    return delivered


def make_sender(client: Any) -> Sender:
    """A :data:`Sender` over ``ApiClient.send_lines``."""

    def send(events: list[dict[str, Any]]) -> None:
        # A reply with fewer ``added`` than sent is not retried: resending would duplicate
        # the accepted part, and the server reports the rejected ones itself. A lost reply is
        # not sent again here either (repeat=False): the caller spools the request and the
        # verifier asks the server whether it stored it before it is sent again.
        client.send_lines("events.add_batch", events, repeat=False)

    return send


@dataclass
class OrphanReport:
    """What :func:`deliver_orphans` did."""

    spools: int = 0  # left-behind spools found (not held by a live run)
    files: int = 0  # request files delivered
    events: int = 0  # events in them
    skipped: int = 0  # files the server had already (sent before, reply lost)
    rejected: int = 0  # files the server refused (4xx): renamed *.rejected, never sent again
    pending: int = 0  # files still on disk (the server went away meanwhile)


def orphan_spools(root: Path) -> Iterator[Path]:
    """``root/task-*/log-spool`` folders that hold request files (held or not)."""
    with contextlib.suppress(OSError):
        for spool in sorted(root.glob(f"{WORKDIR_PREFIX}*/{SPOOL_DIR_NAME}")):
            if files(spool):
                yield spool


def deliver_orphans(client: Client, root: Path) -> OrphanReport:
    """Deliver every spool under ``root`` that no live run holds (module docstring), each
    exactly once; a spool emptied is removed with its work folder. Never raises for the
    server: what cannot be delivered now stays for the next run."""
    report = OrphanReport()
    send = make_sender(client)
    for spool in orphan_spools(root):
        fd = hold(spool)
        if fd is None:
            continue  # its run is alive and delivers it itself
        try:
            report.spools += 1
            done = _deliver_spool(spool, send, client, report)
            if done:
                shutil.rmtree(spool.parent, ignore_errors=True)
        finally:
            release(fd)
    if report.files or report.rejected or report.skipped:
        log.info(
            "delivered %d left-behind log request(s) (%d events) from %d spool(s) under %s%s%s",
            report.files,
            report.events,
            report.spools,
            root,
            f"; {report.skipped} already stored" if report.skipped else "",
            f"; {report.rejected} refused by the server (kept as *.rejected)"
            if report.rejected
            else "",
        )
    return report


def _deliver_spool(spool: Path, send: Sender, client: Client, report: OrphanReport) -> bool:
    """Deliver one held spool in order; True when nothing is left in it."""
    pending = files(spool)
    for i, path in enumerate(pending):
        try:
            events = read(path)
        except (OSError, ValueError) as exc:  # a torn file (disk full): never half-send it
            log.warning("spooled log request %s unreadable (%s); set aside", path, exc)
            _set_aside(path, report)
            continue
        task = str(events[0].get("task") or "") if events else ""
        already = already_delivered(events, make_verifier(client, task) if task else None)
        if already is None:
            report.pending += len(pending) - i
            return False
        if not already:
            try:
                send(events)
            except ApiError as exc:
                if exc.result_code >= 500:
                    report.pending += len(pending) - i
                    return False
                log.warning("the server refused spooled log request %s: %s", path, exc)
                _set_aside(path, report)
                continue
            except Exception as exc:  # unreachable: the next run tries again
                log.debug("spooled log request %s not delivered: %s", path, exc)
                report.pending += len(pending) - i
                return False
            report.files += 1
            report.events += len(events)
        else:
            report.skipped += 1
        path.unlink(missing_ok=True)
    return not files(spool) and not list(spool.glob("*.rejected"))


def _set_aside(path: Path, report: OrphanReport) -> None:
    report.rejected += 1
    with contextlib.suppress(OSError):
        path.rename(path.with_suffix(".rejected"))
