"""A recording PositionService for controller tests."""

from __future__ import annotations

import queue

import grpc

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc


class RecordingPositionService(position_service_pb2_grpc.PositionServiceServicer):
    """Accepts every report and queues it, so tests can wait for the next one."""

    def __init__(self) -> None:
        self.reports: queue.Queue[allocation_pb2.PositionReport] = queue.Queue()

    def ReportPositions(
        self, request: position_service_pb2.ReportPositionsRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.ReportPositionsResponse:
        self.reports.put(request.report)
        return position_service_pb2.ReportPositionsResponse(accepted=True)

    def GetLatestReport(
        self, request: position_service_pb2.GetLatestReportRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.GetLatestReportResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the recording fake keeps no latest report")

    def next_report(self, timeout: float = 10.0) -> allocation_pb2.PositionReport:
        """The next report received, waiting up to ``timeout`` seconds."""
        return self.reports.get(timeout=timeout)
