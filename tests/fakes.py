"""A recording PositionService for controller tests."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from position.service import assemble


class RecordingPositionService(position_service_pb2_grpc.PositionServiceServicer):
    """Accepts every well-formed report and queues it, so tests can wait for the next one.
    ``refuse_with`` makes it refuse every report with that rejection instead."""

    def __init__(self) -> None:
        self.reports: queue.Queue[allocation_pb2.PositionReport] = queue.Queue()
        self.parts: queue.Queue[int] = queue.Queue()
        self.refuse_with: allocation_pb2.Rejection | None = None

    def ReportPositions(
        self,
        request_iterator: Iterator[position_service_pb2.ReportPositionsRequest],
        context: grpc.ServicerContext,
    ) -> position_service_pb2.ReportPositionsResponse:
        counted: list[position_service_pb2.ReportPositionsRequest] = []

        def parts() -> Iterator[position_service_pb2.ReportPositionsRequest]:
            for part in request_iterator:
                counted.append(part)
                yield part

        report = assemble(parts()).report
        self.parts.put(len(counted))
        if self.refuse_with is not None:
            return position_service_pb2.ReportPositionsResponse(rejection=self.refuse_with)
        self.reports.put(report)
        return position_service_pb2.ReportPositionsResponse(
            accepted=position_service_pb2.ReportReceipt(
                journal_id=report.journal_id, sequence=report.sequence
            )
        )

    def GetLatestReport(
        self, request: position_service_pb2.GetLatestReportRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.GetLatestReportResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the recording fake keeps no latest report")

    def ListReports(
        self, request: position_service_pb2.ListReportsRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.ListReportsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the recording fake keeps no history")

    def next_report(self, timeout: float = 10.0) -> allocation_pb2.PositionReport:
        """The next report received, waiting up to ``timeout`` seconds."""
        return self.reports.get(timeout=timeout)
