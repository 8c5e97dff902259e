"""The one exception tree of hpcagent.

Every error that hpcagent raises on purpose derives from :class:`HpcAgentError` and
carries an ``exit_code``. Library code never calls ``sys.exit``: ``hpcagent.cli`` turns
these exceptions into one clear line on stderr and the matching exit status.

Exit codes (stable, documented in README):

====  =========================================
1     generic hpcagent error (also a command that failed outside the areas below)
2     usage error (bad flags or arguments)
3     configuration error
4     API error (the server answered with an error)
5     connection error (the server could not be reached)
6     scheduler error (sbatch/squeue/sacct/scancel, qsub/qstat/qacct/qdel)
7     template error
8     executor error (repo, environment, container, run)
9     server error (embedded server could not start)
10    executor: repository clone/checkout/diff failed
11    executor: environment (venv, requirements, setup script) failed
====  =========================================
"""

from __future__ import annotations

from typing import Any, ClassVar


class HpcAgentError(Exception):
    """Base of every error hpcagent raises on purpose."""

    exit_code: ClassVar[int] = 1


class UsageError(HpcAgentError):
    """The user called a command with arguments that cannot work together."""

    exit_code = 2


class ConfigError(HpcAgentError):
    """A configuration file or value is malformed or missing."""

    exit_code = 3


class ApiError(HpcAgentError):
    """The server answered a call with an error envelope.

    Attributes mirror ClearML's response meta: ``result_code`` (the HTTP status),
    ``subcode`` (``result_subcode``), ``message`` (``result_msg``) and ``endpoint``.
    """

    exit_code = 4

    def __init__(
        self,
        endpoint: str,
        result_code: int,
        subcode: int = 0,
        message: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.result_code = result_code
        self.subcode = subcode
        self.message = message
        self.data = data or {}
        super().__init__(f"{endpoint}: {result_code}/{subcode} {message}".rstrip())


class AuthError(ApiError):
    """Credentials were rejected (HTTP 401). Missing credentials are a :class:`ConfigError`."""


class NotFoundError(ApiError):
    """A name or id the user gave (queue, project, task) is unknown to the server; the message
    names it without a status code (the server's reply, when there was one, is in the fields)."""

    def __init__(self, endpoint: str, result_code: int, subcode: int, message: str) -> None:
        super().__init__(endpoint, result_code, subcode, message)
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


class TaskEndedError(HpcAgentError):
    """A task that a command waited for (``task log --follow``) ended failed or stopped."""

    exit_code = 8


class ServerUnreachable(HpcAgentError):
    """The API server could not be reached, even after retries."""

    exit_code = 5


class UnconfirmedCall(ServerUnreachable):
    """A call that must not be made twice (a pop, an enqueue, a create) got no answer after
    the request may have reached the server: it was not sent again, so whether it took effect
    is unknown (the submitter's stranded-task sweep settles a pop that did)."""


class CommandError(HpcAgentError):
    """An external command could not be started, did not finish in time, or failed.

    ``argv`` is the command, ``stderr`` what it printed (so callers can report it verbatim) and
    ``returncode`` its exit status when it ran. ``hpcagent.process`` raises it (and
    :class:`CommandTimeout`); the scheduler, git and pip failures are subclasses.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: tuple[str, ...] | list[str] = (),
        stderr: str = "",
        returncode: int | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.stderr = stderr
        self.returncode = returncode
        super().__init__(message)


class CommandTimeout(CommandError):
    """A command outlived its timeout and was killed; retrying may help."""


class SchedulerError(CommandError):
    """A scheduler command failed (sbatch/squeue/sacct/scancel, qsub/qstat/qacct/qdel)."""

    exit_code = 6


class SubmitError(SchedulerError):
    """The scheduler rejected a job (sbatch: bad partition, account, GRES, directive; qsub: unknown
    resource or queue, ...)."""


class TransientSchedulerError(SchedulerError):
    """The scheduler did not answer in time or was temporarily unavailable; retrying may help."""


class SubmitLimitError(SubmitError):
    """sbatch refused because a per-user/association job limit was reached; retry later."""


class TemplateError(HpcAgentError):
    """A template could not be rendered (missing value, unsafe value, syntax error)."""

    exit_code = 7

    def __init__(
        self,
        message: str,
        *,
        template: str = "",
        line: int | None = None,
        placeholder: str = "",
        column: int | None = None,
    ) -> None:
        self.template = template
        self.line = line
        self.column = column
        self.placeholder = placeholder
        where = template + (f":{line}" if line is not None else "")
        where += f":{column}" if line is not None and column is not None else ""
        super().__init__(f"{where}: {message}" if where else message)


class ImagePullError(TemplateError):
    """The task's image could not be pulled on the submitting node before submission
    (``agent.container.pull_on_submit``); the job script cannot be written without it."""


class ExecutorError(HpcAgentError):
    """Preparing or running a task on the compute node failed."""

    exit_code = 8


class TaskRecordError(ExecutorError):
    """A task's stored record cannot be run as it is (a field of the wrong type: ``script``
    a string, ``hyperparams.Args`` a list, ...); the message names the field."""


class RepositoryError(ExecutorError, CommandError):
    """Cloning, checking out or applying the diff of the task's repository failed (git)."""

    exit_code = 10


class EnvironmentSetupError(ExecutorError, CommandError):
    """Creating the task's Python environment failed (venv, pip/uv, setup script)."""

    exit_code = 11


class ContainerError(ExecutorError):
    """A container runtime is missing, an image could not be pulled, or the container failed."""


class ServerError(HpcAgentError):
    """The embedded server could not start or serve."""

    exit_code = 9
