"""``hpcagent server --services-agent``: a services-mode ``hpcagent daemon`` next to the server.

ClearML's default server runs an agent in services mode on its ``services`` queue, where
pipeline controllers (and other services tasks) are enqueued; this is the same for the embedded
server. The daemon is an ordinary ``hpcagent daemon --services-mode`` child process (its own
process group, so a terminal's Ctrl-C reaches the server only, which then stops it in order):

* it reads the server's configuration (``--config-file``, else ``CLEARML_CONFIG_FILE``, else
  ``~/clearml.conf``: venvs, package manager, ...), with the API address and keys of this
  server in its environment (``CLEARML_API_HOST``, ``CLEARML_API_ACCESS_KEY``, ... never on its
  command line), and ``CLEARML_FILES_HOST`` = the server's ``/files`` unless the configuration
  names a files server;
* its state folders (ledger, pid) are under ``DATA_DIR/services-agent``, its rotated log is
  ``DATA_DIR/services-agent/daemon.log``;
* it starts once the server accepts requests and is stopped (SIGTERM, then SIGKILL after
  :attr:`ServicesAgent.stop_wait_s`) before the server stops answering, so the controllers it
  runs end ``stopped`` on the server.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from hpcagent import process
from hpcagent.commands.longrunning import LOG_FILE_ENV
from hpcagent.server.auth import Credentials

log = logging.getLogger("hpcagent.server")

#: The queue ClearML's server serves with its services agent.
DEFAULT_SERVICES_QUEUE = "services"


class ServicesAgent:
    """The daemon child of ``hpcagent server`` (a :class:`hpcagent.server.runner.Companion`)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        queue: str = DEFAULT_SERVICES_QUEUE,
        limit: int = 0,
        config_file: str | None = None,
        configured_files_server: str = "",
        env: Mapping[str, str] | None = None,
        stop_wait_s: float = 90.0,
    ) -> None:
        self.state_dir = data_dir.expanduser() / "services-agent"
        self.queue = queue
        self.limit = limit
        self.config_file = config_file
        self.configured_files_server = configured_files_server
        self.base_env = dict(os.environ if env is None else env)
        #: Longer than the daemon's own stop (its tasks' SIGTERM, kill grace and reports).
        self.stop_wait_s = stop_wait_s
        self.proc: process.Process | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        return self.state_dir / "daemon.log"

    def argv(self) -> list[str]:
        """``hpcagent daemon`` as this Python runs it (no secrets: they go in the env)."""
        argv = [sys.executable, "-m", "hpcagent"]
        if self.config_file:
            argv += ["--config-file", self.config_file]
        argv += ["daemon", "--queue", self.queue, "--cpu-only", "--create-queue"]
        argv += ["--state-dir", str(self.state_dir), "--foreground"]
        argv += ["--services-mode", str(self.limit)] if self.limit else ["--services-mode"]
        return argv

    def environment(self, api_url: str, creds: Credentials) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            CLEARML_API_HOST=api_url,
            CLEARML_WEB_HOST=api_url,
            CLEARML_API_ACCESS_KEY=creds.access_key,
            CLEARML_API_SECRET_KEY=creds.secret_key,
        )
        env[LOG_FILE_ENV] = str(self.log_path)
        if not self.configured_files_server:  # else the configuration's own (file:// too)
            env["CLEARML_FILES_HOST"] = api_url + "/files"
        return env

    def start(self, api_url: str, creds: Credentials) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        with self.log_path.open("ab") as out:
            self.proc = process.start_process(
                self.argv(), stdout=out, env=self.environment(api_url, creds)
            )
        log.info(
            "services agent on queue %s: hpcagent daemon pid %d, log %s",
            self.queue,
            self.proc.pid,
            self.log_path,
        )
        threading.Thread(target=self._watch, name="services-agent", daemon=True).start()

    def _watch(self) -> None:
        """Say so when the daemon ends by itself (the server keeps serving without it)."""
        proc = self.proc
        if proc is None:
            return
        code = proc.wait()
        if not self._stopping.is_set():
            log.error(
                "the services agent (hpcagent daemon) exited with %s; see %s", code, self.log_path
            )

    def stop(self) -> None:
        """SIGTERM the daemon's process group and wait for it (SIGKILL after
        ``stop_wait_s``); a second call while a stop is under way returns at once."""
        self._stopping.set()
        if not self._lock.acquire(blocking=False):
            return
        try:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            log.info("stopping the services agent (pid %d)", proc.pid)
            process.signal_group(proc.pid, signal.SIGTERM)
            if process.wait_for(proc, self.stop_wait_s) is None:
                log.warning("the services agent did not stop in %.0f s: killed", self.stop_wait_s)
                process.signal_group(proc.pid, signal.SIGKILL)
                process.wait_for(proc, 10.0)
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return f"services agent on {self.queue}"
