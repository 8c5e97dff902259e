"""``hpcagent execute`` without its argument parsing: settings → clients → :class:`Executor`.

The click command (hpcagent.commands.execute) and the job's fast path in hpcagent.cli (the
rendered ``<python> -m hpcagent execute --id TASK``, parsed without importing click) both call
:func:`execute_task`, so the two differ only in how the command line was read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hpcagent.api import ApiClient
from hpcagent.config import load_settings
from hpcagent.errors import SchedulerError
from hpcagent.executor.main import Executor
from hpcagent.executor.options import ExecuteOptions, ExecutorConfig
from hpcagent.executor.task_info import worker_id
from hpcagent.scheduler import registry


def execute_task(
    task_id: str,
    *,
    config_file: str | None = None,
    force: bool = False,
    clone: bool = False,
    log_file: Path | None = None,
    disable_monitoring: bool = False,
    container: str | None = None,
    docker: str | None = None,
) -> int:
    """Run task ``task_id`` here and return the exit status of ``hpcagent execute`` (see its
    help). Raises :class:`~hpcagent.errors.HpcAgentError` when it cannot start (configuration,
    credentials)."""
    settings = load_settings(config_file=config_file, cli_overrides={})
    cfg = ExecutorConfig.from_settings(settings)
    wid = worker_id(os.environ, cfg.worker_id, registry.job_identity(os.environ))
    client = ApiClient.from_settings(settings, worker=wid)
    # Background threads (logs, abort poll, metrics) fail fast so they can spool and retry;
    # they use the session token of the first client (one login per run, not two).
    bg_client = ApiClient.from_settings(
        settings, worker=wid, retries=1, timeout_s=15.0, token=client.session_token()
    )
    opts = ExecuteOptions(
        task_id=task_id,
        worker_id=wid,
        force=force,
        clone=clone,
        log_file=log_file,
        disable_monitoring=disable_monitoring,
        container=container,
        docker=docker,
        container_settings=settings.container,
    )
    executor = Executor(cfg, client, opts, bg_client=bg_client)
    try:
        code = executor.run()
    finally:
        client.close()
        bg_client.close()
    if executor.abort is not None and settings.slurm.cancel_job_on_abort:
        # The task is stopped and reported: end the job as cancelled, not completed.
        try:
            registry.cancel_own_job()
        except SchedulerError as exc:
            sys.stderr.write(f"hpcagent: could not cancel this job after the abort: {exc}\n")
            sys.stderr.flush()
    return code
