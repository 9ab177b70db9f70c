"""``PositionService`` on the wire: keep the newest report, print it, optionally log it as JSON."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
from google.protobuf import json_format
from rich.console import Console

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from position.render import report_table

log = logging.getLogger(__name__)


class PositionService(position_service_pb2_grpc.PositionServiceServicer):
    """Accepts reports newer than the last one; prints them and appends them to ``jsonl``."""

    def __init__(self, console: Console, max_rows: int, jsonl: Path | None = None) -> None:
        """Print to ``console`` at most ``max_rows`` accounts per report."""
        self._console = console
        self._max_rows = max_rows
        self._jsonl = jsonl
        self._lock = threading.Lock()
        self._latest: allocation_pb2.PositionReport | None = None
        if jsonl is not None:
            jsonl.parent.mkdir(parents=True, exist_ok=True)

    def ReportPositions(
        self, request: position_service_pb2.ReportPositionsRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.ReportPositionsResponse:
        """Accept, print and keep the report unless its sequence is not newer than the last."""
        report = request.report
        with self._lock:
            latest = self._latest
            if latest is not None and report.sequence <= latest.sequence:
                log.info(
                    "report ignored: not newer",
                    extra={"sequence": report.sequence, "latest": latest.sequence},
                )
                return position_service_pb2.ReportPositionsResponse(accepted=False)
            self._latest = report
            self._console.print(report_table(report, self._max_rows))
            if self._jsonl is not None:
                line = json_format.MessageToJson(report, indent=None, sort_keys=True)
                with self._jsonl.open("a") as out:
                    out.write(line + "\n")
        log.info(
            "report accepted",
            extra={
                "sequence": report.sequence,
                "fill_count": report.fill_count,
                "split_id": report.split_id,
            },
        )
        return position_service_pb2.ReportPositionsResponse(accepted=True)

    def GetLatestReport(
        self, request: position_service_pb2.GetLatestReportRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.GetLatestReportResponse:
        """The last accepted report, or NOT_FOUND before the first."""
        with self._lock:
            latest = self._latest
        if latest is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no report has been accepted yet")
        return position_service_pb2.GetLatestReportResponse(report=latest)
