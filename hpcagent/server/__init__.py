"""Embedded ClearML-compatible server (``hpcagent server``): Starlette + uvicorn + SQLite.

Public entry points: :func:`serve` / :class:`ServerOptions` (run it), :func:`create_app`
(build the ASGI app around a :class:`Store` and an :class:`Authenticator`).
"""

from __future__ import annotations

from hpcagent.server.app import ServerApp, create_app
from hpcagent.server.auth import Authenticator, Credentials
from hpcagent.server.runner import ServerOptions, serve
from hpcagent.server.store import Store

__all__ = [
    "Authenticator",
    "Credentials",
    "ServerApp",
    "ServerOptions",
    "Store",
    "create_app",
    "serve",
]
