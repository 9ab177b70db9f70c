"""The ControllerService of a controller that may lead or follow: while it leads, every call goes
to the service of its current term; while it follows, every call is refused ``UNAVAILABLE`` with
a message naming the leader, so a client knows where to go (and retries there)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from allocation.v1 import controller_service_pb2, controller_service_pb2_grpc
from controller.service import ControllerService


class LeaderGate(controller_service_pb2_grpc.ControllerServiceServicer):
    """Forwards to the leading term's service; refuses while following."""

    def __init__(self) -> None:
        """Start as a follower that knows no leader."""
        self._lock = threading.Lock()
        self._service: ControllerService | None = None
        self._leader = ""

    def lead(self, service: ControllerService) -> None:
        """Serve every call with ``service`` from now on."""
        with self._lock:
            self._service = service

    def follow(self, leader: str) -> None:
        """Refuse every call from now on, naming ``leader`` (a description of who leads)."""
        with self._lock:
            self._service = None
            self._leader = leader

    def _serving(self, context: grpc.ServicerContext) -> ControllerService:
        with self._lock:
            service, leader = self._service, self._leader
        if service is None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"this controller is a standby and does not allocate; {leader}",
            )
        return service

    def SubmitFill(
        self, request: controller_service_pb2.SubmitFillRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SubmitFillResponse:
        """Forwarded to the leading term."""
        return self._serving(context).SubmitFill(request, context)

    def StreamFills(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamFillsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamFillsResponse]:
        """Forwarded to the leading term."""
        return self._serving(context).StreamFills(request_iterator, context)

    def SetAumSplit(
        self, request: controller_service_pb2.SetAumSplitRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SetAumSplitResponse:
        """Forwarded to the leading term."""
        return self._serving(context).SetAumSplit(request, context)

    def StreamAumSplits(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamAumSplitsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamAumSplitsResponse]:
        """Forwarded to the leading term."""
        return self._serving(context).StreamAumSplits(request_iterator, context)

    def SetRestrictions(
        self, request: controller_service_pb2.SetRestrictionsRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SetRestrictionsResponse:
        """Forwarded to the leading term."""
        return self._serving(context).SetRestrictions(request, context)

    def GetPositions(
        self, request: controller_service_pb2.GetPositionsRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.GetPositionsResponse:
        """Forwarded to the leading term."""
        return self._serving(context).GetPositions(request, context)

    def GetFillAllocation(
        self,
        request: controller_service_pb2.GetFillAllocationRequest,
        context: grpc.ServicerContext,
    ) -> controller_service_pb2.GetFillAllocationResponse:
        """Forwarded to the leading term."""
        return self._serving(context).GetFillAllocation(request, context)
