"""The embedded server at lab scale: read latencies on a database from ``datagen.py``.

    python benchmarks/datagen.py --db /var/tmp/lab.db --tasks 1000000 --events 100000000
    python benchmarks/server_scale_bench.py --db /var/tmp/lab.db [--repeat 50]

Starts the real ``hpcagent server`` (a subprocess, its data dir a temporary folder whose
``server.db`` links to ``--db``) and times, over HTTP on one keep-alive connection, the calls a
lab's clients make against a large history; prints p50/p95 (ms) of each:

* ``tasks.get_all`` as the web UI's task table asks its first page (project, ``-archived``,
  ``order_by -last_update``, 15 rows of the table's fields; with and without a status filter),
  as the ClearML SDK's ``Task.get_tasks`` asks it (``page_size`` 500, id/name/last_update/
  system_tags) and a deeper page (page 20 of 50);
* ``events.get_task_log`` (a page of 500 lines, newest first) of a typical task and of one of
  the very long logs;
* ``queues.get_next_task`` (a pop) on a queue with ``datagen``'s entries.

The database is not changed except by the pops (each takes one entry) and, with
``--retention-batches N``, N batches of the retention sweep (the oldest events, timed in
process after the server stopped). The first
``--warmup`` calls of each kind are not counted (the OS page cache is warm after them, as on a
server that has been up a while); the first one's time is printed too (``first``: a cold read
where the database is larger than the memory).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from server_bench import ACCESS_KEY, SECRET_KEY, free_port, start_server

#: What the web UI's task table asks (ui/table.py ROW_FIELDS, a few more).
UI_FIELDS = [
    *("name", "status", "status_message", "type", "project", "execution.queue"),
    *("hyperparams.properties", "runtime.job_id", "user", "started", "last_update"),
]


class Client:
    """One keep-alive connection with a token."""

    def __init__(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}"
        reply = requests.get(f"{url}/auth.login", auth=(ACCESS_KEY, SECRET_KEY), timeout=30)
        self.headers = {
            "Authorization": f"Bearer {reply.json()['data']['token']}",
            "Content-Type": "application/json",
        }
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, endpoint: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """``(seconds, data)`` of one call, timed from request to parsed reply."""
        began = time.perf_counter()
        self.conn.request("POST", f"/{endpoint}", body=json.dumps(body), headers=self.headers)
        reply = self.conn.getresponse()
        raw = reply.read()
        data: dict[str, Any] = json.loads(raw)["data"]
        seconds = time.perf_counter() - began
        if reply.status != 200:
            raise RuntimeError(f"{endpoint}: {reply.status} {raw[:300]!r}")
        return seconds, data


def measure(
    client: Client, endpoint: str, body: dict[str, Any], repeat: int, warmup: int
) -> tuple[float, float, float, dict[str, Any]]:
    """p50 and p95 in ms over ``repeat`` calls after ``warmup`` uncounted ones, the first
    (uncounted) call's ms (what a cold page cache costs, where the database outgrows the
    memory), and the last reply."""
    times: list[float] = []
    data: dict[str, Any] = {}
    first = 0.0
    for index in range(warmup + repeat):
        seconds, data = client.call(endpoint, body)
        if index == 0:
            first = seconds * 1000
        if index >= warmup:
            times.append(seconds * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return statistics.median(times), p95, first, data


def cases(info: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """``(label, endpoint, body, what the reply holds)`` of each timed call."""
    project = info["sample_project"]
    ui = {"project": [project], "order_by": ["-last_update"], "page": 0, "page_size": 15,
          "only_fields": UI_FIELDS, "system_tags": ["-archived"]}  # fmt: skip
    sdk = {"project": [project], "status": ["completed"], "order_by": ["-last_update"],
           "only_fields": ["id", "name", "last_update", "system_tags"], "page": 0,
           "page_size": 500, "system_tags": ["-archived"]}  # fmt: skip
    log = {"batch_size": 500, "navigate_earlier": True}
    return [
        ("tasks.get_all UI page 0 (project)", "tasks.get_all", ui, "tasks"),
        (
            "tasks.get_all UI page 0 (project, status)",
            "tasks.get_all",
            dict(ui, status=["completed", "failed", "stopped"]),
            "tasks",
        ),
        (
            "tasks.get_all UI page 0 (all projects)",
            "tasks.get_all",
            {k: v for k, v in ui.items() if k != "project"},
            "tasks",
        ),
        ("tasks.get_all SDK page 0 (500, project, status)", "tasks.get_all", sdk, "tasks"),
        (
            "tasks.get_all UI page 20 of 50 (project)",
            "tasks.get_all",
            dict(ui, page=20, page_size=50),
            "tasks",
        ),
        (
            f"events.get_task_log typical ({info['typical_task_lines']} lines)",
            "events.get_task_log",
            dict(log, task=info["typical_task"]),
            "events",
        ),
        (
            f"events.get_task_log ({info['page_task_lines']:,} lines)",
            "events.get_task_log",
            dict(log, task=info["page_task"]),
            "events",
        ),
        (
            f"events.get_task_log long ({info['long_task_lines']:,} lines)",
            "events.get_task_log",
            dict(log, task=info["long_task"]),
            "events",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="a database from datagen.py")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--retention-batches",
        type=int,
        default=0,
        help="also time N retention batches (deletes N x retention.BATCH of the oldest events)",
    )
    args = parser.parse_args()
    info = json.loads(Path(f"{args.db}.json").read_text())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, {when}")  # fmt: skip
    print(f"# database: {info['tasks']:,} tasks, {info['events']:,} log events, "
          f"{args.db.stat().st_size / 1e9:.2f} GB")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        data_dir = Path(tmp)
        (data_dir / "server.db").symlink_to(args.db.resolve())
        port = free_port()
        began = time.monotonic()
        proc = start_server(data_dir, port, wait_s=120.0)
        print(f"# server up in {time.monotonic() - began:.1f} s")
        try:
            client = Client(port)
            for label, endpoint, body, key in cases(info):
                p50, p95, first, data = measure(client, endpoint, body, args.repeat, args.warmup)
                print(f"{label:52s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  first {first:7.1f} ms"
                      f"  ({len(data[key])} {key})")  # fmt: skip
            pops = min(args.repeat, max(info["queued"] - args.warmup, 1))
            pop = {"queue": info["queue"]}
            p50, p95, first, data = measure(client, "queues.get_next_task", pop, pops, args.warmup)
            got = "an entry" if data.get("entry") else "empty"
            print(f"{'queues.get_next_task (pop)':52s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
                  f"first {first:7.1f} ms  ({got})")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    if args.retention_batches:
        retention_batches(args.db, args.retention_batches)


def retention_batches(db: Path, batches: int) -> None:
    """Time the retention sweep's unit of work, one batch of the oldest events deleted in one
    transaction: how long it holds the database thread. Deletes ``batches`` x BATCH events."""
    from hpcagent.server.retention import BATCH
    from hpcagent.server.store import Store

    store = Store(db)
    try:
        oldest = store.conn.execute("SELECT MIN(ts) FROM events").fetchone()[0]
        cutoff = int(oldest) + 365 * 86_400_000
        times = []
        for _ in range(batches):
            began = time.perf_counter()
            deleted = store.delete_events_before(cutoff, BATCH)
            times.append((time.perf_counter() - began) * 1000)
        times.sort()
        print(f"{f'retention batch ({deleted} events, in-process)':52s} "
              f"p50 {statistics.median(times):7.1f} ms  max {times[-1]:7.1f} ms")  # fmt: skip
    finally:
        store.close()


if __name__ == "__main__":
    main()
