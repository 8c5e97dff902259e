"""The web UI of ``hpcagent server``: server-rendered pages (Jinja2, autoescaped) and a small
script, served on the API's port (see docs/ui.md).

:func:`ui_routes` gives the Starlette routes that ``ServerApp`` mounts in front of the API's
catch-all ``/{service}.{action}`` route. UI paths never contain a dot in their first segment, so
they cannot shadow an API endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from hpcagent.server.app import ServerApp


def ui_routes(app: ServerApp) -> list[BaseRoute]:
    """The UI's routes around ``app`` (its store, authenticator and REST handlers)."""
    from hpcagent.server.ui import actions, compare, data, ops, pages
    from hpcagent.server.ui.core import Ui

    ui = Ui(app)
    return [
        *pages.routes(ui),
        *actions.routes(ui),
        *data.routes(ui),
        *compare.routes(ui),
        *ops.routes(ui),
    ]
