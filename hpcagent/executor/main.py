"""Orchestration of ``hpcagent execute --id TASK``.

Order: fetch the task → decide whether it still runs → mark it started and record host and
Slurm job in its runtime → start log shipping and abort polling → workspace (repository or
literal script, diff) → setup scripts → venv → record installed packages → run the entry point
with monitoring → final status (completed / failed / stopped) → flush logs.

Only rank 0 (the scheduler's rank, e.g. ``SLURM_PROCID``, else ``RANK``; unset or 0) writes
statuses, runtime and requirements.
The exit status of the executor: 0 when the task completed or was stopped by the user; the
task's own exit code when it failed; ``128 + signal`` when the executor was signalled; the
error's ``exit_code`` (see hpcagent.errors) when the executor itself failed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from hpcagent.api import spool
from hpcagent.api.compat import dequeue_to_start
from hpcagent.api.spool import make_sender, make_verifier
from hpcagent.config import ContainerSettings
from hpcagent.container.mode import choose_mode, command_wrapper, inner_env, open_session
from hpcagent.errors import (
    EnvironmentSetupError,
    ExecutorError,
    RepositoryError,
    TaskRecordError,
)
from hpcagent.executor import repo as repo_mod
from hpcagent.executor import requirements as requirements_mod
from hpcagent.executor.abort import AbortRequest, AbortWatcher
from hpcagent.executor.arguments import args_on_argv, args_to_argv, child_env
from hpcagent.executor.logs import LogShipper
from hpcagent.executor.options import ExecuteOptions, ExecutorConfig
from hpcagent.executor.process import ChildProcess, run_streamed
from hpcagent.executor.task_info import (
    TERMINAL_STATUSES,
    TaskInfo,
    entry_argv,
    final_status,
    rank,
    runtime_record,
    should_run,
)
from hpcagent.executor.venv import VenvBuilder, VenvSpec, resolve_python
from hpcagent.scheduler import registry

if TYPE_CHECKING:
    from hpcagent.container.base import PreparedCommand, Session
    from hpcagent.executor.metrics import Monitor

#: Seconds the task runs before the metrics thread starts (psutil, NVML: ~0.1 s of CPU); its
#: first report still comes ``min(3 s, interval)`` after the start, which a shorter task never had.
MONITOR_AFTER_S = 1.0


class Client(Protocol):
    """What the executor needs from ``hpcagent.api.ApiClient``."""

    def send(self, endpoint: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    def send_lines(
        self, endpoint: str, items: Any, *, repeat: bool = True
    ) -> list[dict[str, Any]]: ...


def merge_runtime(
    client: Client,
    task_id: str,
    keys: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Set ``keys`` in the task's ``runtime`` and keep every other key; returns the map sent.

    ``tasks.edit`` replaces the map whole, so it is read right before the edit, unless the
    caller read it moments ago (``current``: the executor's fetch at start, a few calls
    earlier). The only other writer while the job runs is the SDK inside the task, which starts
    after this; the submitter never writes ``runtime`` (it records the job in ``properties``).
    """
    if current is None:
        data = client.send("tasks.get_all", {"id": [task_id], "only_fields": ["id", "runtime"]})
        current = ((data.get("tasks") or [{}])[0] or {}).get("runtime") or {}
    runtime = {**current, **keys}
    client.send("tasks.edit", {"task": task_id, "force": True, "runtime": runtime})
    return runtime


class Executor:
    """Runs one task; :meth:`run` returns the executor's exit status."""

    def __init__(
        self,
        cfg: ExecutorConfig,
        client: Client,
        opts: ExecuteOptions,
        *,
        bg_client: Client | None = None,
        env: Mapping[str, str] | None = None,
        echo: BinaryIO | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.bg = bg_client or client  # fewer retries: used by the background threads
        self.opts = opts
        self.env = dict(os.environ if env is None else env)
        self.echo = echo if echo is not None else sys.stdout.buffer
        self.job = registry.job_identity(self.env)
        self.rank = rank(self.env, self.job)
        self.worker = opts.worker_id
        self.task_id = opts.task_id
        self.shipper: LogShipper | None = None
        self.child: ChildProcess | None = None
        self.abort: AbortRequest | None = None
        self.signal_name = ""
        self._signal_num = 0
        self._log_fh: IO[str] | None = None
        self._log_lock = threading.Lock()
        self._workdir: Path | None = None
        self.ctr: Session | None = None  # container mode (docs/containers.md)
        self._monitor: Monitor | None = None
        self._prep: PreparedCommand | None = None

    # -- output ------------------------------------------------------------------------------

    def note(self, msg: str, level: str = "INFO") -> None:
        """An executor message: to the job output, the log file and the task log."""
        line = f"hpcagent: {msg}"
        with contextlib.suppress(OSError, ValueError):
            self.echo.write((line + "\n").encode())
            self.echo.flush()
        self._to_file(line)
        if self.shipper is not None:
            self.shipper.emit(line, level)

    def _task_lines(self, lines: list[str]) -> None:
        if self.rank:
            lines = [f"[rank {self.rank}] {line}" for line in lines]
        block = "\n".join(lines)
        self._to_file(block)
        if self.shipper is not None:
            self.shipper.emit(block)

    def _to_file(self, line: str) -> None:
        if self._log_fh is not None:
            with self._log_lock:
                self._log_fh.write(line + "\n")
                self._log_fh.flush()

    # -- status calls ------------------------------------------------------------------------

    def _status(self, action: str, reason: str, message: str, *, force: bool = True) -> None:
        if self.rank != 0:
            return
        body = {
            "task": self.task_id,
            "status_reason": reason,
            "status_message": message,
            "force": force,
        }
        try:
            self.client.send(f"tasks.{action}", body)
        except Exception as exc:
            self.note(f"could not set the task {action}: {exc}", "ERROR")

    def _end(self, action: str, reason: str, message: str, *, force: bool = False) -> None:
        """Set the final status, unless the task ended itself (clearml-api.md §4.4).

        A status the task set (the SDK's ``mark_failed``/``mark_completed``, a pipeline
        controller failing) is never overwritten: the current status is read first and left
        when it is already final, and the call goes without ``force`` as clearml-agent sends
        it, so the server refuses what its state machine refuses (``failed`` -> ``completed``).
        """
        if self.rank != 0:
            return
        current = ""
        with contextlib.suppress(Exception):  # unknown: let the server's state machine judge
            data = self.client.send(
                "tasks.get_all", {"id": [self.task_id], "only_fields": ["id", "status"]}
            )
            current = str(((data.get("tasks") or [{}])[0] or {}).get("status") or "")
        if current in TERMINAL_STATUSES:
            self.note(f"the task set its own final status ({current}); leaving it")
            return
        self._status(action, reason, message, force=force)

    # -- main --------------------------------------------------------------------------------

    def run(self) -> int:
        if self.opts.log_file is not None:
            self.opts.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.opts.log_file, "a", encoding="utf-8")  # noqa: SIM115
        try:
            return self._run()
        finally:
            if self._log_fh is not None:
                self._log_fh.close()

    def _run(self) -> int:
        try:
            task = self._fetch(self.task_id)
        except TaskRecordError as exc:
            return self._refuse(exc)
        if self.opts.clone:
            self.task_id = str(self.client.send("tasks.clone", {"task": self.task_id})["id"])
            self.note(f"running clone {self.task_id} of task {task.id}")
            task = self._fetch(self.task_id)
        ok, why = should_run(task, self.job, self.opts.force or self.opts.clone)
        if not ok:
            self.note(f"not running task {task.id}: {why}")
            return 0
        self._workdir = Path(
            tempfile.mkdtemp(prefix=f"task-{self.task_id[:12]}-", dir=self._base_dir())
        )
        self.shipper = LogShipper(
            make_sender(self.bg),
            task=self.task_id,
            worker=self.worker,
            spool_dir=self._workdir / "log-spool",
            flush_interval=self.cfg.log_flush_interval_s,
            spool_max_bytes=self.cfg.log_spool_max_bytes,
            verifier=make_verifier(self.bg, self.task_id),
        ).start()
        orphans = threading.Thread(
            target=self._deliver_orphans, name="hpcagent-orphan-logs", daemon=True
        )
        orphans.start()
        previous = self._install_signal_handlers()
        watcher = AbortWatcher(
            self.bg.send,
            self.task_id,
            interval=self.cfg.abort_poll_interval_s,
            ping_interval=self.cfg.task_ping_interval_s,
            on_abort=self._on_abort,
            ping=self.rank == 0,
        )
        try:
            if not self._mark_started(task):
                return 0
            watcher.start()
            code = self._setup_and_run(task)
        finally:
            watcher.stop()
            self._restore_signal_handlers(previous)
            self._unregister()
            orphans.join(5.0)  # cut short, it leaves the rest for the next run (exactly once)
            delivered = self.shipper.close(self.cfg.final_flush_timeout_s)
            self._cleanup(delivered)
        return code

    def _deliver_orphans(self) -> None:
        """Deliver the log spools that earlier runs left in the work folder (their server was
        away at their end, or they were killed): hpcagent.api.spool, exactly once."""
        try:
            report = spool.deliver_orphans(self.bg, self._base_dir())
        except Exception as exc:  # never this task's failure
            self.note(f"left-behind logs of earlier runs not delivered: {exc}", "WARNING")
            return
        if report.files:
            msg = f"delivered {report.files} left-behind log request(s) ({report.events} events)"
            self.note(msg, "DEBUG")

    def _unregister(self) -> None:
        """Remove this run's worker entry when the id is its own (from host and job or pid), not
        one given by CLEARML_WORKER_ID or the config (a daemon's, which lives on)."""
        if self.rank != 0 or self.env.get("CLEARML_WORKER_ID") or self.cfg.worker_id:
            return
        with contextlib.suppress(Exception):
            self.bg.send("workers.unregister", {"worker": self.worker})

    def _base_dir(self) -> Path:
        base = self.cfg.venvs_dir
        base.mkdir(parents=True, exist_ok=True)
        return base

    def _fetch(self, task_id: str) -> TaskInfo:
        data = self.client.send("tasks.get_by_id", {"task": task_id})
        task = data.get("task")
        return TaskInfo.from_task(task if isinstance(task, Mapping) else {})

    def _refuse(self, exc: TaskRecordError) -> int:
        """The task's record cannot be run: fail the task with the reason, unless it already
        ended (never rewritten after the fact; forced: it may still be queued); exit 8."""
        self.note(str(exc), "ERROR")
        self._end("failed", "invalid task record", str(exc)[-2000:], force=True)
        return exc.exit_code

    def _mark_started(self, task: TaskInfo) -> bool:
        """Mark the task started; False when another executor took the queued task first."""
        self.note(f"task {self.task_id} ({task.name}) on worker {self.worker}")
        if self.rank != 0:
            return True
        if task.status == "queued":
            # API >= 2.26: straight to in_progress; older: via created (hpcagent.api.compat)
            taken = not dequeue_to_start(self.client, self.task_id, status_reason="starting")
            if taken and not self.opts.force:
                self.note(
                    "the task is no longer queued (taken or aborted meanwhile); not running it"
                )
                return False
        self._status("started", "worker started execution", f"Changed by hpcagent {self.worker}")
        try:
            keys = runtime_record(self.job, self.worker, socket.gethostname())
            merge_runtime(self.client, self.task_id, keys, current=task.runtime)
            self.client.send(
                "workers.status_report",
                {"worker": self.worker, "task": self.task_id, "timestamp": int(time.time() * 1000)},
            )
        except Exception as exc:  # informative only: never stop the run for it
            self.note(f"could not record the runtime: {exc}", "WARNING")
        return True

    # -- abort and signals -------------------------------------------------------------------

    def _on_abort(self, request: AbortRequest) -> None:
        self.abort = request
        self.note(f"aborting: {request.reason}", "WARNING")

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._signal_num:
            return
        self._signal_num = signum
        self.signal_name = signal.Signals(signum).name
        if self.child is not None:
            self.child.signal_group(signum)  # forward at once; SIGKILL follows after the grace

    def _stopping(self) -> bool:
        return self.abort is not None or self._signal_num != 0

    # -- setup and run -----------------------------------------------------------------------

    def _setup_and_run(self, task: TaskInfo) -> int:
        assert self._workdir is not None
        try:
            # An abort or a signal during setup is honoured between the steps (a running git
            # or pip command is not interrupted; setup scripts are).
            cwd, code_dir, repo_root = repo_mod.prepare_workspace(
                task.script, self._workdir, self.cfg, self.note
            )
            choice = choose_mode(
                container=self.opts.container, docker=self.opts.docker, env=self.env
            )
            if choice is not None:
                self.ctr = open_session(
                    choice,
                    image=task.container_image,
                    arguments=task.container_arguments,
                    settings=self.opts.container_settings or ContainerSettings(),
                    task_id=self.task_id,
                    binds=[self._workdir, self.cfg.venvs_cache_path],
                    host_env=self.env,
                    log=self.note,
                )
            if self._stopping():
                return self._finish(-1, "")
            self._setup_scripts(task, cwd)
            if self._stopping():
                return self._finish(-1, "")
            python = self._environment(task, cwd, repo_root)
            if self._stopping():
                return self._finish(-1, "")
            return self._execute(task, python, cwd, code_dir)
        except ExecutorError as exc:
            kind = {
                RepositoryError: "repository setup failed",
                EnvironmentSetupError: "environment setup failed",
            }.get(type(exc), "executor failed")
            self.note(f"{kind}: {exc}", "ERROR")
            self._end("failed", kind, str(exc)[-2000:])
            return exc.exit_code
        except Exception as exc:  # a bug or an API failure: still leave the task failed
            self.note(f"executor failed: {type(exc).__name__}: {exc}", "ERROR")
            self._end("failed", "executor failed", f"{type(exc).__name__}: {exc}"[-2000:])
            if self.child is not None and self.child.poll() is None:
                self.child.terminate(self.cfg.kill_grace_s)
            return ExecutorError.exit_code

    def _setup_scripts(self, task: TaskInfo, cwd: Path) -> None:
        assert self._workdir is not None
        for label, text in (
            ("extra setup script (agent.extra_setup_script)", self.cfg.extra_setup_script),
            ("task setup script (container.setup_shell_script)", task.setup_shell_script),
        ):
            if not text.strip() or self._stopping():
                continue
            path = self._workdir / f"setup-{abs(hash(label))}.sh"
            path.write_text(text if text.endswith("\n") else text + "\n")
            self.note(f"running the {label}")
            argv, env = ["bash", str(path)], self.env
            if self.ctr is not None and "container" in label:  # the task's script: in the image
                argv, env = command_wrapper(self.ctr, cwd)(argv)
            code, tail = run_streamed(
                argv,
                cwd=cwd,
                env=env,
                on_lines=self._task_lines,
                echo=self.echo,
                should_stop=self._stopping,
                grace_s=self.cfg.kill_grace_s,
            )
            if code != 0 and not self._stopping():
                raise EnvironmentSetupError(
                    f"the {label} failed with exit code {code}: " + " | ".join(tail[-5:])
                )

    def _environment(self, task: TaskInfo, cwd: Path, repo_root: Path | None) -> Path:
        assert self._workdir is not None
        folders = [] if repo_root is None else list(dict.fromkeys([cwd, repo_root]))
        chosen = requirements_mod.choose(
            task.script.requirements_pip,
            folders,
            manager=self.cfg.package_manager,
            log=self.note,
        )
        reqs, source = list(chosen.lines), chosen.source
        if self.ctr is not None:  # the image's own Python; venvs cached per image
            python, version = "python3", self.ctr.python_version(self._workdir)
            image, manager = self.ctr.cache_key(), "pip"
        else:
            python, version = resolve_python(
                self.cfg.python_binary, task.script.binary, chosen.python, self.note
            )
            image = task.container_image
            manager = "pip" if self.cfg.package_manager == "pip" else "uv"
        spec = VenvSpec(
            python=python,
            python_version=version,
            requirements=tuple(reqs),
            manager=manager,
            image=image,
            system_site_packages=self.cfg.system_site_packages,
            extra_args=tuple(self.cfg.package_manager_extra_args),
        )
        self.note(f"environment: Python {version}, {len(reqs)} requirements from {source}")
        builder = VenvBuilder(
            cache_dir=self.cfg.venvs_cache_path,
            max_entries=self.cfg.venvs_cache_max_entries,
            free_space_threshold_gb=self.cfg.venvs_cache_free_space_threshold_gb,
            log=self.note,
            wrap=command_wrapper(self.ctr, self._workdir) if self.ctr is not None else None,
        )
        venv = builder.prepare(spec, self._workdir)
        if self.rank == 0:
            original = task.script.requirements_pip
            if original is None:
                original = "\n".join(reqs)
            try:
                self.client.send(
                    "tasks.set_requirements",
                    {
                        "task": self.task_id,
                        "requirements": {"pip": venv.frozen, "org_pip": original},
                    },
                )
            except Exception as exc:
                self.note(f"could not record the installed packages: {exc}", "WARNING")
        return venv.python

    def _execute(self, task: TaskInfo, python: Path, cwd: Path, code_dir: Path) -> int:
        try:
            argv = entry_argv(str(python), task.script)
        except ValueError as exc:
            raise ExecutorError(str(exc)) from exc
        if args_on_argv(task.properties, self.cfg.args_to_cli):
            argv += args_to_argv(task.args)
        assert self._workdir is not None
        env = child_env(
            self.cfg,
            self.env,
            task.environment,
            self._workdir,
            python=python,
            code_dir=code_dir,
            task_id=self.task_id,
            worker=self.worker,
        )
        self._status(
            "started", "worker starting task execution", f"Changed by hpcagent {self.worker}"
        )
        shown = [os.path.basename(argv[0]) if argv[0] == str(python) else argv[0], *argv[1:]]
        self.note("running: " + shlex.join(shown))  # python -u train.py, quoted as a shell would
        if self.ctr is not None:
            self._prep = self.ctr.wrap(
                argv, cwd=cwd, task_env=inner_env(env, self.env, str(python.parent))
            )
            argv, env = self._prep.argv, self._prep.env
            self.note("container: " + self._prep.display)
        self.child = ChildProcess(argv, cwd=cwd, env=env, on_lines=self._task_lines, echo=self.echo)
        if self._signal_num:  # a signal arrived while the child was being started
            self.child.signal_group(self._signal_num)
        try:
            code = self._wait(self.child)
        finally:
            if self._monitor is not None:
                self._monitor.stop()
        return self._finish(code, "\n".join(list(self.child.tail)[-10:]))

    def _start_monitor(self, child: ChildProcess) -> None:  # after MONITOR_AFTER_S
        from hpcagent.executor.metrics import Monitor

        interval = self.cfg.metrics_interval_s
        self._monitor = Monitor(
            self.bg.send,
            self.bg.send_lines,
            task_id=self.task_id,
            worker=self.worker,
            interval=interval,
            log=self.note,
            root_pid=child.pid,
            extra_roots=self._container_roots,
            first_report_s=max(0.0, min(3.0, interval) - MONITOR_AFTER_S),
        ).start()

    def _wait(self, child: ChildProcess) -> int:
        monitor_at = time.monotonic() + MONITOR_AFTER_S
        monitor = not self.opts.disable_monitoring
        while True:
            code = child.wait(0.2)
            if monitor and code is None and time.monotonic() >= monitor_at:
                monitor = False
                self._start_monitor(child)
            if code is not None:
                child.reap_group()
                return code
            if self.abort is not None:
                self.note("stopping the task: SIGTERM, then SIGKILL after the grace period")
                return self._stop_child(child, signal.SIGTERM)
            if self._signal_num:
                return self._stop_child(child, self._signal_num)

    def _stop_child(self, child: ChildProcess, signum: int) -> int:
        code = child.terminate(self.cfg.kill_grace_s, signum)
        if self.ctr is not None and self._prep is not None:  # Docker: the daemon's child
            self.ctr.abort(self._prep)
        return code

    def _container_roots(self) -> list[int]:  # Docker: the task is not in the child's tree
        return [] if self.ctr is None or not self._prep else self.ctr.process_roots(self._prep)

    def _finish(self, code: int, tail: str) -> int:
        if self.abort is not None and not self.abort.write_status:
            self.note(f"task ended ({self.abort.reason}); status left as set elsewhere")
            return 0
        final = final_status(
            code, aborted=self.abort is not None, signal_name=self.signal_name, tail=tail
        )
        if final.action == "completed":
            self.note("Process completed successfully", "DEBUG")
        else:
            self.note(f"Process ended: {final.reason} (exit code {code})", "ERROR")
        if self.shipper is not None:
            # One delivery attempt first, so that the log is complete when the status changes.
            self.shipper.flush_once()
        self._end(final.action, final.reason, final.message)
        if self._signal_num:
            return 128 + self._signal_num
        if final.action != "failed":
            return 0
        return code if 0 < code < 256 else 1

    def _cleanup(self, delivered: bool) -> None:
        if self._workdir is None:
            return
        if not delivered:
            sys.stderr.write(
                f"hpcagent: some log lines could not be delivered; kept in "
                f"{self._workdir / 'log-spool'}\n"
            )
            for name in ("repo", "code", "venv", "clearml.conf"):
                path = self._workdir / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            return
        shutil.rmtree(self._workdir, ignore_errors=True)
