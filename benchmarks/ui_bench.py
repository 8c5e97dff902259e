"""Benchmark of the web UI at lab scale: the task table with 100,000 tasks, a console of
1,000,000 lines, a scalar series of 100,000 points.

The data dir is filled through the server's own :class:`Store` (not timed: 100,000 task
documents, 1,000,000 one-line log events on one task, 100,000 scalar points on another), then a
real ``hpcagent server`` process is started on it and a signed-in ``requests`` session times
each page over loopback (so every figure includes HTTP; the server-side time is lower):

* task table: the first page (50 rows) of the default view, of a status filter, of a name
  sort, of a start-time sort, and page 100;
* projects page (task counts per status);
* console: the Console tab plus its first data page (= what "opening" costs), then 10 older
  pages;
* scalars: the Scalars data of a 100,000-point series, sampled by the server to 2,000 points
  (averages with their min/max band), over HTTP and server side (the sampling function in this
  process on the same database); with ``--draw`` also the Scalars tab in headless Chromium,
  from navigation until Plotly drew the chart.

* pings while pages load (issue 14 item 3: no request stalls the server): ``debug.ping``
  round trips of a second client, first on the idle server, then while a third client loads
  the heavy pages above (table page 100, projects, console, scalars) one after another.

Prints p50/p90 per item (and p99/max for the pings). Goals (issue 16): table first page
<= 100 ms p50, console opens in <= 1 s and pages, the 100,000-point series drawn sampled; a
ping is not held up by a page being built.

    .venv/bin/python benchmarks/ui_bench.py [--tasks 100000] [--lines 1000000] [--repeat 30]
        [--draw] [--pings 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import requests
from server_bench import ACCESS_KEY, SECRET_KEY, _free_port, _start_server

STATUSES = ("completed", "failed", "stopped", "created", "queued", "in_progress")


def fill(data_dir: Path, tasks: int, lines: int, points: int) -> tuple[str, str]:
    """Write the benchmark's data with the server's Store; returns (console task, scalar task)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hpcagent.server.routes.tasks import new_task_doc
    from hpcagent.server.store import Store, dumps

    class _Ctx:
        user = "bench"
        company = "bench"

    store = Store(data_dir / "server.db")
    projects = [uuid.uuid4().hex for _ in range(20)]
    with store.write() as conn:
        for i, pid in enumerate(projects):
            doc = {"id": pid, "name": f"project {i}", "created": f"2026-01-01T00:00:{i:02d}"}
            conn.execute(
                "INSERT INTO projects(id, name, created, doc) VALUES (?,?,?,?)",
                (pid, doc["name"], doc["created"], dumps(doc)),
            )
        ids: list[str] = []
        rows = []
        for i in range(tasks):
            created = f"2026-{1 + i * 12 // tasks:02d}-01T00:00:00.{i:09d}"
            doc = new_task_doc(_Ctx(), f"sweep lr={i % 997} seed={i}", created)  # type: ignore[arg-type]
            doc["status"] = STATUSES[i % len(STATUSES)]
            doc["project"] = projects[i % len(projects)]
            doc["started"] = created
            doc["hyperparams"] = {
                "Args": {"lr": {"section": "Args", "name": "lr", "value": str(i % 997)}},
                "properties": {"slurm-job-id": {"section": "properties",
                                                "name": "slurm-job-id", "value": str(i)}},
            }  # fmt: skip
            ids.append(doc["id"])
            rows.append(
                (doc["id"], doc["name"], doc["project"], doc["status"], created, dumps(doc),
                 created, created)
            )  # fmt: skip
        conn.executemany(
            "INSERT INTO tasks(id, name, project, status, created, doc, started, last_update) "
            "VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
    console, scalars = ids[-1], ids[-2]
    start = int(time.time() * 1000) - lines
    batch = 100_000
    for first in range(0, lines, batch):
        with store.write() as conn:
            conn.executemany(
                "INSERT INTO events(task, type, ts, iter, metric, variant, doc) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    (console, "log", start + n, None, None, None,
                     orjson.dumps({"task": console, "type": "log", "timestamp": start + n,
                                   "level": "info", "msg": f"step {n}: loss=0.{n % 1000:03d}"}))
                    for n in range(first, min(first + batch, lines))
                ),
            )  # fmt: skip
    with store.write() as conn:
        conn.executemany(
            "INSERT INTO events(task, type, ts, iter, metric, variant, doc, value) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (
                (scalars, "training_stats_scalar", start + n, n, "loss", "train",
                 orjson.dumps({"task": scalars, "type": "training_stats_scalar", "iter": n,
                               "metric": "loss", "variant": "train", "value": 1 / (n + 1),
                               "timestamp": start + n}), 1 / (n + 1))
                for n in range(points)
            ),
        )  # fmt: skip
    store.close()
    return console, scalars


def sign_in(url: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{url}/login", timeout=30).text
    match = re.search(r'name="nonce" value="([^"]+)"', page)
    assert match, "no sign-in form"
    form = {"nonce": match.group(1), "next": "/tasks",
            "access_key": ACCESS_KEY, "secret_key": SECRET_KEY}  # fmt: skip
    reply = session.post(f"{url}/login", data=form, allow_redirects=False, timeout=30)
    assert reply.status_code == 303, reply.text[:300]
    return session


def timed(
    session: requests.Session, url: str, repeat: int
) -> tuple[list[float], requests.Response]:
    times: list[float] = []
    reply = session.get(url, timeout=120)  # warm-up (and the reply to check)
    reply.raise_for_status()
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.get(url, timeout=120).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return times, reply


def server_side_scalars(data_dir: Path, task: str, repeat: int) -> list[float]:
    """The sampled series as the server computes it (event_reads.scalar_histogram, the
    function both the UI's data and the REST endpoint run), in this process on the same
    database (SQLite WAL: a second reader), without HTTP or JSON."""
    from hpcagent.server.routes.event_reads import scalar_histogram
    from hpcagent.server.store import Store

    store = Store(data_dir / "server.db")
    try:
        scalar_histogram(store, task, "iter", 2000, None, envelope=True)  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            scalar_histogram(store, task, "iter", 2000, None, envelope=True)
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        store.close()


def draw_times(url: str, task: str, repeat: int) -> list[float]:
    """From navigating to the Scalars tab until Plotly drew the chart, in headless Chromium
    (Debian's chromium + chromedriver, as the browser tests use; `make browser`)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)  # fmt: skip
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=str(shutil.which("chromedriver")))
    )
    try:
        driver.get(f"{url}/login")
        driver.find_element(By.ID, "access_key").send_keys(ACCESS_KEY)
        driver.find_element(By.ID, "secret_key").send_keys(SECRET_KEY)
        driver.find_element(By.ID, "sign-in").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "task-table"))
        times = []
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            driver.get(f"{url}/tasks/{task}?tab=scalars")
            WebDriverWait(driver, 120, poll_frequency=0.02).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".scalar-chart .main-svg")
            )
            if i:  # the first is the warm-up
                times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        driver.quit()


def ping_times(url: str, count: int) -> list[float]:
    """``count`` ``debug.ping`` round trips (ms), 20 ms apart, on one kept-alive connection."""
    times = []
    with requests.Session() as session:
        session.get(f"{url}/debug.ping", timeout=300).raise_for_status()
        for _ in range(count):
            t0 = time.perf_counter()
            session.get(f"{url}/debug.ping", timeout=300).raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    return times


def pings_while_loading(url: str, paths: list[str], count: int) -> tuple[list[float], int]:
    """:func:`ping_times` while another signed-in client loads ``paths`` in turn, without
    pause; also how many pages it loaded meanwhile."""
    stop = threading.Event()
    loaded = [0]
    loader = sign_in(url)

    def load() -> None:
        while not stop.is_set():
            for path in paths:
                loader.get(url + path, timeout=300).raise_for_status()
                loaded[0] += 1
                if stop.is_set():
                    return

    thread = threading.Thread(target=load, name="page-loader")
    thread.start()
    try:
        return ping_times(url, count), loaded[0]
    finally:
        stop.set()
        thread.join()


def report_pings(label: str, times: list[float], extra: str = "") -> None:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    report(label, times, f"p99 {p99:8.1f} ms   max {ordered[-1]:8.1f} ms   {extra}")


def report(label: str, times: list[float], extra: str = "") -> None:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    print(f"{label:<58} p50 {p50:8.1f} ms   p90 {p90:8.1f} ms   {extra}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--draw", action="store_true", help="also time the Scalars tab in headless Chromium"
    )
    parser.add_argument("--pings", type=int, default=200, help="pings per ping item (0: none)")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} nproc={os.cpu_count()} "
          f"python {platform.python_version()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir(mode=0o700)
        t0 = time.perf_counter()
        console, scalars = fill(data_dir, args.tasks, args.lines, args.points)
        print(f"filled {args.tasks} tasks, {args.lines} log lines, {args.points} scalar points "
              f"in {time.perf_counter() - t0:.0f} s (not timed below)", flush=True)  # fmt: skip
        port = _free_port()
        proc = _start_server(data_dir, port)  # the server benchmark's start (waits for ping)
        url = f"http://127.0.0.1:{port}"
        try:
            session = sign_in(url)
            n = args.repeat
            for label, path in (
                ("task table, first page (default view, 50 rows)", "/tasks"),
                ("task table, first page, status=failed", "/tasks?status=failed"),
                ("task table, first page, sorted by name", "/tasks?sort=name"),
                ("task table, page 100 (rows 5,001-5,050)", "/tasks?page=100"),
                ("task table, first page, sorted by started", "/tasks?sort=-started"),
                ("projects page (counts per status)", "/projects"),
            ):
                times, reply = timed(session, url + path, n)
                rows = reply.text.count("<tr data-task=")
                report(label, times, f"{rows} rows")
            page_times, _ = timed(session, f"{url}/tasks/{console}?tab=console", n)
            data_times, first = timed(session, f"{url}/data/tasks/{console}/console", n)
            opened = [a + b for a, b in zip(page_times, data_times, strict=True)]
            body = first.json()
            report("console of 1M lines: open (tab + newest page)", opened,
                   f"{len(body['lines'])} lines of {body['total']}")  # fmt: skip
            older = []
            oldest = body["lines"][0]["ts"]
            for _ in range(10):
                t0 = time.perf_counter()
                page = session.get(f"{url}/data/tasks/{console}/console?before={oldest}",
                                   timeout=120).json()  # fmt: skip
                older.append((time.perf_counter() - t0) * 1000)
                oldest = page["lines"][0]["ts"]
            report("console of 1M lines: one older page (1,000 lines)", older)
            times, reply = timed(session, f"{url}/data/tasks/{scalars}/scalars", min(n, 10))
            points = len(reply.json()["loss"]["train"]["x"])
            report(f"scalars: {args.points}-point series, sampled (HTTP)", times,
                   f"{points} points + min/max band")  # fmt: skip
            report(f"scalars: {args.points}-point series, server side",
                   server_side_scalars(data_dir, scalars, min(n, 10)))  # fmt: skip
            if args.draw:
                report(f"scalars: {args.points}-point series, Scalars tab drawn in Chromium",
                       draw_times(url, scalars, 5))  # fmt: skip
            if args.pings:
                report_pings("debug.ping, idle server", ping_times(url, args.pings))
                heavy = [
                    "/tasks?page=100",
                    "/projects",
                    f"/tasks/{console}?tab=console",
                    f"/data/tasks/{console}/console",
                    f"/data/tasks/{scalars}/scalars",
                ]
                times, loaded = pings_while_loading(url, heavy, args.pings)
                report_pings("debug.ping while another client loads heavy pages", times,
                             f"({loaded} pages loaded meanwhile)")  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
