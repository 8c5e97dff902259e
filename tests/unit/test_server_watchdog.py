"""The non-responsive task watchdog (hpcagent/server/watchdog.py): a task left in_progress by a
runner that is gone is stopped with clearml-server's "Forced stop (non-responsive)"; a task that
pings, and every task not in_progress, is left alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hpcagent.cli import main_group
from hpcagent.server.fields import epoch_to_iso as iso
from hpcagent.server.store import Store
from hpcagent.server.watchdog import FORCED_STOP, NonResponsiveWatchdog

NOW = 1_800_000_000.0  # a fixed clock for the store-level tests


def _put(store: Store, task_id: str, status: str, age_s: float | None) -> None:
    last_update = None if age_s is None else iso(NOW - age_s)
    with store.write():
        store.put_task({"id": task_id, "name": f"task {task_id}", "status": status,
                        "created": iso(NOW - 10_000), "last_update": last_update,
                        "started": None, "project": None})  # fmt: skip


def test_only_in_progress_tasks_past_the_threshold_are_stopped(tmp_path: Path) -> None:
    store = Store(tmp_path / "server.db")
    try:
        _put(store, "stale", "in_progress", 7300)
        _put(store, "fresh", "in_progress", 60)
        _put(store, "queued-old", "queued", 90_000)
        _put(store, "completed-old", "completed", 90_000)
        _put(store, "never-updated", "in_progress", None)  # no time: nothing to judge by
        dog = NonResponsiveWatchdog(store, threshold_s=7200, interval_s=900)
        stopped = asyncio.run(dog.check(_in_db, now=NOW))
        assert stopped == ["stale"]
        task = store.get_task("stale")
        assert (task["status"], task["status_reason"], task["status_message"]) == (
            "stopped", FORCED_STOP, FORCED_STOP)  # fmt: skip
        assert task["status_changed"] == task["last_update"] == task["completed"] == iso(NOW)
        assert {t: store.get_task(t)["status"] for t in
                ("fresh", "queued-old", "completed-old", "never-updated")} == {
            "fresh": "in_progress", "queued-old": "queued", "completed-old": "completed",
            "never-updated": "in_progress"}  # fmt: skip
        assert asyncio.run(dog.check(_in_db, now=NOW)) == []  # stopped once, not again
    finally:
        store.close()


def test_a_task_that_reported_after_the_listing_is_left_alone(tmp_path: Path) -> None:
    """The listing and the stop are separate: each stop checks status and time again in its
    own transaction (a ping, the executor's end or a tasks.delete may land in between)."""
    store = Store(tmp_path / "server.db")
    try:
        _put(store, "pinged", "in_progress", 60)
        _put(store, "ended", "completed", 9000)
        dog = NonResponsiveWatchdog(store, threshold_s=7200)
        _put(store, "stale", "in_progress", 9000)
        listed = ["pinged", "ended", "deleted", "stale"]
        store.stale_tasks = lambda status, before: listed  # type: ignore[method-assign]
        assert dog.stop_due(NOW) == ["stale"]  # the rest skipped, not the end of the round
        assert store.get_task("pinged")["status"] == "in_progress"
        assert store.get_task("ended")["status"] == "completed"
    finally:
        store.close()


def test_off_and_bad_settings(tmp_path: Path) -> None:
    store = Store(tmp_path / "server.db")
    try:
        assert NonResponsiveWatchdog(store, threshold_s=0).start(_in_db) is None
        with pytest.raises(ValueError, match="threshold must not be negative"):
            NonResponsiveWatchdog(store, threshold_s=-1)
        with pytest.raises(ValueError, match="interval"):
            NonResponsiveWatchdog(store, threshold_s=10, interval_s=0)
    finally:
        store.close()
    runner = CliRunner()
    result = runner.invoke(main_group, ["server", "--non-responsive-sec", "-5",
                                  "--data-dir", str(tmp_path / "d")])  # fmt: skip
    assert result.exit_code == 2
    assert "--non-responsive-sec must not be negative" in result.output
    conf = tmp_path / "clearml.conf"
    conf.write_text("server { non_responsive_check_sec: 0 }\n")
    result = runner.invoke(main_group, ["--config-file", str(conf), "server",
                                  "--data-dir", str(tmp_path / "d")])  # fmt: skip
    assert result.exit_code == 2
    assert "server.non_responsive_check_sec must be positive" in result.output


async def _in_db(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_the_server_stops_a_silent_task_and_keeps_a_pinging_one(tmp_path: Path) -> None:
    """A real ``hpcagent server`` with the watchdog tightened by configuration: of two started
    tasks, the one nobody pings is stopped with the reason; the one pinged (as the executor
    does) stays running, and so does a queued one; the server logs which task it stopped."""
    from embedded import EmbeddedServer

    conf = tmp_path / "clearml.conf"
    conf.write_text("server { non_responsive_sec: 3, non_responsive_check_sec: 0.5 }\n")
    server = EmbeddedServer(tmp_path / "data", env={"CLEARML_CONFIG_FILE": str(conf)})
    server.start()
    try:
        queue = server.send("queues.create", {"name": "q watchdog"})["id"]
        ids = {}
        for name in ("silent", "pinged", "waiting"):
            ids[name] = server.send("tasks.create", {"name": name, "type": "training"})["id"]
            server.send("tasks.enqueue", {"task": ids[name], "queue": queue})
        for name in ("silent", "pinged"):
            server.send("tasks.dequeue", {"task": ids[name]})
            server.send("tasks.started", {"task": ids[name], "force": True})

        def status(name: str) -> dict[str, Any]:
            task: dict[str, Any] = server.send("tasks.get_by_id", {"task": ids[name]})["task"]
            return task

        deadline = time.monotonic() + 90
        while status("silent")["status"] == "in_progress" and time.monotonic() < deadline:
            server.send("tasks.ping", {"task": ids["pinged"]})
            time.sleep(0.3)
        silent = status("silent")
        assert (silent["status"], silent["status_message"]) == ("stopped", FORCED_STOP)
        assert status("pinged")["status"] == "in_progress"
        assert status("waiting")["status"] == "queued"
        assert f"stopping task {ids['silent']} ('silent')" in server.log_path.read_text()
    finally:
        server.stop()
