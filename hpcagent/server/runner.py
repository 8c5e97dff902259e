"""Start the embedded server: data dir, credentials, store, uvicorn.

uvicorn installs the SIGINT/SIGTERM handlers: on a signal it stops accepting connections,
lets in-flight requests finish (each commits before replying), then the app's lifespan closes
the database (WAL checkpoint). Nothing acknowledged to a client is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol, TextIO

import uvicorn

from hpcagent.errors import ServerError
from hpcagent.server.app import DEFAULT_MAX_BODY, ServerApp, create_app
from hpcagent.server.auth import (
    DEFAULT_TOKEN_LIFETIME_S,
    Authenticator,
    Credentials,
    clearml_conf_snippet,
    load_or_create_jwt_secret,
    own_credentials,
    prepare_keys,
)
from hpcagent.server.connections import (
    ConnectionLimits,
    connection_cap,
    guarded_protocol,
    raise_descriptor_limit,
)
from hpcagent.server.files import FilesLimits, FileStore
from hpcagent.server.keys import KeyFile, KeyFileError
from hpcagent.server.shared import SharedState
from hpcagent.server.store import Store
from hpcagent.server.supervisor import Supervisor
from hpcagent.server.watchdog import DEFAULT_INTERVAL_S, DEFAULT_THRESHOLD_S, NonResponsiveWatchdog

DEFAULT_DATA_DIR = Path("~/.hpcagent/server")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8008
#: The database file in the data dir.
DATABASE = "server.db"

log = logging.getLogger("hpcagent.server")


class Companion(Protocol):
    """A process that lives as long as the server (``hpcagent server --services-agent``'s
    daemon): started once the server accepts requests, stopped before it stops serving."""

    def start(self, api_url: str, creds: Credentials) -> None:
        """Start; ``api_url`` reaches this server from this machine."""

    def stop(self) -> None:
        """Stop and wait for the end (bounded); safe to call twice or before ``start``."""


@dataclass
class ServerOptions:
    """What ``hpcagent server`` accepts."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    access_key: str | None = None
    secret_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    log_level: str = "info"
    files_limits: FilesLimits = field(default_factory=FilesLimits)
    companions: Sequence[Companion] = ()
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S
    #: Server processes (``--workers``): 1 serves in this process; more are forked children
    #: sharing the listening socket and the database (:mod:`hpcagent.server.supervisor`).
    workers: int = 1
    #: Events older than this many days are deleted while the server runs (0: never).
    event_retention_days: float = 0.0
    #: ``in_progress`` tasks not updated for this many seconds are stopped (0: never), checked
    #: every ``non_responsive_check_s`` (:mod:`hpcagent.server.watchdog`).
    non_responsive_s: float = DEFAULT_THRESHOLD_S
    non_responsive_check_s: float = DEFAULT_INTERVAL_S


class ServerProcess(uvicorn.Server):
    """uvicorn's server, but a SIGTERM/SIGINT that led to a graceful shutdown ends the process
    with status 0 (uvicorn re-raises the signal after shutdown, which reads as a crash).

    The companions start once the server listens; the first signal stops them while the
    server still answers (a stopping daemon reports its tasks' ends to it), then the server
    shuts down; a second signal shuts the server down at once."""

    def __init__(self, config: uvicorn.Config, companions: Sequence[Companion], url: str,
                 creds: Credentials, *, ignore_interrupt: bool = False) -> None:  # fmt: skip
        super().__init__(config)
        self.companions = list(companions)
        self._companion_args = (url, creds)
        self._stopping = False
        #: A worker of ``--workers N`` leaves SIGINT (a terminal's Ctrl-C reaches the whole
        #: process group) to its supervisor, which stops the workers in order with SIGTERM.
        self.ignore_interrupt = ignore_interrupt

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            for companion in self.companions:
                companion.start(*self._companion_args)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.ignore_interrupt and sig == signal.SIGINT:
            return
        if self.companions and not self._stopping:
            self._stopping = True
            threading.Thread(
                target=self._stop_companions, args=(sig, frame), name="companions", daemon=True
            ).start()
            return
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    def _stop_companions(self, sig: int, frame: FrameType | None) -> None:
        stop_companions(self.companions)
        self.handle_exit(sig, frame)


def start_companions(companions: Sequence[Companion], url: str, creds: Credentials) -> None:
    for companion in companions:
        companion.start(url, creds)


def stop_companions(companions: Sequence[Companion]) -> None:
    """Stop each companion, logging (never raising) what goes wrong."""
    for companion in companions:
        try:
            companion.stop()
        except Exception:  # the server must still shut down
            log.exception("stopping %s failed", companion)


def prepare(options: ServerOptions) -> tuple[ServerApp, Credentials | None]:
    """Create the data dir (0700), store preset keys or make the first pair, open the store
    and the files. The second value is a pair generated now (to print once), else None."""
    generated = prepare_data_dir(options)
    return open_app(options), generated


def prepare_data_dir(options: ServerOptions) -> Credentials | None:
    """What happens once per start, before any worker opens the data dir: the folder (0700),
    the key pairs (preset ones stored, else a first one made: returned, to print once), the
    token secret, and the database schema (made or migrated)."""
    data_dir = options.data_dir.expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        _, generated = prepare_keys(data_dir, options.access_key, options.secret_key)
        load_or_create_jwt_secret(data_dir)
        Store(data_dir / DATABASE).close()
    except KeyFileError as exc:
        raise ServerError(f"cannot start the server: {exc}") from exc
    except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
        raise ServerError(f"cannot prepare the server data dir {data_dir}: {exc}") from exc
    return generated


def open_app(options: ServerOptions) -> ServerApp:
    """The application of one server process over a prepared data dir: its own connections
    to the database, the key file and token secret (read, never written), the files."""
    data_dir = options.data_dir.expanduser()
    try:
        keyfile = KeyFile(data_dir)
        secret = load_or_create_jwt_secret(data_dir)
        store = Store(data_dir / DATABASE)
        shared = SharedState(data_dir / DATABASE)
        files = FileStore(data_dir / "files", options.files_limits)
    except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
        raise ServerError(f"cannot open the server data dir {data_dir}: {exc}") from exc
    auth = Authenticator(keyfile, secret, token_lifetime_s=options.token_lifetime_s, shared=shared)
    return create_app(
        store,
        auth,
        files=files,
        max_body=options.max_body,
        event_retention_days=options.event_retention_days,
        watchdog=NonResponsiveWatchdog(
            store, options.non_responsive_s, options.non_responsive_check_s
        ),
    )


_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 (recognised, not bound)


def public_url(host: str, port: int) -> str:
    """The URL that clients (compute nodes included) should use for a server bound to ``host``.

    A wildcard bind (``0.0.0.0``, ``::``) is no address a client can use, so the machine's
    fully qualified name stands in for it; any other host is kept (IPv6 in brackets).
    """
    if host in _WILDCARD_HOSTS:
        name = socket.getfqdn()
        if not name or name.startswith("localhost"):
            name = socket.gethostname()
        host = name
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def announce_credentials(creds: Credentials, api_server: str, out: TextIO) -> None:
    """Print a freshly generated key pair once, with a matching clearml.conf snippet.

    The snippet names ``api_server`` as given; the note after it says that compute nodes
    must reach that URL, and where TLS and firewalls are covered.
    """
    out.write(
        "hpcagent server: generated new API credentials (shown only this once; they are kept\n"
        "in credentials.json in the data dir, mode 0600). Put this in your clearml.conf:\n\n"
        + clearml_conf_snippet(api_server, creds)
        + f"\nCompute nodes must reach {api_server}"
        f" (check from a node: curl {api_server}/debug.ping).\n"
        "For TLS put a reverse proxy in front and use its https:// URL instead; firewall and\n"
        "systemd notes: docs/deploy.md.\n\n"
    )
    out.flush()


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a busy port is a clear ServerError (exit 9)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says so (proto 0 would leave Nagle on: ~40 ms per keep-alive request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def local_url(host: str, port: int) -> str:
    """The URL by which a process on this machine reaches a server bound to ``host``."""
    if host in _WILDCARD_HOSTS:
        host = "::1" if ":" in host else "127.0.0.1"
    return public_url(host, port)


def _worker(options: ServerOptions, sock: socket.socket, cap: int) -> int:
    """One worker process of ``--workers N`` (forked by the supervisor): a whole server on the
    shared socket, leaving SIGINT and the companions to the supervisor; its exit status."""
    app = open_app(options)
    server = ServerProcess(
        uvicorn_config(app, options, cap), (), "", Credentials("", ""), ignore_interrupt=True
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1


def uvicorn_config(app: ServerApp, options: ServerOptions, cap: int) -> uvicorn.Config:
    """uvicorn's settings for one server process serving ``app`` (``cap``: its connection cap)."""
    return uvicorn.Config(
        app.asgi,
        http=guarded_protocol(options.limits, cap),
        log_level=options.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=30,
    )


def serve(options: ServerOptions, out: TextIO | None = None) -> None:
    """Run the server until SIGINT/SIGTERM: in this process, or with ``options.workers`` > 1
    as that many forked worker processes (:mod:`hpcagent.server.supervisor`)."""
    level = getattr(logging, options.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # ``hpcagent server`` configured logging before: obey
    sock = _bind(options.host, options.port)
    started = True
    try:
        generated = prepare_data_dir(options)
        url = public_url(options.host, options.port)
        if generated is not None:
            announce_credentials(generated, url, out or sys.stdout)
        cap = connection_cap(options.limits.max_connections, raise_descriptor_limit())
        local = local_url(options.host, options.port)
        log.info(
            "hpcagent server on %s, data in %s, %d worker process%s, at most %d connections%s",
            url,
            options.data_dir.expanduser(),
            options.workers,
            "es" if options.workers > 1 else "",
            cap,
            " each" if options.workers > 1 else "",
        )
        if options.workers > 1:
            keys = KeyFile(options.data_dir.expanduser())
            Supervisor(
                options.workers,
                sock,
                lambda: _worker(options, sock, cap),
                (
                    lambda: start_companions(options.companions, local, own_credentials(keys)),
                    lambda: stop_companions(options.companions),
                ),
                options.data_dir.expanduser() / DATABASE,
            ).run()
            return
        app = open_app(options)
        server = ServerProcess(
            uvicorn_config(app, options, cap), options.companions, local, app.auth.own_credentials()
        )
        server.run(sockets=[sock])
        started = server.started
    finally:
        stop_companions(options.companions)  # when the server ended without a signal
        sock.close()
    if not started:
        raise ServerError(f"the server did not start on {options.host}:{options.port}")
