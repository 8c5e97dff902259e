"""The home page's figures as the browser shows them and as the REST API has them (for the
operations pages' tests: tests/ui/test_ui_ops.py, tests/slurm/test_ui_ops_slurm.py)."""

from __future__ import annotations

from typing import Any


def home_figures(ui: Any) -> dict[str, Any]:
    """What the open home page shows: the figures and each queue's length."""
    return {
        "queued": int(ui.text("#fig-queued")),
        "workers": int(ui.text("#fig-workers")),
        "running": int(ui.text("#fig-running")),
        "queues": {
            r.get_attribute("data-queue"): int(r.find_element("css selector", ".queue-length").text)
            for r in ui.find_all("#home-queues tbody tr[data-queue]")
        },
    }


def server_figures(srv: Any) -> dict[str, Any]:
    """The same figures from the REST API."""
    queues = {q["id"]: len(q["entries"]) for q in srv.send("queues.get_all", {})["queues"]}
    running = srv.send("tasks.get_all", {"status": ["in_progress"], "only_fields": ["id"]})
    return {
        "queued": sum(queues.values()),
        "workers": len(srv.send("workers.get_all", {})["workers"]),
        "running": len(running["tasks"]),
        "queues": queues,
    }
