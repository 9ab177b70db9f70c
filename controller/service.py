"""``ControllerService`` on the wire: validate, hand to the sequencer, answer.

Unary calls fail with a canonical status, ``ErrorInfo`` and the detail of its kind (see
``controller.errors``); streams answer every message in order with in-band rejections and never
break for a bad fill. No response can exceed what a default client accepts (4 MiB): a message of
fills is admitted only if the acknowledgement it can need fits, else refused whole, once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import NoReturn

import grpc

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from controller.authorization import AuthPolicy, FillIdScope, peer_identity
from controller.book import ReceiverBound
from controller.domain import Fill, Rejected, RejectReason
from controller.errors import abort, refusals_abort, rejection_message
from controller.limits import MAX_FILLS_PER_MESSAGE, MAX_RESPONSE_BYTES
from controller.listings import Listings
from controller.metrics import FILLS, SPLITS
from controller.paging import decode_token, encode_token, fill_page, listing_expired, page_size
from controller.sequencer import FillOutcome, Sequencer, SequencerStopped, SplitOutcome
from controller.serving import CONTROLLER_SERVICE
from controller.validation import (
    FILL_ID_MAX,
    parse_fill,
    parse_restrictions,
    parse_split,
    require_fill_id,
)
from controller.wire import fill_result_bound, report_header, write_account, write_allocation

log = logging.getLogger(__name__)

# Messages of one stream validated and queued ahead of the one being answered.
STREAM_PIPELINE_DEPTH = 8
# Open streams served at once: each holds a server thread while it is open, idle or not.
DEFAULT_MAX_STREAMS = 32


def _unavailable(context: grpc.ServicerContext, stopped: SequencerStopped) -> NoReturn:
    """End the call UNAVAILABLE: the writer has stopped (journal failure or shutdown)."""
    abort(context, Rejected(RejectReason.UNAVAILABLE, "", str(stopped)), CONTROLLER_SERVICE)


@contextlib.contextmanager
def _writer_running(context: grpc.ServicerContext) -> Iterator[None]:
    """Answer UNAVAILABLE when the writer has stopped."""
    try:
        yield
    except SequencerStopped as stopped:
        _unavailable(context, stopped)


def _end_stream(context: grpc.ServicerContext, failure: BaseException) -> NoReturn:
    """End a stream whose next message could not be answered: UNAVAILABLE when the writer has
    stopped, INTERNAL (logged) for anything else. Never silently, so a resending client sends
    the unanswered messages again."""
    if isinstance(failure, SequencerStopped):
        _unavailable(context, failure)
    log.error("stream message failed unexpectedly", exc_info=failure)
    context.abort(
        grpc.StatusCode.INTERNAL,
        "internal error; this message and the ones after it were not applied",
    )
    raise AssertionError("abort returned")  # pragma: no cover


def admit_acknowledgement(
    items: Sequence[tuple[Fill | Rejected, ReceiverBound]], field: str = "fills"
) -> Rejected | None:
    """Refuse a message whose acknowledgement could exceed ``MAX_RESPONSE_BYTES``."""
    needed = sum(fill_result_bound(item, bound) for item, bound in items)
    if needed <= MAX_RESPONSE_BYTES:
        return None
    fitting = max(1, len(items) * MAX_RESPONSE_BYTES // needed)
    return Rejected(
        RejectReason.TOO_LARGE,
        field,
        f"{field}: the acknowledgement of these {len(items)} fills could take {needed:,} bytes,"
        f" over the {MAX_RESPONSE_BYTES:,}-byte response limit; send at most {fitting:,} fills"
        " per message at this book size",
    )


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
    # An id too long to be valid is echoed only in part: the acknowledgement stays bounded.
    target.fill_id = fill_id[:FILL_ID_MAX]
    if outcome.rejection is not None:
        target.rejection.CopyFrom(rejection_message(outcome.rejection))
        return
    assert outcome.stored is not None
    allocation = target.duplicate if outcome.duplicate else target.allocation
    write_allocation(allocation, outcome.stored.allocation, outcome.stored.sequence)


def _receipt(outcome: SplitOutcome) -> controller_service_pb2.SplitReceipt:
    return controller_service_pb2.SplitReceipt(split_id=outcome.split_id, sequence=outcome.sequence)


class ControllerService(controller_service_pb2_grpc.ControllerServiceServicer):
    """Adapts the sequencer (engine + journal) to the ``allocation.v1.ControllerService`` API."""

    def __init__(
        self,
        sequencer: Sequencer,
        tickers: Sequence[str],
        max_streams: int = DEFAULT_MAX_STREAMS,
        policy: AuthPolicy | None = None,
    ) -> None:
        """Serve ``sequencer``, accepting fills of ``tickers`` only and at most ``max_streams``
        open streams at once (each holds a server thread). With an authorization ``policy``,
        a venue's fill ids must lie in its scope (who may call which method is checked before
        this service sees a call, by ``AuthorizationInterceptor``)."""
        self._sequencer = sequencer
        self._policy = policy
        self._tickers = tuple(tickers)
        self._listings = Listings(sequencer.snapshot)
        self._max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)

    @contextlib.contextmanager
    def _stream_slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold one of the stream slots for the stream's life, or refuse it at once."""
        if not self._streams.acquire(blocking=False):
            abort(
                context,
                Rejected(
                    RejectReason.TOO_MANY_STREAMS,
                    "",
                    f"the controller serves at most {self._max_streams} streams at once"
                    " (--max-streams); retry later",
                ),
                CONTROLLER_SERVICE,
            )
        try:
            yield
        finally:
            self._streams.release()

    def _scope(self, context: grpc.ServicerContext) -> FillIdScope | None:
        """The fill ids the caller may use; None when unrestricted."""
        if self._policy is None:
            return None
        identity = peer_identity(context)
        return None if identity is None else self._policy.fill_id_scope(identity)

    def _parse(
        self, message: allocation_pb2.Fill, scope: FillIdScope | None, field: str
    ) -> Fill | Rejected:
        """The validated fill, or why it is refused."""
        try:
            fill = parse_fill(message, self._tickers, field=field)
        except Rejected as rejected:
            return rejected
        refused = None if scope is None else scope.check(fill, field)
        return fill if refused is None else refused

    def _parse_batch(
        self, fills: Sequence[allocation_pb2.Fill], scope: FillIdScope | None
    ) -> list[Fill | Rejected]:
        return [
            self._parse(message, scope, f"fills[{index}]") for index, message in enumerate(fills)
        ]

    def SubmitFill(
        self, request: controller_service_pb2.SubmitFillRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SubmitFillResponse:
        """Allocate one fill, or fail with a status naming the field and value."""
        item = self._parse(request.fill, self._scope(context), "fill")
        try:
            with _writer_running(context):
                outcome = self._sequencer.submit_fills(
                    [item], lambda items: admit_acknowledgement(items, "fill")
                )[0]
        except Rejected as refused:
            outcome = FillOutcome(rejection=refused)
        _count_fills([outcome])
        if outcome.rejection is not None:
            abort(context, outcome.rejection, CONTROLLER_SERVICE, "allocation.v1.Fill")
        assert outcome.stored is not None
        response = controller_service_pb2.SubmitFillResponse()
        allocation = response.duplicate if outcome.duplicate else response.allocation
        write_allocation(allocation, outcome.stored.allocation, outcome.stored.sequence)
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
        with self._stream_slot(context):
            yield from self._answer_fills(request_iterator, context, self._scope(context))

    def _answer_fills(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamFillsRequest],
        context: grpc.ServicerContext,
        scope: FillIdScope | None,
    ) -> Iterator[controller_service_pb2.StreamFillsResponse]:
        in_flight: queue.SimpleQueue[
            tuple[controller_service_pb2.StreamFillsRequest, Future[list[FillOutcome]]] | None
        ] = queue.SimpleQueue()
        room = threading.Semaphore(STREAM_PIPELINE_DEPTH)
        answering = threading.Event()
        answering.set()
        reader = threading.Thread(
            target=self._read_fills,
            args=(request_iterator, in_flight, room, answering, scope),
            name="stream-fills-reader",
            daemon=True,
        )
        reader.start()
        try:
            while (entry := in_flight.get()) is not None:
                request, future = entry
                response = controller_service_pb2.StreamFillsResponse()
                try:
                    outcomes = future.result()
                except Rejected as refused:
                    FILLS.labels("rejected", refused.reason.value).inc(len(request.fills))
                    response.rejection.CopyFrom(rejection_message(refused))
                except Exception as error:
                    _end_stream(context, error)
                else:
                    _count_fills(outcomes)
                    add = response.batch.results.add
                    for message, outcome in zip(request.fills, outcomes, strict=True):
                        _write_result(add(), message.fill_id, outcome)
                room.release()
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
        scope: FillIdScope | None,
    ) -> None:
        try:
            for request in request_iterator:
                room.acquire()
                if not answering.is_set():
                    break
                in_flight.put((request, self._queue_batch(request.fills, scope)))
        except grpc.RpcError:
            pass  # the client went away; the answering side ends the call
        finally:
            in_flight.put(None)

    def _queue_batch(
        self, fills: Sequence[allocation_pb2.Fill], scope: FillIdScope | None
    ) -> Future[list[FillOutcome]]:
        """Validate and queue one stream message; a message refused whole, or a stopped writer,
        gives a future that already holds the error."""
        future: Future[list[FillOutcome]] = Future()
        if len(fills) > MAX_FILLS_PER_MESSAGE:
            future.set_exception(
                Rejected(
                    RejectReason.TOO_LARGE,
                    "fills",
                    f"fills has {len(fills):,} entries; at most {MAX_FILLS_PER_MESSAGE:,}"
                    " per message",
                )
            )
            return future
        try:
            return self._sequencer.submit_fills_later(
                self._parse_batch(fills, scope), admit_acknowledgement
            )
        except Exception as error:  # SequencerStopped, or a fault the answering side reports
            future.set_exception(error)
            return future

    def SetAumSplit(
        self, request: controller_service_pb2.SetAumSplitRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SetAumSplitResponse:
        """Put a new split in force for every later fill."""
        with refusals_abort(context, CONTROLLER_SERVICE, "allocation.v1.AumSplit"):
            outcome = self._set_split(context, request.split)
        if outcome.duplicate:
            return controller_service_pb2.SetAumSplitResponse(duplicate=_receipt(outcome))
        return controller_service_pb2.SetAumSplitResponse(accepted=_receipt(outcome))

    def StreamAumSplits(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamAumSplitsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamAumSplitsResponse]:
        """One response per split, in order; bad splits are rejected in-band."""
        with self._stream_slot(context):
            yield from self._answer_splits(request_iterator, context)

    def _answer_splits(
        self,
        request_iterator: Iterator[controller_service_pb2.StreamAumSplitsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamAumSplitsResponse]:
        for request in request_iterator:
            try:
                outcome = self._set_split(context, request.split)
            except Rejected as rejected:
                yield controller_service_pb2.StreamAumSplitsResponse(
                    rejection=rejection_message(rejected)
                )
                continue
            if outcome.duplicate:
                yield controller_service_pb2.StreamAumSplitsResponse(duplicate=_receipt(outcome))
            else:
                yield controller_service_pb2.StreamAumSplitsResponse(accepted=_receipt(outcome))

    def _set_split(
        self, context: grpc.ServicerContext, message: allocation_pb2.AumSplit
    ) -> SplitOutcome:
        try:
            with _writer_running(context):
                outcome = self._sequencer.set_split(parse_split(message))
        except Rejected as rejected:
            SPLITS.labels("rejected", rejected.reason.value).inc()
            raise
        SPLITS.labels("duplicate" if outcome.duplicate else "accepted", "").inc()
        return outcome

    def SetRestrictions(
        self, request: controller_service_pb2.SetRestrictionsRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.SetRestrictionsResponse:
        """Put a new restricted list in force for every later fill."""
        with refusals_abort(context, CONTROLLER_SERVICE, "allocation.v1.Restrictions"):
            restrictions = parse_restrictions(request.restrictions, self._tickers)
            with _writer_running(context):
                outcome = self._sequencer.set_restrictions(restrictions)
        receipt = controller_service_pb2.RestrictionsReceipt(
            restrictions_id=outcome.restrictions_id, sequence=outcome.sequence
        )
        if outcome.duplicate:
            return controller_service_pb2.SetRestrictionsResponse(duplicate=receipt)
        return controller_service_pb2.SetRestrictionsResponse(accepted=receipt)

    def GetPositions(
        self, request: controller_service_pb2.GetPositionsRequest, context: grpc.ServicerContext
    ) -> controller_service_pb2.GetPositionsResponse:
        """One page of the current positions; every page of a listing reads one snapshot."""
        with refusals_abort(context, CONTROLLER_SERVICE):
            size = page_size(request.page_size)
            if request.page_token:
                key, start = decode_token(request.page_token)
                found = self._listings.find(key)
                if found is None or start > found.snapshot.account_count:
                    raise listing_expired()
                listing = found
            else:
                start = 0
                with _writer_running(context):
                    key, listing = self._listings.start(self._sequencer.counters)
        snapshot = listing.snapshot
        total = snapshot.account_count
        response = controller_service_pb2.GetPositionsResponse(total_size=total)
        response.report.CopyFrom(
            report_header(
                snapshot,
                listing.counters,
                self._sequencer.journal_id,
                listing.taken_ns,
            )
        )
        rows = snapshot.accounts_between(start, start + size)
        shown = fill_page(response.report.accounts, rows, write_account)
        if start + shown < total:
            response.next_page_token = encode_token(key, start + shown)
        return response

    def GetFillAllocation(
        self,
        request: controller_service_pb2.GetFillAllocationRequest,
        context: grpc.ServicerContext,
    ) -> controller_service_pb2.GetFillAllocationResponse:
        """One fill's allocation from the journal, or NOT_FOUND."""
        with refusals_abort(context, CONTROLLER_SERVICE, "allocation.v1.Fill"):
            require_fill_id(request.fill_id, "fill_id")
            with _writer_running(context):
                stored = self._sequencer.lookup(request.fill_id)
            if stored is None:
                raise Rejected(
                    RejectReason.NOT_FOUND,
                    "fill_id",
                    f"fill_id {request.fill_id!r} is not in the journal",
                )
        response = controller_service_pb2.GetFillAllocationResponse()
        write_allocation(response.allocation, stored.allocation, stored.sequence)
        return response
