"""``ControllerService`` on the wire: validate, hand to the sequencer, answer.

Unary calls fail with a canonical status and rich details (google.rpc.BadRequest for bad fields,
PreconditionFailure for oversells and limits, ResourceInfo for reused ids); streams answer every
message in order with in-band rejections and never break for a bad fill.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from controller.domain import Fill, Rejected, RejectReason
from controller.metrics import FILLS, SPLITS
from controller.sequencer import FillOutcome, Sequencer, SequencerStopped
from controller.validation import parse_fill, parse_split, require_fill_id
from controller.wire import rejection_message, report_message, write_allocation

MAX_FILLS_PER_MESSAGE = 10_000
# Messages of one stream validated and queued ahead of the one being answered.
STREAM_PIPELINE_DEPTH = 8

_CODES = {
    RejectReason.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    RejectReason.INSUFFICIENT_HOLDINGS: code_pb2.FAILED_PRECONDITION,
    RejectReason.LIMIT_EXCEEDED: code_pb2.FAILED_PRECONDITION,
    RejectReason.CONFLICTING_DUPLICATE: code_pb2.ALREADY_EXISTS,
}


def _details(rejected: Rejected, resource_type: str) -> any_pb2.Any:
    detail = any_pb2.Any()
    if rejected.reason is RejectReason.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=rejected.field, description=rejected.message
        )
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    elif rejected.reason is RejectReason.CONFLICTING_DUPLICATE:
        detail.Pack(
            error_details_pb2.ResourceInfo(
                resource_type=resource_type,
                resource_name=rejected.field,
                description=rejected.message,
            )
        )
    else:
        failure = error_details_pb2.PreconditionFailure.Violation(
            type=rejected.reason.name, subject=rejected.field, description=rejected.message
        )
        detail.Pack(error_details_pb2.PreconditionFailure(violations=[failure]))
    return detail


def _abort(context: grpc.ServicerContext, rejected: Rejected, resource_type: str) -> NoReturn:
    status = status_pb2.Status(code=_CODES[rejected.reason], message=rejected.message)
    status.details.append(_details(rejected, resource_type))
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


@contextlib.contextmanager
def _writer_running(context: grpc.ServicerContext) -> Iterator[None]:
    """Answer UNAVAILABLE when the writer has stopped (journal failure or shutdown)."""
    try:
        yield
    except SequencerStopped as stopped:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(stopped))


def _count_fills(outcomes: Sequence[FillOutcome]) -> None:
    tally: Counter[tuple[str, str]] = Counter()
    for outcome in outcomes:
        if outcome.rejection is not None:
            tally["rejected", outcome.rejection.reason.value] += 1
        else:
            tally["duplicate" if outcome.duplicate else "accepted", ""] += 1
    for (outcome_name, reason), count in tally.items():
        FILLS.labels(outcome_name, reason).inc(count)


def _write_result(
    target: controller_service_pb2.FillResult, fill_id: str, outcome: FillOutcome
) -> None:
    target.fill_id = fill_id
    if outcome.rejection is not None:
        target.rejection.CopyFrom(rejection_message(outcome.rejection))
        return
    assert outcome.stored is not None
    write_allocation(target.allocation, outcome.stored.allocation, outcome.stored.sequence)
    target.duplicate = outcome.duplicate


class ControllerService(controller_service_pb2_grpc.ControllerServiceServicer):
    """Adapts the sequencer (engine + journal) to the ``allocation.v1.ControllerService`` API."""

    def __init__(self, sequencer: Sequencer, tickers: Sequence[str]) -> None:
        """Serve ``sequencer``, accepting fills of ``tickers`` only."""
        self._sequencer = sequencer
        self._tickers = tuple(tickers)

    def _parse_batch(self, fills: Sequence[allocation_pb2.Fill]) -> list[Fill | Rejected]:
        if len(fills) > MAX_FILLS_PER_MESSAGE:
            too_many = Rejected(
                RejectReason.INVALID_ARGUMENT,
                "fills",
                f"fills has {len(fills)} entries; at most {MAX_FILLS_PER_MESSAGE} per message",
            )
            return [too_many] * len(fills)
        items: list[Fill | Rejected] = []
        for index, message in enumerate(fills):
            try:
                items.append(parse_fill(message, self._tickers, field=f"fills[{index}]"))
            except Rejected as rejected:
                items.append(rejected)
        return items

    def SubmitFill(
        self, request: controller_service_pb2.SubmitFillRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SubmitFillResponse:
        """Allocate one fill, or fail with a status naming the field and value."""
        try:
            item: Fill | Rejected = parse_fill(request.fill, self._tickers)
        except Rejected as rejected:
            item = rejected
        outcome = self._submit(context, [item])[0]
        if outcome.rejection is not None:
            _abort(context, outcome.rejection, "allocation.v1.Fill")
        assert outcome.stored is not None
        response = controller_service_pb2.SubmitFillResponse(duplicate=outcome.duplicate)
        write_allocation(response.allocation, outcome.stored.allocation, outcome.stored.sequence)
        return response

    def StreamFills(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamFillsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamFillsResponse]:
        """One response per request, in order; bad fills are rejected in-band.

        A reader thread validates and queues message k+1 while message k is being committed,
        so one stream fills a group commit instead of waiting for each commit in turn.
        """
        in_flight: queue.SimpleQueue[
            tuple[controller_service_pb2.StreamFillsRequest, Future[list[FillOutcome]]] | None
        ] = queue.SimpleQueue()
        room = threading.Semaphore(STREAM_PIPELINE_DEPTH)
        answering = threading.Event()
        answering.set()
        reader = threading.Thread(
            target=self._read_fills,
            args=(request_iterator, in_flight, room, answering),
            name="stream-fills-reader",
            daemon=True,
        )
        reader.start()
        try:
            while (entry := in_flight.get()) is not None:
                request, future = entry
                with _writer_running(context):
                    outcomes = future.result()
                room.release()
                _count_fills(outcomes)
                response = controller_service_pb2.StreamFillsResponse()
                add = response.results.add
                for message, outcome in zip(request.fills, outcomes, strict=True):
                    _write_result(add(), message.fill_id, outcome)
                yield response
        finally:
            # Cancelled or aborted: wake a reader waiting for room so that it can finish.
            answering.clear()
            room.release(STREAM_PIPELINE_DEPTH)

    def _read_fills(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamFillsRequest],
        in_flight: queue.SimpleQueue[
            tuple[controller_service_pb2.StreamFillsRequest, Future[list[FillOutcome]]] | None
        ],
        room: threading.Semaphore,
        answering: threading.Event,
    ) -> None:
        try:
            for request in request_iterator:
                room.acquire()
                if not answering.is_set():
                    break
                try:
                    future = self._sequencer.submit_fills_later(self._parse_batch(request.fills))
                except SequencerStopped as stopped:
                    future = Future()
                    future.set_exception(stopped)
                in_flight.put((request, future))
        except grpc.RpcError:
            pass  # the client went away; the answering side ends the call
        finally:
            in_flight.put(None)

    def _submit(
        self, context: grpc.ServicerContext, items: list[Fill | Rejected]
    ) -> list[FillOutcome]:
        with _writer_running(context):
            outcomes = self._sequencer.submit_fills(items)
        _count_fills(outcomes)
        return outcomes

    def SetAumSplit(
        self, request: controller_service_pb2.SetAumSplitRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SetAumSplitResponse:
        """Put a new split in force for every later fill."""
        try:
            split_id, duplicate = self._set_split(context, request.split)
        except Rejected as rejected:
            _abort(context, rejected, "allocation.v1.AumSplit")
        return controller_service_pb2.SetAumSplitResponse(split_id=split_id, duplicate=duplicate)

    def StreamAumSplits(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamAumSplitsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamAumSplitsResponse]:
        """One response per split, in order; bad splits are rejected in-band."""
        for request in request_iterator:
            try:
                split_id, duplicate = self._set_split(context, request.split)
            except Rejected as rejected:
                yield controller_service_pb2.StreamAumSplitsResponse(
                    rejection=rejection_message(rejected)
                )
                continue
            yield controller_service_pb2.StreamAumSplitsResponse(
                split_id=split_id, duplicate=duplicate
            )

    def _set_split(
        self, context: grpc.ServicerContext, message: allocation_pb2.AumSplit
    ) -> tuple[str, bool]:
        try:
            with _writer_running(context):
                outcome = self._sequencer.set_split(parse_split(message))
        except Rejected as rejected:
            SPLITS.labels("rejected", rejected.reason.value).inc()
            raise
        SPLITS.labels("duplicate" if outcome.duplicate else "accepted", "").inc()
        return outcome.split_id, outcome.duplicate

    def GetPositions(
        self, request: controller_service_pb2.GetPositionsRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.GetPositionsResponse:
        """The current positions (sequence = the last periodic report's)."""
        with _writer_running(context):
            snapshot = self._sequencer.snapshot()
        report = report_message(snapshot, self._sequencer.counters.report_sequence, time.time_ns())
        return controller_service_pb2.GetPositionsResponse(report=report)

    def GetFillAllocation(
        self,
        request: controller_service_pb2.GetFillAllocationRequest,
        context: grpc.ServicerContext,
    ) -> controller_service_pb2.GetFillAllocationResponse:
        """One fill's allocation from the journal, or NOT_FOUND."""
        try:
            require_fill_id(request.fill_id, "fill_id")
        except Rejected as rejected:
            _abort(context, rejected, "allocation.v1.Fill")
        with _writer_running(context):
            stored = self._sequencer.lookup(request.fill_id)
        if stored is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"fill_id {request.fill_id!r} is not in the journal"
            )
        response = controller_service_pb2.GetFillAllocationResponse()
        write_allocation(response.allocation, stored.allocation, stored.sequence)
        return response
