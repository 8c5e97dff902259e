"""Benchmark of the embedded server: mixed load, queue pops/s and log events/s.

For each ``--workers`` value (default 1 and 2: ``hpcagent server --workers N``) starts a real
server subprocess (fresh temporary data dir; or uses ``--url``), then:

* mixed: ``--mixed-clients`` processes (default 8), after ``--history`` tasks were created (not
  timed), each repeat for ``--duration`` seconds the calls of a lab's day: tasks.create,
  tasks.enqueue, queues.get_next_task, tasks.get_by_id, tasks.get_all (first page of 50 by
  status, newest update first: the web UI's table), events.add_batch (20 log lines),
  events.get_task_log (100 lines), workers.status_report; figure = requests/s. With two or
  more ``--workers`` values the ratio to the first is printed.

and for each client count (default 1 and 8 processes):

* pops: fills one queue with ``--tasks`` tasks (tasks.create + tasks.enqueue, not timed), then
  the clients pop it empty with ``queues.get_next_task``; figure = pops / wall time.
* events: each client posts ``--batches`` json-lines bodies of ``--batch-size`` log events
  (agent-like lines of ~120 bytes); figure = events acknowledged (``added``) / wall time.

Every client uses one keep-alive ``http.client`` connection (``--client requests`` uses a
``requests.Session`` instead, as the ClearML SDK and agent do). Prints one line per figure.

    .venv/bin/python benchmarks/server_bench.py [--workers 1 2] [--figures mixed pops events]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ACCESS_KEY = "BENCHACCESSKEY"
SECRET_KEY = "bench-secret-key-0123456789abcdefghijklmnop"  # >= 32 characters
USE_REQUESTS = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_pids(pid: int) -> list[int]:
    """The server process and its children (the workers of ``--workers N``), from /proc."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return pids


def server_cpu(pid: int) -> float:
    """CPU seconds of the server process and its children (the workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in server_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _session(url: str) -> requests.Session:
    token = requests.get(f"{url}/auth.login", auth=(ACCESS_KEY, SECRET_KEY), timeout=30).json()[
        "data"
    ]["token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _call(session: requests.Session, url: str, endpoint: str, body: Any) -> dict[str, Any]:
    reply = session.post(f"{url}/{endpoint}", json=body, timeout=120)
    if reply.status_code != 200:
        raise RuntimeError(f"{endpoint}: {reply.status_code} {reply.text[:300]}")
    data: dict[str, Any] = reply.json()["data"]
    return data


class _Client:
    """A minimal keep-alive HTTP client (http.client): far less client CPU per call than
    requests, so that on a small machine the figures measure the server, not the client."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.url = url
        self.conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)
        self.session = _session(url)
        self.headers = {
            "Authorization": str(self.session.headers["Authorization"]),
            "Content-Type": "application/json",
        }

    def post(self, endpoint: str, body: bytes, content_type: str | None = None) -> Any:
        headers = self.headers
        if content_type is not None:
            headers = dict(headers, **{"Content-Type": content_type})
        if USE_REQUESTS:  # what the ClearML SDK/agent use: more client CPU per call
            resp = self.session.post(f"{self.url}/{endpoint}", data=body, headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(f"{endpoint}: {resp.status_code} {resp.text[:300]}")
            return resp.json()["data"]
        self.conn.request("POST", f"/{endpoint}", body=body, headers=headers)
        reply = self.conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{endpoint}: {reply.status} {data[:300]!r}")
        return json.loads(data)["data"]


def _fill(url: str, queue: str, count: int) -> None:
    session = _session(url)
    for i in range(count):
        task = _call(session, url, "tasks.create", {"name": f"bench-{i}", "type": "training"})
        _call(session, url, "tasks.enqueue", {"task": task["id"], "queue": queue})


def _popper(url: str, queue: str, start: Any, out: Any) -> None:
    client = _Client(url)
    body = json.dumps({"queue": queue}).encode()
    popped = 0
    start.wait()
    while True:
        data = client.post("queues.get_next_task", body)
        if not data:
            break
        popped += 1
    out.put((popped, time.perf_counter()))


def _sender(url: str, task: str, batches: int, size: int, start: Any, out: Any) -> None:
    client = _Client(url)
    base = int(time.time() * 1000)
    lines = [
        json.dumps({"type": "log", "level": "DEBUG", "task": task, "worker": "bench:0",
                    "msg": f"epoch 3 step {i}: loss=0.{i:05d} lr=0.001 throughput=1234.5 img/s",
                    "timestamp": base + i})
        for i in range(size)
    ]  # fmt: skip
    body = "\n".join(lines).encode()
    added = 0
    start.wait()
    for _ in range(batches):
        data = client.post("events.add_batch", body, "application/json-lines")
        added += int(data["added"])
    out.put((added, time.perf_counter()))


def _run_clients(target: Any, args_for: list[tuple[Any, ...]]) -> tuple[int, float]:
    ctx = mp.get_context("fork")
    start = ctx.Event()
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, out)) for a in args_for]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # let every client log in first
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"client exited with {proc.exitcode}")
    total = sum(r[0] for r in results)
    return total, max(r[1] for r in results) - t0


def bench_pops(url: str, clients: int, tasks: int) -> float:
    session = _session(url)
    queue = _call(session, url, "queues.create", {"name": f"bench-pop-{clients}-{time.time()}"})
    fillers = 4
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill, args=(url, queue["id"], tasks // fillers))
             for _ in range(fillers)]  # fmt: skip
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    expected = _call(session, url, "queues.get_num_entries", {"queue": queue["id"]})["num"]
    popped, elapsed = _run_clients(_popper, [(url, queue["id"])] * clients)
    if popped != expected:
        raise RuntimeError(f"popped {popped} of {expected}")
    return popped / elapsed


def bench_events(url: str, clients: int, batches: int, size: int) -> float:
    session = _session(url)
    task = _call(session, url, "tasks.create", {"name": "bench-events", "type": "training"})["id"]
    added, elapsed = _run_clients(_sender, [(url, task, batches, size)] * clients)
    if added != clients * batches * size:
        raise RuntimeError(f"added {added} of {clients * batches * size}")
    return added / elapsed


def _mixed_client(url: str, queue: str, duration: float, start: Any, out: Any) -> None:
    client = _Client(url)
    worker = f"bench:{os.getpid()}"
    requests_done = 0
    start.wait()
    end = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < end:
        i += 1
        task = client.post("tasks.create", _dump({"name": f"mixed {worker} {i}",
                                                   "type": "training"}))["id"]  # fmt: skip
        client.post("tasks.enqueue", _dump({"task": task, "queue": queue}))
        popped = client.post("queues.get_next_task", _dump({"queue": queue}))
        target = popped["entry"]["task"] if popped else task
        client.post("tasks.get_by_id", _dump({"task": target}))
        client.post("tasks.get_all", _dump({"status": ["queued", "created"], "page": 0,
                    "page_size": 50, "order_by": ["-last_update"],
                    "only_fields": ["id", "name", "status", "last_update"]}))  # fmt: skip
        base = int(time.time() * 1000)
        lines = "\n".join(json.dumps({"type": "log", "level": "info", "task": target,
                                      "worker": worker, "msg": f"step {i}.{n} loss=0.{n:04d}",
                                      "timestamp": base + n}) for n in range(20))  # fmt: skip
        client.post("events.add_batch", lines.encode(), "application/json-lines")
        client.post("events.get_task_log", _dump({"task": target, "batch_size": 100}))
        client.post("workers.status_report", _dump({"worker": worker, "task": target,
                    "timestamp": base, "machine_stats": {"cpu_usage": [50.0]}}))  # fmt: skip
        requests_done += 8
    out.put((requests_done, time.perf_counter()))


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()


def bench_mixed(
    url: str, clients: int, duration: float, history: int, pid: int
) -> tuple[float, int, float]:
    """Requests/s of the mixed load, the requests made and the server's CPU seconds for them
    (``pid``: the server's process, 0 when unknown)."""
    session = _session(url)
    queue = _call(session, url, "queues.create", {"name": f"bench-mixed-{time.time()}"})["id"]
    ctx = mp.get_context("fork")
    fillers = [ctx.Process(target=_fill_history, args=(url, history // 4)) for _ in range(4)]
    for proc in fillers:
        proc.start()
    for proc in fillers:
        proc.join()
    cpu = server_cpu(pid) if pid else 0.0
    done, elapsed = _run_clients(_mixed_client, [(url, queue, duration)] * clients)
    cpu = server_cpu(pid) - cpu if pid else 0.0
    return done / elapsed, done, cpu


def _fill_history(url: str, count: int) -> None:
    client = _Client(url)
    for i in range(count):
        client.post("tasks.create", _dump({"name": f"history {os.getpid()} {i}",
                                           "type": "training"}))  # fmt: skip


def start_server(
    data_dir: Path,
    port: int,
    workers: int = 1,
    wait_s: float = 30.0,
    nice: int = 0,
    session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the server on ``port`` and wait up to ``wait_s`` for its ping (a big database
    adds its indexes on first open). ``nice``: its niceness, set before it starts as systemd's
    ``Nice=`` does (below 0 needs root or CAP_SYS_NICE); ``session``: in a session of its own,
    as systemd starts every service."""
    env = dict(os.environ, HPCAGENT_SERVER_ACCESS_KEY=ACCESS_KEY,
               HPCAGENT_SERVER_SECRET_KEY=SECRET_KEY)  # fmt: skip
    prefix = ["nice", "-n", str(nice)] if nice else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "hpcagent.commands.server", "--port", str(port),
         "--data-dir", str(data_dir), "--log-level", "warning", "--workers", str(workers)],
        env=env, start_new_session=session,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(int(wait_s * 10)):
        try:
            if requests.get(f"{url}/debug.ping", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="use a running server (keys BENCHACCESSKEY/...)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--figures", nargs="+", choices=["mixed", "pops", "events"],
                        default=["mixed", "pops", "events"])  # fmt: skip
    parser.add_argument("--mixed-clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="mixed load, seconds")
    parser.add_argument("--history", type=int, default=2000, help="tasks before the mixed load")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tasks", type=int, default=3000, help="tasks to pop per run")
    parser.add_argument("--client", choices=["http.client", "requests"], default="http.client")
    parser.add_argument("--batches", type=int, default=160, help="add_batch calls per client")
    parser.add_argument("--batch-size", type=int, default=500, help="events per add_batch")
    args = parser.parse_args()
    global USE_REQUESTS
    USE_REQUESTS = args.client == "requests"
    print(f"# machine: nproc={os.cpu_count()} {platform.platform()} "
          f"python={platform.python_version()}")  # fmt: skip
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    mixed: list[float] = []
    for workers in [0] if args.url else args.workers:
        with tempfile.TemporaryDirectory(prefix="hpcagent-bench-") as tmp:
            proc = None
            url = args.url
            if url is None:
                port = free_port()
                proc = start_server(Path(tmp) / "data", port, workers)
                url = f"http://127.0.0.1:{port}"
            try:
                _figures(url, workers, args, mixed, proc.pid if proc is not None else 0)
            finally:
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=120)
    # Each run against the run of the first --workers value before it (rounds alternate, so a
    # ratio compares two runs minutes apart on the same machine).
    base = None
    for workers, rate in zip(args.workers, mixed, strict=False):
        if workers == args.workers[0]:
            base = rate
        elif base:
            print(f"mixed requests/s ratio workers={workers} / workers={args.workers[0]}: "
                  f"{rate / base:.2f}")  # fmt: skip


def _figures(
    url: str, workers: int, args: argparse.Namespace, mixed: list[float], pid: int
) -> None:
    label = f"workers={workers} " if workers else ""
    if "mixed" in args.figures:
        load = os.getloadavg()[0]
        rate, done, cpu = bench_mixed(url, args.mixed_clients, args.duration, args.history, pid)
        mixed.append(rate)
        print(f"{label}mixed requests/s clients={args.mixed_clients}: {rate:8.0f}  (server CPU "
              f"{1000 * cpu / done:.2f} ms/request; load avg before "
              f"{load:.1f}, after {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    if "pops" in args.figures:
        for clients in args.clients:
            rate = bench_pops(url, clients, args.tasks)
            print(f"{label}pops/s          clients={clients}: {rate:10.0f}  ({args.tasks} tasks)",
                  flush=True)  # fmt: skip
    if "events" in args.figures:
        for clients in args.clients:
            batches = max(1, args.batches // clients) if clients > 1 else args.batches
            rate = bench_events(url, clients, batches, args.batch_size)
            print(f"{label}log events/s    clients={clients}: {rate:10.0f}  "
                  f"({clients}x{batches} batches of {args.batch_size})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
