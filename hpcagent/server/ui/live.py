"""Live pages: every signed-in page can update itself without a reload (static/live.js).

The protocol is one conditional GET of the page's own URL, at most once a second per open page:

* ``static/live.js`` asks for ``location.pathname + location.search`` with the request header
  ``X-Hpcagent-Live: TOKEN`` (``-`` the first time);
* :func:`answer` compares the token with the database's change counters
  (``Store.change_counts``: rows written by any worker process, and the part of them that is
  not events coming in): no document written since the token was
  issued, and the token younger than :data:`REFRESH_S`, is a ``204`` at once, without running
  the page (the pages render documents; console lines and points are read by their scripts).
  Otherwise the page is rendered as for a normal GET and hashed; the same HTML as the token's
  is again a ``204``, different HTML is a ``200`` with the page. Both carry the new token in
  the ``X-Hpcagent-Live`` reply header, whose first part (all rows written) tells live.js
  that something, events included, was written;
* live.js swaps the elements of the page marked ``data-live`` (each with an ``id``) for their
  new versions, keeps what the user did there (ticked boxes, typed values, the focused field),
  and fires the ``hpcagent:live`` event on ``document`` (scripts of a page redraw from it).

So a page needs no endpoint of its own: mark the parts that change with ``data-live`` and an
``id`` and it is live. An idle page costs one ``204`` a second; a change shows within a poll
(1 s) plus the page's render. Scripts that poll more data of their own (the console's tail)
register with live.js's ticker (``HpcagentLive.follow``) so that the page still makes at most
one request a second.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from hpcagent.server.ui.session import secure_headers

if TYPE_CHECKING:
    from hpcagent.server.ui.core import Ui

HEADER = "X-Hpcagent-Live"
#: A page is rendered again at least this often while it is open, even when nothing was
#: written (durations and "ago" texts move with the clock).
REFRESH_S = 15.0

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


def asked(request: Request) -> bool:
    """Whether ``request`` is live.js's poll rather than a browser's page load."""
    return HEADER.lower() in request.headers


def _parse(token: str) -> tuple[int, int, float, str] | None:
    """``(total changes, document changes, issued, page digest)`` of a token, None if bad."""
    parts = token.split(".")
    if len(token) > 100 or len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    return int(parts[0]), int(parts[1]), float(parts[2]), parts[3]


def _unchanged(token: str) -> Response:
    response = secure_headers(Response(status_code=204))
    response.headers[HEADER] = token
    return response


async def answer(ui: Ui, request: Request, identity: dict[str, Any], handler: Handler) -> Response:
    """live.js's poll of a page: ``204`` when it did not change since the request's token,
    else the page (``200``); either way the new token in the ``X-Hpcagent-Live`` header.
    A page that is not ``200`` (an error, a redirect) is answered as it is."""
    # A read like any other: in the database thread, which may be inside a transaction.
    changes, documents = await ui.app.in_db(ui.app.store.change_counts)
    now = time.time()
    old = _parse(request.headers.get(HEADER, ""))
    if old is not None and old[1] == documents and now - old[2] < REFRESH_S:
        return _unchanged(f"{changes}.{documents}.{int(old[2])}.{old[3]}")
    response = await handler(request, identity)
    if response.status_code != 200:
        return response
    digest = hashlib.blake2b(bytes(response.body), digest_size=12).hexdigest()
    token = f"{changes}.{documents}.{int(now)}.{digest}"
    if old is not None and old[3] == digest:
        return _unchanged(token)
    response.headers[HEADER] = token
    return response
