"""JSON reads for the page scripts (console pages, scalars, plots, debug samples), the console
download and the static assets. Reads are GETs through :meth:`Ui.call`; nothing here changes
state, so they need a session but no CSRF token.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from hpcagent.server.fields import INT_LIMIT
from hpcagent.server.routes.event_reads import scalar_histogram
from hpcagent.server.ui.core import STATIC, Identity, Ui, bad_request
from hpcagent.server.ui.session import secure_headers

CONSOLE_PAGE = 1000  # log events per console page
MAX_BATCH = 10000  # the most events.get_task_log returns at once
SCALAR_SAMPLES = 2000  # points per series the charts draw (the server samples longer ones)
EVENT_TYPES = {"plot": "plot", "debug": "training_debug_image"}
STATIC_FILES = {
    "ui.js": "text/javascript",
    "live.js": "text/javascript",
    "compare.js": "text/javascript",
    "ops.js": "text/javascript",
    "ui.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the ``plotly`` package (no CDN)."""
    spec = importlib.util.find_spec("plotly")  # located, not imported (that takes a while)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed")
    return Path(spec.submodule_search_locations[0]) / "package_data" / "plotly.min.js"


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if not value.lstrip("-").isdigit() or len(value) > 19 or abs(int(value)) >= INT_LIMIT:
        raise bad_request(f"{name} must be an integer")
    return int(value)


def log_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Console events as ``{ts, level, msg}`` (text only; the page inserts it as text)."""
    return [
        {
            "ts": ev.get("timestamp"),
            "level": str(ev.get("level") or ""),
            "msg": str(ev.get("msg") or ""),
        }
        for ev in events
    ]


def event_items(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """What the page script draws of plot (``kind`` plot: the parsed figure, None when it is
    not JSON) or debug-sample events (the image URL)."""
    out = []
    for ev in events:
        item = {
            "metric": str(ev.get("metric") or ""),
            "variant": str(ev.get("variant") or ""),
            "iter": ev.get("iter"),
        }
        if kind == "plot":
            raw = ev.get("plot_str")
            try:
                item["figure"] = orjson.loads(raw) if isinstance(raw, str) else raw
            except orjson.JSONDecodeError:
                item["figure"] = None
        else:
            item["url"] = str(ev.get("url") or "")
        out.append(item)
    return out


def routes(ui: Ui) -> list[BaseRoute]:
    async def console(request: Request, identity: Identity) -> Response:
        """A page of the console, always oldest first: the newest ``size`` events (default),
        those before the ``before`` timestamp (older pages) or after ``after`` (the live tail).

        Events can share a millisecond, so a page boundary can fall inside one timestamp: the
        page script says how many events of that boundary timestamp it already shows
        (``skip``); the page asks for the boundary timestamp again and leaves those out, so no
        line is lost or shown twice."""
        task_id = request.path_params["task_id"]
        before = _int_param(request, "before")
        after = _int_param(request, "after")
        skip = max(0, min(_int_param(request, "skip") or 0, MAX_BATCH - CONSOLE_PAGE))
        size = max(1, min(_int_param(request, "size") or CONSOLE_PAGE, CONSOLE_PAGE))
        body: dict[str, Any] = {"task": task_id, "batch_size": size, "order": "asc"}
        if after is not None:
            body.update(navigate_earlier=False, from_timestamp=after - 1, batch_size=size + skip)
        elif before is not None:
            body.update(navigate_earlier=True, from_timestamp=before + 1, batch_size=size + skip)
        data = await ui.call(identity, "events.get_task_log", body)
        events = data["events"]
        if after is not None:
            events = events[skip:]
        elif before is not None:
            events = events[: max(0, len(events) - skip)]
        return ui.json({"lines": log_lines(events), "total": data["total"]})

    async def download(request: Request, identity: Identity) -> Response:
        """The whole console as a text file, streamed in pages of the events API."""
        task_id = request.path_params["task_id"]
        await ui.call(identity, "tasks.get_by_id", {"task": task_id, "only_fields": ["id"]})

        async def lines() -> AsyncIterator[bytes]:
            scroll = ""
            while True:
                body = {"task": task_id, "event_type": "log", "batch_size": 10000}
                if scroll:
                    body["scroll_id"] = scroll
                data = await ui.call(identity, "events.get_task_events", body)
                if not data["events"]:
                    return
                yield "".join(
                    str(ev.get("msg") or "").rstrip("\n") + "\n" for ev in data["events"]
                ).encode()
                scroll = str(data["scroll_id"])

        headers = {"Content-Disposition": f'attachment; filename="{task_id}.log"'}
        response = StreamingResponse(lines(), media_type="text/plain; charset=utf-8")
        response.headers.update(headers)
        return secure_headers(response)

    async def scalars(request: Request, identity: Identity) -> Response:
        """The task's scalar series sampled as ``events.scalar_metrics_iter_histogram`` does
        (the same function), each bucket with its min and max too (``y_min``/``y_max``,
        ``count``): the chart draws the average line in a min-max band, so a spike that the
        average of a bucket hides still shows."""
        task_id = request.path_params["task_id"]
        key = "timestamp" if request.query_params.get("x") == "time" else "iter"
        await ui.call(identity, "tasks.get_by_id", {"task": task_id, "only_fields": ["id"]})
        # Not an endpoint (the UI's min/max band), but a read all the same: the database thread.
        sample = partial(scalar_histogram, envelope=True)
        found = await ui.app.in_db(sample, ui.app.store, task_id, key, SCALAR_SAMPLES, None)
        return ui.json(found)

    async def events(request: Request, identity: Identity) -> Response:
        """Plots or debug samples, newest first, a page at a time (``scroll``)."""
        task_id = request.path_params["task_id"]
        kind = request.query_params.get("kind") or ""
        if kind not in EVENT_TYPES:
            raise bad_request("kind must be plot or debug")
        body: dict[str, Any] = {
            "task": task_id,
            "event_type": EVENT_TYPES[kind],
            "batch_size": 50,
            "order": "desc",
        }
        scroll = request.query_params.get("scroll") or ""
        if scroll.isdigit():
            body["scroll_id"] = scroll
        data = await ui.call(identity, "events.get_task_events", body)
        # Parsing 50 plots (a figure can be megabytes of JSON) is CPU: not on the loop.
        out = await run_in_threadpool(event_items, data["events"], kind)
        return ui.json({"events": out, "scroll": data["scroll_id"], "total": data["total"]})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            path = plotly_js()
            media = "text/javascript"
        elif name in STATIC_FILES:
            path, media = STATIC / name, STATIC_FILES[name]
        else:
            return secure_headers(Response("not found", status_code=404))
        return secure_headers(FileResponse(path, media_type=media), cache=True)

    return [
        Route("/data/tasks/{task_id:str}/console", ui.data(console), methods=["GET"]),
        Route("/data/tasks/{task_id:str}/scalars", ui.data(scalars), methods=["GET"]),
        Route("/data/tasks/{task_id:str}/events", ui.data(events), methods=["GET"]),
        Route("/tasks/{task_id:str}/console.txt", ui.page(download), methods=["GET"]),
        Route("/static/{name:str}", static, methods=["GET"]),
    ]
