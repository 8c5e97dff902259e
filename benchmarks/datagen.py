"""Build a lab-sized embedded-server database directly (issue 18, item 4).

    python benchmarks/datagen.py --db /var/tmp/lab.db --tasks 1000000 --events 100000000
    python benchmarks/datagen.py --db /var/tmp/lab.db --events 20000000 --append  # 20M more

The schema is the server's own (``Store`` creates it) and rows go in through the server's own
insert statements (``store.TASK_INSERT``/``task_row``, ``store.EVENT_INSERT``) and task shape
(``routes.tasks.new_task_doc``), so a generated database never drifts from what the server
writes. The spread is a lab's history: projects and users with a long tail (Zipf-like), mostly
finished tasks with a few queued/running, some tags, a few archived, creation times over
``--years`` and a ``last_update`` after each task's creation; log events spread over the tasks
with a long tail and ``--long-logs`` tasks holding one in ``--long-share`` of all lines; events
of neighbouring tasks interleave as they would when tasks run side by side.

Bulk loading runs without a journal (``journal_mode=OFF``, ``synchronous=OFF``) in
transactions of a million rows, with the indexes and triggers of ``tasks`` and ``events``
dropped: each is created again afterwards from the very statement ``Store`` created it with
(``sqlite_master.sql``), one sort per index instead of a B-tree insert per row and index, and
``log_counts`` (which the dropped trigger keeps) is written from the generated counts. Event
documents are formatted from a pool of messages, one ``%`` per line. So a new database is built at
4-6 million events a minute on one core (1M tasks + 100M events: see docs/performance.md);
``--append`` inserts with the indexes and the trigger in place. The database is
switched back to WAL at the end, as the server opens it. It prints
what it built and the file's size per million log events, and writes a JSON summary next to the
database (``<db>.json``) that ``server_scale_bench.py`` reads (a queue with entries, sample ids).
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import itertools
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpcagent.server.routes.tasks import new_task_doc
from hpcagent.server.store import EVENT_INSERT, TASK_INSERT, Store, task_row

STATUSES = (  # (status, weight): a lab's history is mostly finished work
    ("completed", 62),
    ("failed", 10),
    ("stopped", 9),
    ("published", 6),
    ("created", 6),
    ("queued", 3),
    ("in_progress", 4),
)
TAGS = ("baseline", "sweep", "ablation", "debug", "v2", "paper", "prod", "lr-search")
TASK_TYPES = ("training", "training", "training", "testing", "data_processing", "inference")
WORDS = [
    *("epoch", "loss", "accuracy", "step", "loading", "dataset", "checkpoint", "saved"),
    *("gradient", "norm", "learning", "rate", "warmup", "batch", "validation", "train"),
    *("eval", "GPU", "memory", "throughput", "samples/s", "INFO", "WARNING", "DEBUG"),
    *("model", "layer", "attention", "tokens", "shard", "worker", "rank", "done"),
]
CHUNK = 1_000_000  # event rows per executemany / transaction
TASK_CHUNK = 100_000  # task rows (documents of ~1.3 KB) held before an executemany
WINDOW = 64  # neighbouring tasks whose log lines interleave


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    """Cumulative Zipf-like weights over ``n`` items (a long tail)."""
    return list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))


def pick(rng: random.Random, items: list[Any], cum: list[float]) -> Any:
    return items[bisect.bisect(cum, rng.random() * cum[-1])]


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def make_projects(store: Store, count: int, start: float) -> list[str]:
    ids = []
    for index in range(count):
        pid = f"p{index:05d}" + "0" * 26
        created = iso(start + index)
        store.put_project(
            {
                "id": pid,
                "name": f"team{index % 17}/project {index}",
                "created": created,
                "description": "",
                "tags": [],
                "system_tags": [],
                "basename": f"project {index}",
                "company": "",
                "user": "u0000",
                "last_update": created,
            }
        )
        ids.append(pid)
    return ids


def make_tasks(
    conn: sqlite3.Connection, args: argparse.Namespace, projects: list[str], rng: random.Random
) -> list[tuple[str, float, float]]:
    """Insert ``args.tasks`` tasks; ``[(id, created, last_update)]`` in creation order."""
    now = time.time()
    start = now - args.years * 365 * 86400
    users = [f"u{index:04d}" for index in range(args.users)]
    project_cum, user_cum = zipf_weights(len(projects)), zipf_weights(len(users))
    statuses = [s for s, _ in STATUSES]
    status_cum = list(itertools.accumulate(w for _, w in STATUSES))
    spans = [(start + (now - start) * i / args.tasks) for i in range(args.tasks)]
    out: list[tuple[str, float, float]] = []
    rows: list[tuple[Any, ...]] = []
    for index, created in enumerate(spans):
        status = pick(rng, statuses, status_cum)
        recent = created > now - 3 * 86400
        if status in ("queued", "in_progress") and not recent and rng.random() < 0.9:
            status = "completed"  # old tasks are mostly finished
        duration = rng.expovariate(1 / 3600.0)
        last_update = min(created + duration, now)
        ctx = SimpleNamespace(user=pick(rng, users, user_cum), company="")
        doc = new_task_doc(ctx, f"train {index} lr={rng.choice((0.1, 0.01, 0.001))}", iso(created))  # type: ignore[arg-type]
        doc["id"] = f"t{index:09d}" + "0" * 22
        doc.update(
            status=status,
            project=pick(rng, projects, project_cum),
            type=rng.choice(TASK_TYPES),
            last_update=iso(last_update),
            last_change=iso(last_update),
            status_changed=iso(last_update),
            started=iso(created + 5) if status != "created" else None,
            completed=iso(last_update) if status in ("completed", "failed", "stopped") else None,
            tags=rng.sample(TAGS, rng.choice((0, 0, 1, 1, 2))),
            system_tags=["archived"] if rng.random() < 0.05 else [],
            script={
                "repository": "https://git.example.org/lab/models.git",
                "branch": "main",
                "entry_point": "train.py",
                "working_dir": ".",
                "binary": "python3",
            },
            hyperparams={
                "Args": {
                    k: {"section": "Args", "name": k, "value": str(rng.random()), "type": "float"}
                    for k in ("lr", "momentum", "wd")
                }
            },
        )
        doc["execution"]["queue"] = "q" + "0" * 31 if status == "queued" else None
        rows.append(task_row(doc))
        out.append((doc["id"], created, last_update))
        if len(rows) >= TASK_CHUNK:
            conn.executemany(TASK_INSERT, rows)
            conn.commit()
            rows.clear()
            print(f"  tasks: {index + 1:,}", file=sys.stderr, flush=True)
    conn.executemany(TASK_INSERT, rows)
    conn.commit()
    return out


MESSAGES = 1 << 12  # distinct log messages, drawn per line (making one per line cost 5 µs)


def message_pool(rng: random.Random) -> list[bytes]:
    """``MESSAGES`` log messages of 4-16 of :data:`WORDS` each."""
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 16))).encode() for _ in range(MESSAGES)]


def log_doc(task_id: bytes, ts_ms: int, line: int, msg: bytes) -> bytes:
    """A console-log event's document as ``events.add_batch`` stores it."""
    return (
        b'{"timestamp":%d,"type":"log","task":"%s","level":"info","worker":"node%02d:gpu0",'
        b'"msg":"%d %s"}' % (ts_ms, task_id, line % 40, line, msg)
    )


def log_counts(
    tasks: list[tuple[str, float, float]], args: argparse.Namespace, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Lines per task (long tail) and the indexes of the very long logs."""
    total = args.events
    long_ids = rng.sample(range(len(tasks)), min(args.long_logs, len(tasks)))
    long_total = int(total * args.long_share) if long_ids else 0
    rest = total - long_total
    weights = [rng.paretovariate(1.3) for _ in tasks]
    for index in long_ids:
        weights[index] = 0.0
    scale = rest / sum(weights)
    counts = [int(w * scale) for w in weights]
    counts[rng.randrange(len(tasks))] += rest - sum(counts)  # exact total
    for index in long_ids:
        counts[index] = long_total // len(long_ids)
    counts[long_ids[0] if long_ids else 0] += total - sum(counts)
    return counts, long_ids


def event_rows(
    tasks: list[tuple[str, float, float]], counts: list[int], rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    """:data:`EVENT_INSERT` rows: each task's lines spread between its creation and last
    update; the tasks of one window of ``WINDOW`` neighbours interleave (sorted by time), as
    tasks running side by side do."""
    pool = message_pool(rng)
    bits = MESSAGES.bit_length() - 1
    draw = rng.getrandbits
    for base in range(0, len(tasks), WINDOW):
        window = range(base, min(base + WINDOW, len(tasks)))
        keys: list[int] = []
        for slot, index in enumerate(window):
            _, created, last_update = tasks[index]
            n = counts[index]
            if n:
                t0, span = int(created * 1000), max(int((last_update - created) * 1000), n)
                step = span / n  # >= 1: a task's timestamps strictly increase with its lines
                keys.extend((t0 + int(k * step)) * WINDOW + slot for k in range(n))
        keys.sort()  # by time, then task: so each task's lines come in line order
        ids = [tasks[index][0] for index in window]
        raw = [task_id.encode() for task_id in ids]
        line = [0] * len(ids)
        for key in keys:
            ts_ms, slot = divmod(key, WINDOW)
            k = line[slot]
            line[slot] = k + 1
            doc = log_doc(raw[slot], ts_ms, k, pool[draw(bits)])
            yield ids[slot], "log", ts_ms, None, None, None, doc, None


def make_events(
    conn: sqlite3.Connection,
    tasks: list[tuple[str, float, float]],
    counts: list[int],
    rng: random.Random,
) -> None:
    """Insert the :func:`event_rows` with :data:`EVENT_INSERT`, ``CHUNK`` rows a transaction."""
    rows = event_rows(tasks, counts, rng)
    done, total = 0, sum(counts)
    began = time.monotonic()
    while done < total:
        with conn:
            added = conn.executemany(EVENT_INSERT, itertools.islice(rows, CHUNK)).rowcount
        if added <= 0:
            raise RuntimeError(f"the event rows ended after {done:,} of {total:,}")
        done += added
        rate = done / max(time.monotonic() - began, 1e-9) * 60
        print(f"  events: {done:,} ({rate / 1e6:.2f} M/min)", file=sys.stderr, flush=True)


@contextmanager
def bulk_load(conn: sqlite3.Connection, tables: tuple[str, ...]) -> Iterator[None]:
    """Drop the indexes and triggers on ``tables`` for the body, then create them again from
    the very statements the server's ``Store`` created them with (``sqlite_master.sql``):
    one sort per index instead of a B-tree insert per row and index. Partial indexes stay: the
    generated events are console logs, which the scalar-only ones never hold, and creating one
    again would cost a scan of the whole table (tens of GB at 100M events) for nothing."""
    marks = ",".join("?" * len(tables))
    partial = {
        row[1] for table in tables for row in conn.execute(f"PRAGMA index_list({table})") if row[4]
    }
    saved = [
        (kind, name, sql)
        for kind, name, sql in conn.execute(
            f"SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') "
            f"AND tbl_name IN ({marks}) AND sql IS NOT NULL ORDER BY type, name",
            tables,
        )
        if name not in partial
    ]
    for kind, name, _ in saved:
        conn.execute(f'DROP {kind.upper()} "{name}"')
    conn.commit()
    yield
    for kind, name, sql in saved:
        began = time.monotonic()
        conn.execute(sql)
        conn.commit()
        print(f"  {kind} {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)


def append_events(args: argparse.Namespace) -> None:
    """Add ``args.events`` log events, spread as a new database's are (the same long logs for
    the same seed), to the tasks of the database ``args.db`` built before; update its summary."""
    began = time.monotonic()
    conn = sqlite3.connect(str(args.db))
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    rows = conn.execute("SELECT id, created, last_update FROM tasks ORDER BY created, id")
    tasks = [
        (task_id, dt.datetime.fromisoformat(created).timestamp(),
         dt.datetime.fromisoformat(last_update or created).timestamp())
        for task_id, created, last_update in rows
    ]  # fmt: skip
    rng = random.Random(args.seed)
    counts, _ = log_counts(tasks, args, rng)
    make_events(conn, tasks, counts, rng)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    summary_path = Path(f"{args.db}.json")
    summary = json.loads(summary_path.read_text())
    summary["events"] += args.events
    summary["db_bytes"] = args.db.stat().st_size
    summary["append_s"] = round(time.monotonic() - began, 1)
    for key, sql in (
        ("page_task", "SELECT task, n FROM log_counts ORDER BY abs(n - 1000) LIMIT 1"),
        ("long_task", "SELECT task, n FROM log_counts ORDER BY n DESC LIMIT 1"),
    ):
        task_id, lines = conn.execute(sql).fetchone()
        summary[key], summary[f"{key}_lines"] = task_id, lines
    summary["typical_task_lines"] = conn.execute(
        "SELECT n FROM log_counts WHERE task=?", (summary["typical_task"],)
    ).fetchone()[0]
    conn.close()
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="database file to create")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=100_000_000, help="log events in all")
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--years", type=float, default=3.0, help="history the tasks span")
    parser.add_argument("--long-logs", type=int, default=10, help="tasks with very long logs")
    parser.add_argument("--long-share", type=float, default=0.05,
                        help="share of all events in the very long logs")  # fmt: skip
    parser.add_argument("--queued", type=int, default=2000, help="entries in the bench queue")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument(
        "--append",
        action="store_true",
        help="add --events log events to the tasks of an existing database",
    )
    args = parser.parse_args()
    if args.append:
        append_events(args)
        return
    if args.db.exists():
        parser.error(f"{args.db} exists; give a new path")
    # the index sorts' temporary files (GBs at 100M events) beside the database, not in /tmp
    os.environ.setdefault("SQLITE_TMPDIR", str(args.db.resolve().parent))
    rng = random.Random(args.seed)
    began = time.monotonic()
    store = Store(args.db)  # the server's schema, indexes and migrations
    with store.write():
        projects = make_projects(store, args.projects, time.time() - args.years * 365 * 86400)
        queue_id = "q" + "0" * 31
        store.put_queue({"id": queue_id, "name": "bench", "created": iso(time.time()),
                         "tags": [], "system_tags": [], "entries": []})  # fmt: skip
    store.close()
    conn = sqlite3.connect(str(args.db))
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB of page cache while loading
    with bulk_load(conn, ("tasks", "events")):
        tasks = make_tasks(conn, args, projects, rng)
        print(f"tasks: {len(tasks):,} in {time.monotonic() - began:.0f} s", file=sys.stderr)
        counts, long_ids = log_counts(tasks, args, rng)
        make_events(conn, tasks, counts, rng)
        # what the log_counts_add trigger (dropped while loading) would have counted
        conn.executemany(
            "INSERT INTO log_counts(task, n) VALUES (?,?)",
            ((task[0], n) for task, n in zip(tasks, counts, strict=True) if n),
        )
        conn.commit()
    queued = [tasks[i][0] for i in rng.sample(range(len(tasks)), min(args.queued, len(tasks)))]
    added = iso(time.time())
    conn.executemany(
        "INSERT INTO queue_entries(queue, task, added) VALUES (?,?,?)",
        [(queue_id, task_id, added) for task_id in queued],
    )
    conn.commit()
    conn.execute("PRAGMA optimize")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    seconds = time.monotonic() - began
    size = args.db.stat().st_size
    logged = sorted((i for i in range(len(tasks)) if counts[i]), key=lambda i: counts[i])
    typical = logged[len(logged) // 2] if logged else 0  # the median log (of tasks with one)
    page_task = min(range(len(tasks)), key=lambda i: abs(counts[i] - 1000))
    summary = {
        "tasks": len(tasks),
        "events": args.events,
        "projects": args.projects,
        "build_s": round(seconds, 1),
        "db_bytes": size,
        "queue": queue_id,
        "queued": len(queued),
        # the biggest project (the long tail's head): the hard case of a filtered first page
        "sample_project": projects[0],
        "small_project": projects[len(projects) // 2],
        "typical_task": tasks[typical][0],
        "typical_task_lines": counts[typical],
        # a log of about a thousand lines: a full page and then some
        "page_task": tasks[page_task][0],
        "page_task_lines": counts[page_task],
        "long_task": tasks[long_ids[0]][0] if long_ids else tasks[0][0],
        "long_task_lines": counts[long_ids[0]] if long_ids else counts[0],
    }
    Path(f"{args.db}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
