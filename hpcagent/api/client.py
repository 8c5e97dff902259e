"""The ClearML REST client: one session, authentication, retries, the response envelope.

Contract (see ``reference/clearml-api.md`` §1):

* A call is ``{method} {host}[/v{version}]/{service}.{action}`` with a JSON body (GET bodies are
  allowed by the protocol; POST is the default here because every server reads it).
* The reply is the envelope ``{"meta": {...}, "data": {...}}``. :meth:`ApiClient.send` returns
  ``data`` (``{}`` when the server sent ``null``) or raises :class:`~hpcagent.errors.ApiError`
  (:class:`~hpcagent.errors.AuthError` for 401) built from ``meta``.
* ``auth.login`` uses HTTP Basic auth with the key pair and yields a JWT; every other call sends
  ``Authorization: Bearer <token>``. The token is renewed before it expires (its ``exp`` claim is
  read without verifying the signature) and once after a 401, after which the call is repeated.
* Connection errors, timeouts, HTTP 429 and 5xx are retried with jittered exponential backoff;
  any other 4xx fails at once. When the retry budget is spent the call raises
  :class:`~hpcagent.errors.ServerUnreachable` naming the host and the reason in a few words.
  The executor keeps the configured budget (``api.http.retries``); commands a person waits for
  use :data:`INTERACTIVE` (a wrong URL fails within :meth:`RetryPolicy.worst_case_s` seconds);
  ``hpcagent-slurm`` and ``hpcagent daemon`` call :meth:`ApiClient.wait_out_outages`: past the
  budget a call waits for the server as long as it takes (capped backoff, one log line when it
  goes and one when it is back, :class:`~hpcagent.outage.Outage`) until their stop event is set.
* A call of :data:`NOT_REPEATABLE` (a pop, an enqueue, a create) is repeated only when the
  request surely did not reach the server (no connection, HTTP 429); after a lost reply or a
  timeout it raises :class:`~hpcagent.errors.UnconfirmedCall` instead. A pop that carries a
  ``pop_id`` (sent only to a server that declares it, :mod:`hpcagent.api.compat`) is repeated:
  the server answers the repeat with the same entry.
* Missing credentials are a :class:`~hpcagent.errors.ConfigError`, found before any request.
* Secrets and the Authorization header are never logged.
"""

from __future__ import annotations

import base64
import logging
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from hpcagent import __version__
from hpcagent.api.compat import ServerCompat
from hpcagent.api.envelope import (
    error_envelope,
    parse_envelope,
    split_lines,
    token_claims,
    token_refresh_time,
)
from hpcagent.api.events import EventsService
from hpcagent.api.projects import ProjectsService
from hpcagent.api.queues import QueuesService
from hpcagent.api.tasks import TasksService
from hpcagent.api.transport import Reply, classify, open_transport
from hpcagent.api.workers import WorkersService
from hpcagent.errors import ApiError, ConfigError, ServerUnreachable, UnconfirmedCall
from hpcagent.outage import Outage

if TYPE_CHECKING:
    from hpcagent.config import Settings

log = logging.getLogger(__name__)

#: Largest json-lines request sent to ``events.*`` (the agent's packet size).
EVENTS_MAX_REQ_SIZE = 1024 * 1024
#: ClearML's default ``api.http.max_req_size``.
DEFAULT_MAX_REQ_SIZE = 15 * 1024 * 1024
JSON = "application/json"
JSON_LINES = "application/json-lines"

#: Calls that change the server each time they are made (a second pop takes a second entry, a
#: second enqueue or create adds a second one): never repeated once the request may have reached
#: the server. ``queues.get_next_task`` with a ``pop_id`` is repeatable (:func:`repeatable`).
NOT_REPEATABLE = frozenset(
    {
        "queues.get_next_task",
        "queues.add_task",
        "queues.move_task_forward",
        "queues.move_task_backward",
        "queues.create",
        "tasks.enqueue",
        "tasks.enqueue_many",
        "tasks.dequeue",
        "tasks.create",
        "tasks.clone",
        "projects.create",
        "models.create",
        "auth.create_credentials",
    }
)


def repeatable(endpoint: str, body: Mapping[str, Any]) -> bool:
    """May a call whose reply was lost be sent again? (A pop with a ``pop_id`` may.)"""
    if endpoint == "queues.get_next_task" and body.get("pop_id"):
        return True
    return endpoint not in NOT_REPEATABLE


class _Transient(Exception):
    """A failure worth retrying: no answer, or HTTP 429/5xx (``response`` is set then).
    ``sent`` is False when the request surely never reached the server (no connection was
    made, or HTTP 429: refused before it was handled)."""

    def __init__(self, reason: str, response: Reply | None = None, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response
        self.sent = sent
        self.read_timeout = False  # the server took the request and did not answer in time


@dataclass
class _Patience:
    """What :meth:`ApiClient.wait_out_outages` set: wait until ``stop``, log via ``outage``."""

    stop: threading.Event
    outage: Outage


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries an unanswered call: ``retries`` more attempts after the first, each
    connect limited to ``connect_timeout_s``, waits of at most ``backoff_s * 2**n`` (jittered)
    capped at ``backoff_max_s``."""

    retries: int
    backoff_s: float
    backoff_max_s: float
    connect_timeout_s: float
    #: The read timeout; a reply that does not come within it is not waited for again (a
    #: server that took the request and is stuck, paused or overloaded). None: the configured
    #: ``api.http.timeout_sec``, retried like any failure.
    read_timeout_s: float | None = None

    def worst_case_s(self) -> float:
        """Longest a call takes (name resolution aside) when the server never accepts a
        connection (every attempt's connect timeout plus the longest wait before each retry),
        or when it accepts and never answers (one connect and one read timeout)."""
        waits = sum(
            min(self.backoff_max_s, self.backoff_s * 2.0**n) for n in range(max(0, self.retries))
        )
        refused = (self.retries + 1) * self.connect_timeout_s + waits
        silent = self.connect_timeout_s + (self.read_timeout_s or float("inf"))
        return max(refused, silent)


#: The policy of commands a person waits for (``hpcagent task …``, ``queue …``, ``workers …``):
#: a wrong, dead or paused server fails in under 5 s (3 attempts, or one unanswered request),
#: not after the patient budget of the long-running parts.
INTERACTIVE = RetryPolicy(
    retries=2, backoff_s=0.25, backoff_max_s=1.0, connect_timeout_s=1.0, read_timeout_s=4.0
)


def _is_transient_status(status: int) -> bool:
    return status == 429 or status >= 500


class ApiClient:
    """A ClearML REST client bound to one server and one key pair.

    ``timeout_s`` is the read timeout of every request (the connect timeout is
    ``connect_timeout_s``, by default the smaller of it and 10 s); ``retries`` is how many times
    a transient failure is retried (so a call makes at most ``retries + 1`` attempts); the wait
    between attempts grows exponentially from ``backoff_s`` with full jitter, capped at
    ``backoff_max_s``. ``worker`` goes into the ``X-ClearML-Worker`` header (hostname when
    empty). Thread-safe: the executor shares one client between its log, ping and abort-poll
    threads.
    """

    def __init__(
        self,
        host: str,
        access_key: str,
        secret_key: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        worker: str = "",
        max_req_size: int = DEFAULT_MAX_REQ_SIZE,
        method: str = "post",
        token: str | None = None,
        connect_timeout_s: float | None = None,
        retry_read_timeouts: bool = True,
    ) -> None:
        if not host:
            raise ConfigError("no API server configured (api.api_server / CLEARML_API_HOST)")
        self.host = host.rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key
        connect = min(10.0, timeout_s) if connect_timeout_s is None else connect_timeout_s
        self.timeout = (connect, timeout_s)
        self.retries = max(0, retries)
        self.retry_read_timeouts = retry_read_timeouts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.worker = worker or socket.gethostname()
        self.max_req_size = max_req_size
        self.method = method.lower()
        self._session = open_transport(
            self.host,
            {
                "X-ClearML-Worker": self.worker,
                "X-ClearML-Agent": f"hpcagent-{__version__}",
                "User-Agent": f"hpcagent/{__version__}",
            },
        )
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_refresh_at = 0.0
        if token:
            self._set_token(token)
        #: Number of HTTP requests sent (all attempts, logins included); handy for tests/benchmarks.
        self.requests_sent = 0
        # Thin helpers per service; ``send`` stays the primary API.
        self.tasks = TasksService(self)
        self.queues = QueuesService(self)
        self.workers = WorkersService(self)
        self.events = EventsService(self)
        self.projects = ProjectsService(self)
        #: What this server lacks, and the fallbacks (logged once): hpcagent.api.compat.
        self.compat = ServerCompat(self)
        self._patience: _Patience | None = None

    def wait_out_outages(self, stop: threading.Event) -> Outage:
        """Make every call wait for the server for as long as it takes (the long-running parts).

        A call first makes its quiet ``retries + 1`` attempts; then the server is logged
        unreachable (once, by the returned :class:`Outage`, shared by every thread of this
        client) and the call goes on trying every ``backoff_max_s`` at most, until it gets an
        answer ("back after N s" is logged) or ``stop`` is set (it then raises
        :class:`ServerUnreachable` at once). Non-repeatable calls stay as :data:`NOT_REPEATABLE`
        says: they wait out a server that accepts no connection, never a lost reply.
        """
        outage = Outage(f"API server {self.host}", log, self.backoff_max_s)
        self._patience = _Patience(stop, outage)
        return outage

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ApiClient:
        """Build a client from ``hpcagent.config.Settings`` (``api.*`` and the worker id)."""
        api = settings.api
        kwargs: dict[str, Any] = {
            "timeout_s": api.timeout_s,
            "retries": api.retries,
            "max_req_size": api.max_req_size,
            "worker": settings.agent.worker_id or settings.agent.worker_name,
        }
        kwargs.update(overrides)
        return cls(api.api_server, api.access_key, api.secret_key, **kwargs)

    @classmethod
    def interactive(cls, settings: Settings, policy: RetryPolicy = INTERACTIVE) -> ApiClient:
        """A client for a command a person waits for: ``policy`` in place of the configured
        retry budget, so that a wrong URL fails fast with one line."""
        overrides: dict[str, Any] = {}
        if policy.read_timeout_s is not None:
            overrides["timeout_s"] = min(policy.read_timeout_s, settings.api.timeout_s)
            overrides["retry_read_timeouts"] = False
        return cls.from_settings(
            settings,
            retries=min(policy.retries, settings.api.retries),
            backoff_s=policy.backoff_s,
            backoff_max_s=policy.backoff_max_s,
            connect_timeout_s=policy.connect_timeout_s,
            **overrides,
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the keys
        return f"ApiClient(host={self.host!r}, worker={self.worker!r})"

    # -- public calls ------------------------------------------------------------------------

    def send(
        self,
        endpoint: str,
        body: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Call ``endpoint`` (``"service.action"``) with a JSON ``body``; return envelope data."""
        doc = dict(body or {})
        payload = orjson.dumps(doc)
        return self._call(
            endpoint, payload, JSON, method or self.method, version, repeatable(endpoint, doc)
        )

    def send_lines(
        self,
        endpoint: str,
        items: Iterable[Mapping[str, Any]],
        *,
        max_bytes: int | None = None,
        repeat: bool = True,
    ) -> list[dict[str, Any]]:
        """POST ``items`` as application/json-lines, split into requests of at most ``max_bytes``.

        ``max_bytes`` defaults to 1 MiB for ``events.*`` and to ``max_req_size`` otherwise. An
        item that alone exceeds the limit is sent in a request of its own. Returns the ``data``
        of each request, in order (empty list when there were no items). ``repeat=False``: a
        request whose reply was lost raises :class:`UnconfirmedCall` instead of being sent
        again (for a caller that checks what the server stored before sending it again).
        """
        if max_bytes is None:
            max_bytes = EVENTS_MAX_REQ_SIZE if endpoint.startswith("events.") else self.max_req_size
        results: list[dict[str, Any]] = []
        for chunk in split_lines((orjson.dumps(dict(item)) for item in items), max_bytes):
            results.append(self._call(endpoint, chunk, JSON_LINES, "post", None, repeat))
        return results

    def session_token(self) -> str:
        """The session token, logging in first if needed (another client of the same key pair
        may start with it: ``ApiClient(..., token=...)``)."""
        self._bearer()
        return str(self._token)

    def token_claims(self) -> dict[str, Any]:
        """The claims of the session token (logging in first if needed), read without
        verifying the signature: ``api_version``, ``server_version``, ``server_build``..."""
        self._bearer()
        return token_claims(str(self._token)) or {}

    # -- internals ---------------------------------------------------------------------------

    def _url(self, endpoint: str, version: str | None) -> str:
        return f"{self.host}/v{version}/{endpoint}" if version else f"{self.host}/{endpoint}"

    def _call(
        self,
        endpoint: str,
        payload: bytes,
        content_type: str,
        method: str,
        version: str | None,
        repeat: bool,
    ) -> dict[str, Any]:
        url = self._url(endpoint, version)
        headers = {"Content-Type": content_type, "Authorization": self._bearer()}
        resp = self._request(method, url, payload, headers, repeat)
        if resp.status_code == 401:
            # The token may have been revoked or the server restarted with a new secret:
            # log in once more and repeat the call once (what both ClearML clients do; a 401
            # was refused before anything was done, so this holds for every call).
            log.debug("%s answered 401; logging in again", endpoint)
            headers["Authorization"] = self._bearer(force_login=True)
            resp = self._request(method, url, payload, headers, repeat)
        return parse_envelope(endpoint, resp)

    def _bearer(self, *, force_login: bool = False) -> str:
        with self._lock:
            if force_login or self._token is None or time.time() >= self._token_refresh_at:
                self._login()
            return f"Bearer {self._token}"

    def _login(self) -> None:
        """Get a new token with Basic auth; the caller holds ``self._lock``."""
        if not self._access_key or not self._secret_key:
            raise ConfigError(
                f"no credentials for {self.host}: set api.credentials in clearml.conf "
                "(hpcagent init) or CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY"
            )
        basic = base64.b64encode(f"{self._access_key}:{self._secret_key}".encode()).decode()
        headers = {"Content-Type": JSON, "Authorization": f"Basic {basic}"}
        resp = self._request("post", f"{self.host}/auth.login", b"{}", headers, True)
        data = parse_envelope("auth.login", resp)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ApiError("auth.login", 200, 0, "server sent no token: api_server misconfigured?")
        self._set_token(token)
        log.debug("logged in to %s", self.host)

    def _set_token(self, token: str) -> None:
        self._token = token
        self._token_refresh_at = token_refresh_time(token)

    def _request(
        self, method: str, url: str, payload: bytes, headers: Mapping[str, str], repeat: bool
    ) -> Reply:
        """Send one call, retrying transient failures; a non-transient answer is returned.

        ``repeat`` False (:data:`NOT_REPEATABLE`): only a failure that surely never reached the
        server is retried; a lost reply raises :class:`UnconfirmedCall`. The loop is written
        out (no tenacity): its import cost every short-lived ``hpcagent execute`` ~0.02 s.
        """
        name = url.rsplit("/", 1)[-1]
        patience = self._patience
        began = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                resp = self._attempt(method, url, payload, headers)
            except _Transient as exc:
                if not self._worth_retrying(exc, tries, repeat):
                    return self._unanswered(exc, name)
                if patience is None and tries >= self.retries + 1:
                    raise ServerUnreachable(
                        f"API server {self.host} unreachable after {tries} attempt"
                        f"{'s' if tries != 1 else ''} ({name}: {exc.reason})"
                    ) from exc
                if patience is not None and patience.stop.is_set():
                    raise ServerUnreachable(
                        f"API server {self.host} unreachable after {tries} attempts "
                        f"({name}: {exc.reason})"
                    ) from exc
                self._before_retry(exc, tries, name, began)
                wait = retry_wait(exc, tries, self.backoff_s, self.backoff_max_s)
                if patience is not None:
                    patience.stop.wait(wait)  # a stop during an outage is obeyed at once
                else:
                    time.sleep(wait)
                continue
            if patience is not None:
                patience.outage.up()
            return resp

    def _attempt(self, method: str, url: str, payload: bytes, headers: Mapping[str, str]) -> Reply:
        self.requests_sent += 1
        try:
            resp = self._session.request(
                method, url, data=payload, headers=headers, timeout=self.timeout
            )
        except Exception as exc:
            failure = classify(exc, self.timeout)
            if failure is None:
                raise
            reason, never_sent, read_timeout = failure
            transient = _Transient(reason, sent=not never_sent)
            transient.read_timeout = read_timeout
            raise transient from exc
        if _is_transient_status(resp.status_code):
            raise _Transient(f"HTTP {resp.status_code}", resp, sent=resp.status_code != 429)
        return resp

    def _worth_retrying(self, exc: _Transient, tries: int, repeat: bool) -> bool:
        if exc.read_timeout and not self.retry_read_timeouts:
            return False
        if not (repeat or not exc.sent):
            return False
        # An HTTP 500 with the server's error envelope is its answer about this request
        # (a stored record it cannot handle, say), not an outage: past the quiet budget it
        # is returned as the error it is, so one bad task cannot hold a daemon forever.
        return not (
            self._patience is not None
            and tries >= self.retries + 1
            and error_envelope(exc.response)
        )

    def _before_retry(self, exc: _Transient, tries: int, name: str, began: float) -> None:
        patience = self._patience
        if patience is not None:
            if tries >= self.retries + 1:
                patience.outage.down(exc.reason, began=began)
            log.debug("%s: %s; retrying (attempt %d)", name, exc, tries + 1)
            return
        # The first retries are routine (a server restart); only persistent trouble warns.
        level = logging.DEBUG if tries < 3 else logging.WARNING
        log.log(
            level, "%s: %s; retrying (attempt %d of %d)", name, exc, tries + 1, self.retries + 1
        )

    def _unanswered(self, exc: _Transient, name: str) -> Reply:
        """A failure not sent again: the server's own error answer, or what says why."""
        if exc.response is not None:
            if self._patience is not None:
                self._patience.outage.up()  # it answered, if with an error
            return exc.response  # the server's own error envelope (a 5xx) says what it is
        if exc.read_timeout and not self.retry_read_timeouts:
            raise ServerUnreachable(
                f"API server {self.host} took the request but did not answer "
                f"({name}: {exc.reason}); is it paused or overloaded?"
            ) from exc
        raise UnconfirmedCall(
            f"API server {self.host}: no answer to {name} ({exc.reason}); not sent again, "
            "as it may have reached the server"
        ) from exc


def retry_wait(exc: _Transient, tries: int, backoff_s: float, cap: float) -> float:
    """Seconds before attempt ``tries + 1``: as a 429/503 reply's ``Retry-After`` asks
    (seconds, capped at ``cap``), else a full-jitter exponential backoff
    (uniform in ``[0, min(cap, backoff_s * 2**(tries - 1))]``)."""
    header = exc.response.headers.get("Retry-After", "") if exc.response is not None else ""
    try:
        return max(0.0, min(float(header or "x"), cap))
    except ValueError:  # absent, or an HTTP date: use the jittered backoff
        return random.uniform(0.0, min(cap, backoff_s * 2.0 ** (tries - 1)))
