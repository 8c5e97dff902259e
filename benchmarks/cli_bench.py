"""Benchmark of the interactive commands against a server that is not there; one line per
figure.

``hpcagent task list`` (a real process, as a user runs it) with ``api_server`` pointing at:

1. a closed port on 127.0.0.1 (connection refused);
2. a host name that does not resolve (``nosuch.invalid``);
3. a loopback port that never answers: its listener never accepts and its accept queue is
   already full, so the kernel drops the SYN and the connect times out (no traffic leaves the
   machine).

Each figure is the median wall time of ``--runs`` runs, with the exit status and the stderr line
count; the goal (issue 19) is at most 5 s, exit 5, one line. The configured retry budget is the
patient one (``api.http.retries: 8``): interactive commands must not use it.

    .venv/bin/python benchmarks/cli_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HPCAGENT = [sys.executable, "-c", "from hpcagent.cli import main; main()"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stalled_port() -> tuple[int, list[socket.socket]]:
    """A 127.0.0.1 port whose connects time out; keep the returned sockets open while in use."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    held = [listener]
    for _ in range(4):  # fill the accept queue (backlog 0 still queues one or two)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        held.append(filler)
    time.sleep(0.2)
    return port, held


def one(url: str, tmp: Path) -> tuple[float, int, int, str]:
    conf = tmp / "c.conf"
    conf.write_text(
        f'api {{ api_server: "{url}", credentials {{ access_key: "k", secret_key: "s" }}, '
        "http { retries: 8 } }\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    start = time.perf_counter()
    res = subprocess.run(
        [*HPCAGENT, "--config-file", str(conf), "task", "list"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    return wall, res.returncode, len(lines), lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}")  # fmt: skip
    stalled, held = stalled_port()
    cases = {
        "closed port": f"http://127.0.0.1:{closed_port()}",
        "unresolvable host": "http://nosuch.invalid:8008",
        "no answer (loopback, full accept queue)": f"http://127.0.0.1:{stalled}",
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, url in cases.items():
            runs = [one(url, Path(tmpdir)) for _ in range(args.runs)]
            wall = statistics.median(r[0] for r in runs)
            codes = sorted({r[1] for r in runs})
            lines = sorted({r[2] for r in runs})
            print(f"{name}: {wall:.2f} s median of {args.runs}; exit {codes}; "
                  f"stderr lines {lines}; {runs[-1][3]}")  # fmt: skip
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
