"""ControllerService on a real server: round trips, streams, errors, duplicates, reports."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from allocation.v1 import allocation_pb2, controller_service_pb2
from benchmarks.system import free_port
from controller.domain import Fill, Rejected
from controller.reporter import Reporter
from controller.sequencer import Admission, FillOutcome, SequencerStopped
from controller.service import STREAM_PIPELINE_DEPTH
from tests.conftest import (
    FakePositionServer,
    RunningController,
    both_backends,
    current_positions,
    fill,
    split_request,
)

SPLIT = {"acct-a": "50", "acct-b": "30", "acct-c": "20"}


def submit(
    controller: RunningController, message: allocation_pb2.Fill
) -> controller_service_pb2.SubmitFillResponse:
    return controller.stub.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=message))


def test_unary_fill_is_allocated_in_whole_shares_by_split(controller: RunningController) -> None:
    split_id = controller.stub.SetAumSplit(split_request(SPLIT)).accepted.split_id
    response = submit(controller, fill("f-1", quantity=100))
    assert response.WhichOneof("outcome") == "allocation"
    allocation = response.allocation
    assert allocation.status == allocation_pb2.FILL_STATUS_ALLOCATED
    assert allocation.split_id == split_id
    assert {a.account: a.quantity for a in allocation.allocations} == {
        "acct-a": 50,
        "acct-b": 30,
        "acct-c": 20,
    }
    assert allocation.fill.price == "10.5"
    report = current_positions(controller.stub)
    assert report.fill_count == 1
    assert report.total_value == "1050"
    assert [(a.account, a.value, a.target_percent) for a in report.accounts] == [
        ("acct-a", "525", "50"),
        ("acct-b", "315", "30"),
        ("acct-c", "210", "20"),
    ]


def test_health_reports_serving(controller: RunningController) -> None:
    health = health_pb2_grpc.HealthStub(controller.channel)
    response = health.Check(
        health_pb2.HealthCheckRequest(service="allocation.v1.ControllerService")
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def stream(
    controller: RunningController, batches: list[list[allocation_pb2.Fill]]
) -> list[controller_service_pb2.FillResults]:
    """Send the batches on one stream; the per-fill results of each (none refused whole)."""
    requests = (controller_service_pb2.StreamFillsRequest(fills=b) for b in batches)
    responses = list(controller.stub.StreamFills(requests))
    assert all(r.WhichOneof("outcome") == "batch" for r in responses)
    return [r.batch for r in responses]


def test_stream_of_100_fill_batches_answers_in_request_order(controller: RunningController) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    batches = [[fill(f"b{b}-f{i}", quantity=10 + i) for i in range(100)] for b in range(5)]
    responses = stream(controller, batches)
    assert len(responses) == len(batches)
    for batch, response in zip(batches, responses, strict=True):
        assert [r.fill_id for r in response.results] == [f.fill_id for f in batch]
        for sent, result in zip(batch, response.results, strict=True):
            assert sum(a.quantity for a in result.allocation.allocations) == sent.quantity
    sequences = [r.allocation.sequence for resp in responses for r in resp.results]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 500


def test_bad_fill_in_a_stream_is_rejected_in_band_and_the_stream_continues(
    controller: RunningController,
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    before = current_positions(controller.stub)
    bad = fill("bad", price="ten")
    responses = stream(controller, [[fill("ok-1"), bad, fill("ok-2")], [fill("ok-3")]])
    first = responses[0].results
    assert first[0].WhichOneof("outcome") == "allocation"
    assert first[1].WhichOneof("outcome") == "rejection"
    assert first[1].rejection.reason == allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT
    assert first[1].rejection.field == "fills[1].price"
    assert "'ten'" in first[1].rejection.message
    assert first[2].WhichOneof("outcome") == "allocation"
    assert responses[1].results[0].WhichOneof("outcome") == "allocation"
    assert current_positions(controller.stub).fill_count == before.fill_count + 3


@both_backends
def test_concurrent_fill_streams_and_split_stream_share_one_order(
    controller: RunningController,
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    errors: queue.Queue[BaseException] = queue.Queue()
    results: dict[int, list[controller_service_pb2.FillResult]] = {}

    def fill_stream(n: int) -> None:
        try:
            batches = [
                [fill(f"s{n}-b{b}-f{i}", quantity=7 + i, ticker="MSFT") for i in range(50)]
                for b in range(8)
            ]
            results[n] = [r for resp in stream(controller, batches) for r in resp.results]
        except BaseException as error:
            errors.put(error)

    def split_stream() -> None:
        try:
            requests = (
                controller_service_pb2.StreamAumSplitsRequest(
                    split=allocation_pb2.AumSplit(
                        split_id=f"live-{k}",
                        percentages={"acct-a": str(20 + k), "acct-b": str(80 - k)},
                    )
                )
                for k in range(10)
            )
            answers = list(controller.stub.StreamAumSplits(requests))
            assert [a.accepted.split_id for a in answers] == [f"live-{k}" for k in range(10)]
        except BaseException as error:
            errors.put(error)

    threads = [threading.Thread(target=fill_stream, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=split_stream))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors.empty(), errors.get()
    all_results = [r for rs in results.values() for r in rs]
    assert len(all_results) == 4 * 8 * 50
    assert all(r.WhichOneof("outcome") == "allocation" for r in all_results)
    sequences = [r.allocation.sequence for r in all_results]
    assert len(set(sequences)) == len(sequences)
    report = current_positions(controller.stub)
    sent = sum(7 + i for i in range(50)) * 8 * 4
    assert {t.ticker: t.quantity for t in report.tickers} == {"MSFT": sent}


@both_backends
def test_resent_fill_returns_original_allocation_and_changes_nothing(
    controller: RunningController,
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    first = submit(controller, fill("dup-1", quantity=77))
    before = current_positions(controller.stub)
    again = submit(controller, fill("dup-1", quantity=77))
    assert again.WhichOneof("outcome") == "duplicate"
    assert again.duplicate == first.allocation
    assert current_positions(controller.stub) == before
    in_stream = stream(controller, [[fill("dup-1", quantity=77)]])[0].results[0]
    assert in_stream.WhichOneof("outcome") == "duplicate"
    assert in_stream.duplicate == first.allocation


@both_backends
def test_fills_before_the_first_split_are_pending_then_allocated(
    controller: RunningController,
) -> None:
    pending = [submit(controller, fill(f"early-{i}", quantity=10)).allocation for i in range(3)]
    assert all(a.status == allocation_pb2.FILL_STATUS_PENDING for a in pending)
    assert all(not a.allocations for a in pending)
    assert current_positions(controller.stub).pending_fill_count == 3
    controller.stub.SetAumSplit(split_request({"x": "60", "y": "40"}))
    for early in pending:
        looked_up = controller.stub.GetFillAllocation(
            controller_service_pb2.GetFillAllocationRequest(fill_id=early.fill_id)
        ).allocation
        assert looked_up.status == allocation_pb2.FILL_STATUS_ALLOCATED
        assert looked_up.sequence == early.sequence
        assert sum(a.quantity for a in looked_up.allocations) == 10
    report = current_positions(controller.stub)
    assert report.fill_count == 3
    assert report.pending_fill_count == 0
    assert {t.ticker: t.quantity for t in report.tickers} == {"AAPL": 30}


def _details(error: grpc.RpcError) -> dict[str, Message]:
    """The error's rich details by message name (ErrorInfo, BadRequest, ...)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: dict[str, Message] = {}
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ResourceInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                detail: Message = kind()
                packed.Unpack(detail)
                found[kind.DESCRIPTOR.name] = detail
    assert len(found) == len(status.details), "unexpected detail type"
    return found


def _error_info(error: grpc.RpcError) -> Any:  # google.rpc ships no type stubs
    """The ErrorInfo every unary error of the controller carries."""
    info = _details(error)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.domain == "allocation.v1.ControllerService"
    return info


BAD_FILLS: list[tuple[str, allocation_pb2.Fill, grpc.StatusCode, str, str]] = [
    (
        "side unset",
        fill("s0", side=allocation_pb2.SIDE_UNSPECIFIED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fill.side",
        "SIDE_UNSPECIFIED",
    ),
    ("no id", fill(""), grpc.StatusCode.INVALID_ARGUMENT, "fill.fill_id", "''"),
    ("bad id", fill("a b"), grpc.StatusCode.INVALID_ARGUMENT, "fill.fill_id", "'a b'"),
    ("ticker", fill("t", ticker="XYZ"), grpc.StatusCode.INVALID_ARGUMENT, "fill.ticker", "'XYZ'"),
    (
        "price text",
        fill("p1", price="abc"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fill.price",
        "'abc'",
    ),
    ("price zero", fill("p2", price="0"), grpc.StatusCode.INVALID_ARGUMENT, "fill.price", "'0'"),
    ("price sign", fill("p3", price="-1"), grpc.StatusCode.INVALID_ARGUMENT, "fill.price", "'-1'"),
    ("price exp", fill("p4", price="1e3"), grpc.StatusCode.INVALID_ARGUMENT, "fill.price", "'1e3'"),
    (
        "7 places",
        fill("p5", price="1.1234567"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fill.price",
        "1.1234567",
    ),
    (
        "too dear",
        fill("p6", price="1000000.01"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fill.price",
        "1000000.01",
    ),
    ("qty zero", fill("q1", quantity=0), grpc.StatusCode.INVALID_ARGUMENT, "fill.quantity", "0"),
    ("qty neg", fill("q2", quantity=-5), grpc.StatusCode.INVALID_ARGUMENT, "fill.quantity", "-5"),
    (
        "side",
        fill("s1", side=allocation_pb2.Side.ValueType(9)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fill.side",
        "9",
    ),
    (
        "oversell",
        fill("o1", quantity=1000, side=allocation_pb2.SIDE_SELL),
        grpc.StatusCode.FAILED_PRECONDITION,
        "fill.quantity",
        "1000",
    ),
    (
        "reused id",
        fill("known", quantity=5),
        grpc.StatusCode.ALREADY_EXISTS,
        "fill.fill_id",
        "'known'",
    ),
]


@pytest.mark.parametrize(
    ("case", "message", "code", "field", "value"), BAD_FILLS, ids=[c[0] for c in BAD_FILLS]
)
def test_bad_fill_fails_with_code_message_and_details_and_changes_nothing(
    controller: RunningController,
    case: str,
    message: allocation_pb2.Fill,
    code: grpc.StatusCode,
    field: str,
    value: str,
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    submit(controller, fill("known", quantity=100))
    before = current_positions(controller.stub)
    with pytest.raises(grpc.RpcError) as raised:
        submit(controller, message)
    error = raised.value
    assert error.code() == code
    assert field in str(error.details()) and value in str(error.details())
    details = _details(error)
    reason = {
        grpc.StatusCode.INVALID_ARGUMENT: "REJECTION_REASON_INVALID_ARGUMENT",
        grpc.StatusCode.FAILED_PRECONDITION: "REJECTION_REASON_INSUFFICIENT_HOLDINGS",
        grpc.StatusCode.ALREADY_EXISTS: "REJECTION_REASON_CONFLICTING_DUPLICATE",
    }[code]
    info = _error_info(error)
    assert info.reason == reason
    assert info.metadata["field"] == field
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        bad_request: Any = details["BadRequest"]
        assert bad_request.field_violations[0].field == field
    assert current_positions(controller.stub) == before
    if message.fill_id not in ("", "a b", "known"):
        with pytest.raises(grpc.RpcError) as lookup:
            controller.stub.GetFillAllocation(
                controller_service_pb2.GetFillAllocationRequest(fill_id=message.fill_id)
            )
        assert lookup.value.code() == grpc.StatusCode.NOT_FOUND


BAD_SPLITS: list[tuple[str, dict[str, str], str, str]] = [
    ("empty", {}, "split.percentages", "empty"),
    ("sum 99", {"a": "49", "b": "50"}, "split.percentages", "99.000000"),
    ("sum 100.001", {"a": "50.001", "b": "50"}, "split.percentages", "100.001000"),
    ("text", {"a": "fifty", "b": "50"}, "split.percentages[a]", "'fifty'"),
    ("negative", {"a": "-10", "b": "110"}, "split.percentages[a]", "'-10'"),
    ("over 100", {"a": "150", "b": "0"}, "split.percentages[a]", "'150'"),
    ("account", {"bad name": "100"}, "split.percentages[bad name]", "'bad name'"),
]


@pytest.mark.parametrize(
    ("case", "percents", "field", "value"), BAD_SPLITS, ids=[c[0] for c in BAD_SPLITS]
)
def test_bad_split_fails_invalid_argument_and_keeps_previous_split(
    controller: RunningController, case: str, percents: dict[str, str], field: str, value: str
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT, split_id="good"))
    before = current_positions(controller.stub)
    with pytest.raises(grpc.RpcError) as raised:
        controller.stub.SetAumSplit(split_request(percents))
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert value in str(error.details())
    assert _error_info(error).reason == "REJECTION_REASON_INVALID_ARGUMENT"
    detail = _details(error)["BadRequest"]
    assert isinstance(detail, error_details_pb2.BadRequest)
    assert detail.field_violations[0].field == field
    assert current_positions(controller.stub) == before
    assert current_positions(controller.stub).split_id == "good"


@both_backends
def test_split_id_reused_with_other_percentages_is_already_exists(
    controller: RunningController,
) -> None:
    first = controller.stub.SetAumSplit(split_request(SPLIT, split_id="s1"))
    assert first.WhichOneof("outcome") == "accepted"
    assert first.accepted.split_id == "s1"
    again = controller.stub.SetAumSplit(split_request(SPLIT, split_id="s1"))
    assert again.WhichOneof("outcome") == "duplicate"
    assert again.duplicate == first.accepted
    with pytest.raises(grpc.RpcError) as raised:
        controller.stub.SetAumSplit(split_request({"acct-a": "100"}, split_id="s1"))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _error_info(raised.value).reason == "REJECTION_REASON_CONFLICTING_DUPLICATE"


def test_split_stream_rejects_in_band_and_continues(controller: RunningController) -> None:
    requests = [
        controller_service_pb2.StreamAumSplitsRequest(split=allocation_pb2.AumSplit(percentages=p))
        for p in ({"a": "100"}, {"a": "90"}, {"b": "100"})
    ]
    answers = list(controller.stub.StreamAumSplits(iter(requests)))
    assert [a.WhichOneof("outcome") for a in answers] == ["accepted", "rejection", "accepted"]
    assert answers[0].accepted.split_id
    assert answers[1].rejection.reason == allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT
    assert answers[1].rejection.field == "split.percentages"
    assert answers[2].accepted.sequence > answers[0].accepted.sequence
    assert current_positions(controller.stub).split_id == answers[2].accepted.split_id


def test_unknown_fill_is_not_found(controller: RunningController) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        controller.stub.GetFillAllocation(
            controller_service_pb2.GetFillAllocationRequest(fill_id="never-sent")
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "never-sent" in str(raised.value.details())
    assert _error_info(raised.value).reason == "REJECTION_REASON_NOT_FOUND"


def test_metrics_count_fills_by_outcome(controller: RunningController) -> None:
    def count(outcome: str, reason: str = "") -> float:
        value = REGISTRY.get_sample_value(
            "allocation_fills_total", {"outcome": outcome, "reason": reason}
        )
        return value or 0.0

    controller.stub.SetAumSplit(split_request(SPLIT))
    accepted, duplicate, invalid = (
        count("accepted"),
        count("duplicate"),
        count("rejected", "invalid_argument"),
    )
    stream(controller, [[fill("m1"), fill("m1"), fill("m2", price="x")]])
    assert count("accepted") == accepted + 1
    assert count("duplicate") == duplicate + 1
    assert count("rejected", "invalid_argument") == invalid + 1


ReporterFactory = Callable[[str, float], Reporter]


def test_reports_reach_the_position_service(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: ReporterFactory,
) -> None:
    position_server.start()
    controller.stub.SetAumSplit(split_request(SPLIT))
    submit(controller, fill("r1", quantity=10))
    reporter_factory(f"127.0.0.1:{position_server.port}", 0.05)
    first = position_server.service.next_report()
    second = position_server.service.next_report()
    assert second.sequence == first.sequence + 1
    assert first.fill_count == 1
    assert {a.account for a in first.accounts} == set(SPLIT)


def test_reports_go_to_the_next_position_service_address_when_one_fails(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: ReporterFactory,
) -> None:
    position_server.start()
    reporter_factory(f"127.0.0.1:{free_port()},127.0.0.1:{position_server.port}", 0.05)
    report = position_server.service.next_report()
    assert report.journal_id == controller.sequencer.journal_id


def test_allocation_continues_without_position_service_and_reports_resume(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: ReporterFactory,
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    reporter_factory(f"127.0.0.1:{position_server.port}", 0.05)
    # The port is bound but not answering: reports fail while fills keep being allocated.
    for i in range(20):
        assert submit(controller, fill(f"down-{i}", quantity=5)).allocation.allocations
    position_server.start()
    # A report whose call began during the outage may arrive first (it waited for the service
    # within its deadline); the reports that follow catch up with every fill allocated.
    reports = [position_server.service.next_report()]
    while reports[-1].fill_count < 20:
        reports.append(position_server.service.next_report())
    assert reports[-1].fill_count == 20
    sequences = [r.sequence for r in reports]
    assert sequences == sorted(set(sequences))


def test_report_sequences_never_repeat(controller: RunningController) -> None:
    seen = Counter(controller.sequencer.next_report()[1] for _ in range(50))
    assert max(seen.values()) == 1


def test_a_stream_aborted_by_a_writer_failure_leaves_no_reader_behind(
    controller: RunningController, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader fills the pipeline and waits for room; the writer then fails. The call must
    end with UNAVAILABLE and the reader must not stay blocked."""
    controller.stub.SetAumSplit(split_request(SPLIT))
    pipeline_full = threading.Event()
    held: list[Future[list[FillOutcome]]] = []

    def failing_submit(
        items: list[Fill | Rejected], admit: Admission | None = None
    ) -> Future[list[FillOutcome]]:
        future: Future[list[FillOutcome]] = Future()
        held.append(future)
        if len(held) == STREAM_PIPELINE_DEPTH:
            pipeline_full.set()
        return future

    monkeypatch.setattr(controller.sequencer, "submit_fills_later", failing_submit)
    requests = (
        controller_service_pb2.StreamFillsRequest(fills=[fill(f"lost-{n}")])
        for n in range(STREAM_PIPELINE_DEPTH * 3)
    )
    call = controller.stub.StreamFills(requests)
    assert pipeline_full.wait(10)
    readers = [t for t in threading.enumerate() if t.name == "stream-fills-reader"]
    assert readers
    for future in held:
        future.set_exception(SequencerStopped("journal write failed: disk full"))
    with pytest.raises(grpc.RpcError) as raised:
        list(call)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    for reader in readers:
        reader.join(timeout=10)
        assert not reader.is_alive()
