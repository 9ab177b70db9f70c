"""The position service's live web dashboard (aiohttp, on its own thread and event loop).

``GET /`` is the page; ``/api/latest`` pages through the latest report's accounts (filtered,
sorted: never the whole book at once); ``/api/history`` is the drift history in a time range;
``/api/events`` pushes one server-sent event per accepted report, and a client reconnecting
with ``Last-Event-ID`` first gets every report it missed. plotly.js is served from the plotly
wheel, so the page works with no internet. Reports reach the dashboard through ``publish``,
called by the gRPC service as it accepts each one; summaries are computed on the dashboard's
own worker thread, never on the gRPC thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import statistics
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from aiohttp import web

from allocation.v1 import allocation_pb2
from position.board import (
    MAX_PAGE,
    SORT_FIELDS,
    AccountRows,
    ReportSummary,
    account_rows,
    summarize,
)
from position.history import ReportHistory

log = logging.getLogger(__name__)

# Points of the drift chart kept (and rebuilt from the history on start).
KEEP_SUMMARIES = 2_000
REBUILT_FROM_HISTORY = 500
DEFAULT_INTERVAL_SECONDS = 10.0
HEARTBEAT_SECONDS = 15.0
_STATIC = resources.files("position") / "static"
# plotly.js as the plotly wheel ships it.
_PLOTLY_JS = resources.files("plotly") / "package_data" / "plotly.min.js"


class Dashboard:
    """Serves the page, the JSON API and the live stream; ``publish`` feeds it."""

    def __init__(self, history: ReportHistory | None = None) -> None:
        """Start empty, or from the newest reports ``history`` keeps (rebuilt on ``start``)."""
        self._history = history
        self._lock = threading.Lock()
        self._summaries: deque[ReportSummary] = deque(maxlen=KEEP_SUMMARIES)
        self._latest: allocation_pb2.PositionReport | None = None
        self._rows: AccountRows | None = None
        self._next_index = 1
        # One worker: reports are summarised in the order they were accepted.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="dashboard")
        self._loop = asyncio.new_event_loop()
        self._subscribers: set[asyncio.Queue[ReportSummary]] = set()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="dashboard", daemon=True
        )

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the port."""
        if self._history is not None:
            for stored in self._history.recent(REBUILT_FROM_HISTORY):
                self._add(stored.report)
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._listen(host, port), self._loop).result()

    async def _listen(self, host: str, port: int) -> int:
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/static/plotly.min.js", self._plotly),
                web.get("/static/{name}", self._static),
                web.get("/api/latest", self._api_latest),
                web.get("/api/history", self._api_history),
                web.get("/api/events", self._api_events),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        assert isinstance(server, asyncio.Server)
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Close every connection (open event streams too) and stop the loop."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
        self._worker.shutdown(wait=True)

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def publish(self, report: allocation_pb2.PositionReport) -> None:
        """A report was accepted: show it and push it to every open page (returns at once)."""
        self._worker.submit(self._publish, report)

    def _publish(self, report: allocation_pb2.PositionReport) -> None:
        summary = self._add(report)
        self._loop.call_soon_threadsafe(self._notify, summary)

    def _add(self, report: allocation_pb2.PositionReport) -> ReportSummary:
        with self._lock:
            index = self._next_index
            self._next_index += 1
        summary = summarize(report, index)
        rows = account_rows(report)
        with self._lock:
            self._summaries.append(summary)
            self._latest, self._rows = report, rows
        return summary

    def _notify(self, summary: ReportSummary) -> None:
        for queue in self._subscribers:
            queue.put_nowait(summary)

    def _interval(self) -> float:
        """The report interval as observed: the median gap of the newest reports."""
        with self._lock:
            times = [s.generate_ns for s in list(self._summaries)[-11:]]
        gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(times) if b > a]
        return statistics.median(gaps) if gaps else DEFAULT_INTERVAL_SECONDS

    async def _page(self, _: web.Request) -> web.Response:
        return web.Response(text=(_STATIC / "dashboard.html").read_text(), content_type="text/html")

    async def _plotly(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(Path(str(_PLOTLY_JS)), headers={"Cache-Control": "max-age=86400"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("dashboard.js", "dashboard.css"):
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        kind = "application/javascript" if name.endswith(".js") else "text/css"
        return web.Response(text=(_STATIC / name).read_text(), content_type=kind)

    async def _api_latest(self, request: web.Request) -> web.Response:
        """``?offset=&limit=&sort=&order=asc|desc&filter=``: one page of the latest report."""
        query = request.query
        offset = _int_parameter(query, "offset", 0, 0, None)
        limit = _int_parameter(query, "limit", 50, 1, MAX_PAGE)
        sort = query.get("sort", "account")
        if sort not in SORT_FIELDS:
            raise _bad_request(f"sort {sort!r} is not one of {', '.join(SORT_FIELDS)}")
        order = query.get("order", "asc")
        if order not in ("asc", "desc"):
            raise _bad_request(f"order {order!r} is not asc or desc")
        with self._lock:
            rows = self._rows
        if rows is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no report has been accepted yet"}),
                content_type="application/json",
            )
        # Sorting 100,000 rows takes a moment: off the event loop, so the stream keeps flowing.
        matched, page = await asyncio.get_running_loop().run_in_executor(
            None, rows.page, sort, order == "desc", query.get("filter", ""), offset, limit
        )
        body = {
            "report": rows.header,
            "interval_seconds": self._interval(),
            "matched": matched,
            "offset": offset,
            "accounts": page,
        }
        return web.json_response(body)

    async def _api_history(self, request: web.Request) -> web.Response:
        """``?start_ns=&end_ns=&accounts=a,b``: the drift history in ``[start, end)``, with the
        deviations of the named accounts (of every account if none are named)."""
        query = request.query
        start = _int_parameter(query, "start_ns", 0, 0, None)
        end = _int_parameter(query, "end_ns", 2**63 - 1, 0, None)
        accounts = [a for a in query.get("accounts", "").split(",") if a] or None
        with self._lock:
            chosen = [s for s in self._summaries if start <= s.generate_ns < end]
        return web.json_response(
            {
                "interval_seconds": self._interval(),
                "reports": [s.as_json(accounts) for s in chosen],
            }
        )

    async def _api_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``report`` with a summary, one per accepted report."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[ReportSummary] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            sent = _int_parameter(request.headers, "Last-Event-ID", 0, 0, None)
            with self._lock:
                missed = [s for s in self._summaries if s.index > sent]
            for summary in missed:
                await _send(response, summary)
                sent = summary.index
            while True:
                try:
                    summary = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if summary.index > sent:  # not already sent among the missed ones
                    await _send(response, summary)
                    sent = summary.index
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        finally:
            self._subscribers.discard(queue)


async def _send(response: web.StreamResponse, summary: ReportSummary) -> None:
    data = json.dumps(summary.as_json())
    await response.write(f"id: {summary.index}\nevent: report\ndata: {data}\n\n".encode())


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _int_parameter(
    values: Mapping[str, str], name: str, default: int, lowest: int, highest: int | None
) -> int:
    """An integer query parameter (or header), checked against its range."""
    text = values.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad_request(f"{name} {text!r} is not a whole number") from None
    if value < lowest or (highest is not None and value > highest):
        bound = f"{lowest}..{highest}" if highest is not None else f">= {lowest}"
        raise _bad_request(f"{name} {value} is out of range ({bound})")
    return value
