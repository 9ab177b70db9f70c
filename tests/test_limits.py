"""Responses a default client can always receive: whole-message refusals, bounded acks, pages."""

from __future__ import annotations

import re
from decimal import Decimal

import grpc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocation.v1 import allocation_pb2, controller_service_pb2
from controller.book import ReceiverBound
from controller.domain import Allocation, Fill, Rejected, RejectReason, Side
from controller.journal import StoredFill
from controller.limits import MAX_FILLS_PER_MESSAGE, MAX_RESPONSE_BYTES
from controller.paging import MAX_PAGE_BYTES
from controller.sequencer import FillOutcome
from controller.service import _write_result
from controller.wire import fill_result_bound
from tests.conftest import RunningController, current_positions, fill, split_request

# A default client refuses a response over this.
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024


def equal_split(accounts: int, name_length: int = 9) -> dict[str, str]:
    """``accounts`` accounts with names of ``name_length`` characters and equal percents."""
    units = [10_000 // accounts] * accounts
    for i in range(10_000 - sum(units)):
        units[i] += 1
    return {
        f"acct-{i:06d}".ljust(name_length, "x"): f"{u // 100}.{u % 100:02d}"
        for i, u in enumerate(units)
    }


def test_a_message_over_the_fill_limit_is_refused_whole_once_and_the_stream_continues(
    controller: RunningController,
) -> None:
    controller.stub.SetAumSplit(split_request({"a": "50", "b": "50"}))
    before = current_positions(controller.stub)
    oversized = [fill(f"big-{n}", quantity=1) for n in range(MAX_FILLS_PER_MESSAGE + 1)]
    requests = [
        controller_service_pb2.StreamFillsRequest(fills=oversized),
        controller_service_pb2.StreamFillsRequest(fills=[fill("after", quantity=10)]),
    ]
    responses = list(controller.stub.StreamFills(iter(requests)))
    assert [r.WhichOneof("outcome") for r in responses] == ["rejection", "batch"]
    refusal = responses[0].rejection
    assert refusal.reason == allocation_pb2.REJECTION_REASON_TOO_LARGE
    assert refusal.field == "fills"
    assert f"fills has {MAX_FILLS_PER_MESSAGE + 1:,} entries; at most 10,000" in refusal.message
    assert responses[0].ByteSize() < 1_000, "one rejection, not one per fill"
    assert responses[1].batch.results[0].WhichOneof("outcome") == "allocation"
    with pytest.raises(grpc.RpcError) as lookup:
        controller.stub.GetFillAllocation(
            controller_service_pb2.GetFillAllocationRequest(fill_id="big-0")
        )
    assert lookup.value.code() == grpc.StatusCode.NOT_FOUND
    after = current_positions(controller.stub)
    assert after.fill_count == before.fill_count + 1


def test_a_message_whose_acknowledgement_could_exceed_4_mib_is_refused_whole(
    controller: RunningController,
) -> None:
    """2,000 fills over 1,000 accounts would need a response of tens of MB: refused whole with
    the limit and a count that fits; that count then goes through and arrives."""
    controller.stub.SetAumSplit(split_request(equal_split(1_000)))
    batch = [fill(f"wide-{n}", quantity=1_000) for n in range(2_000)]
    first = next(
        iter(
            controller.stub.StreamFills(
                iter([controller_service_pb2.StreamFillsRequest(fills=batch)])
            )
        )
    )
    assert first.WhichOneof("outcome") == "rejection"
    refusal = first.rejection
    assert refusal.reason == allocation_pb2.REJECTION_REASON_TOO_LARGE
    assert f"over the {MAX_RESPONSE_BYTES:,}-byte response limit" in refusal.message
    match = re.search(r"send at most ([\d,]+) fills per message", refusal.message)
    assert match is not None
    fitting = int(match.group(1).replace(",", ""))
    assert 10 < fitting < 2_000
    assert current_positions(controller.stub).fill_count == 0
    request = controller_service_pb2.StreamFillsRequest(fills=batch[:fitting])
    response = next(iter(controller.stub.StreamFills(iter([request]))))
    assert response.WhichOneof("outcome") == "batch"
    assert len(response.batch.results) == fitting
    assert all(r.WhichOneof("outcome") == "allocation" for r in response.batch.results)
    assert response.ByteSize() <= DEFAULT_RECEIVE_LIMIT
    # A resend of the same message is answered (duplicates) within the limit too.
    again = next(iter(controller.stub.StreamFills(iter([request]))))
    assert all(r.WhichOneof("outcome") == "duplicate" for r in again.batch.results)


def test_small_fills_in_a_large_book_are_admitted_though_each_could_reach_every_account(
    controller: RunningController,
) -> None:
    """Were each of 300 fills to reach all 5,000 accounts, the acknowledgement would take
    tens of MB; with one share each it takes a few KB, so the message goes through."""
    controller.stub.SetAumSplit(split_request(equal_split(5_000)))
    batch = [fill(f"narrow-{n}", quantity=1) for n in range(300)]
    request = controller_service_pb2.StreamFillsRequest(fills=batch)
    response = next(iter(controller.stub.StreamFills(iter([request]))))
    assert response.WhichOneof("outcome") == "batch"
    assert [len(r.allocation.allocations) for r in response.batch.results] == [1] * 300


def test_a_split_whose_full_allocation_could_not_fit_a_response_is_refused(
    controller: RunningController,
) -> None:
    """250,000 short names fit in a request (each map entry costs about 15 bytes) but an
    allocation naming all of them would not fit in a response (about 18 bytes each)."""
    split = {f"{i:08d}": ("1" if i < 100 else "0") for i in range(250_000)}
    request = split_request(split)
    assert request.ByteSize() < DEFAULT_RECEIVE_LIMIT
    with pytest.raises(grpc.RpcError) as raised:
        controller.stub.SetAumSplit(request)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "250,000 accounts" in str(raised.value.details())
    assert "split.percentages" in str(raised.value.details())


names = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789._:-"), min_size=1, max_size=64
)


@settings(max_examples=200, deadline=None)
@given(
    fill_id=st.text(alphabet="ab0._:/-", min_size=1, max_size=128),
    ticker=st.text(alphabet="ABCDEFGHIJ", min_size=1, max_size=12),
    price=st.integers(1, 10**12),
    quantity=st.integers(1, 10**10),
    accounts=st.lists(
        st.tuples(names, st.integers(1, 10**10)), max_size=40, unique_by=lambda a: a[0]
    ),
    split_id=st.text(alphabet="ab0-", max_size=64),
    sequence=st.integers(1, 2**63 - 1),
    execute_time=st.none() | st.integers(-62_135_596_800 * 10**9, 253_402_300_799 * 10**9),
    duplicate=st.booleans(),
)
def test_the_acknowledgement_bound_is_never_exceeded(
    fill_id: str,
    ticker: str,
    price: int,
    quantity: int,
    accounts: list[tuple[str, int]],
    split_id: str,
    sequence: int,
    execute_time: int | None,
    duplicate: bool,
) -> None:
    made = Fill(fill_id, ticker, price, quantity, Side.SELL, execute_time)
    allocation = Allocation(
        made,
        split_id,
        tuple(a for a, _ in accounts),
        tuple(q for _, q in accounts),
    )
    result = controller_service_pb2.FillResult()
    _write_result(
        result, fill_id, FillOutcome(StoredFill(sequence, allocation), duplicate=duplicate)
    )
    bound = ReceiverBound(len(accounts), max((len(a) for a, _ in accounts), default=0))
    # The bound covers the result as an entry of the repeated field (tag and length too).
    assert result.ByteSize() + 6 <= fill_result_bound(made, bound)


@settings(max_examples=100, deadline=None)
@given(message=st.text(max_size=400), field=st.text(max_size=60), sent_id=st.text(max_size=400))
# Every character 4 bytes in UTF-8, the longest echoed id: what a character count misses.
@example(message="\U00010000" * 40, field="\U00010000" * 40, sent_id="\U00010000" * 400)
def test_the_bound_of_a_rejected_fill_covers_its_result(
    message: str, field: str, sent_id: str
) -> None:
    rejected = Rejected(RejectReason.INVALID_ARGUMENT, field, message)
    result = controller_service_pb2.FillResult()
    _write_result(result, sent_id, FillOutcome(rejection=rejected))
    assert result.ByteSize() + 6 <= fill_result_bound(rejected, ReceiverBound(0, 0))


def test_positions_page_through_a_large_book_from_one_snapshot(
    controller: RunningController,
) -> None:
    """6,000 accounts holding ten tickers each are more than one page can carry: pages stay
    under the limit, cover every account once, and all come from the first page's snapshot
    although fills keep arriving meanwhile."""
    controller.stub.SetAumSplit(split_request(equal_split(6_000, name_length=60)))
    tickers = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "JNJ")
    for n, ticker in enumerate(tickers):
        controller.stub.SubmitFill(
            controller_service_pb2.SubmitFillRequest(
                fill=fill(f"each-{n}", quantity=60_000, ticker=ticker)
            )
        )
    pages = []
    token = ""
    while True:
        page = controller.stub.GetPositions(
            controller_service_pb2.GetPositionsRequest(page_size=5_000, page_token=token)
        )
        pages.append(page)
        assert page.ByteSize() <= MAX_PAGE_BYTES + 4096
        # Fills keep coming while the listing is read.
        controller.stub.SubmitFill(
            controller_service_pb2.SubmitFillRequest(fill=fill(f"meanwhile-{len(pages)}"))
        )
        token = page.next_page_token
        if not token:
            break
    assert len(pages) >= 2
    accounts = [a for page in pages for a in page.report.accounts]
    assert [a.account for a in accounts] == sorted(
        split_request(equal_split(6_000, 60)).split.percentages
    )
    assert all(page.total_size == 6_000 for page in pages)
    assert {page.report.fill_count for page in pages} == {10}
    assert {page.report.generate_time.ToNanoseconds() for page in pages} == {
        pages[0].report.generate_time.ToNanoseconds()
    }
    assert sum(Decimal(a.value) for a in accounts) == Decimal(pages[0].report.total_value)
    fresh = controller.stub.GetPositions(controller_service_pb2.GetPositionsRequest())
    assert fresh.report.fill_count == 10 + len(pages)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"page_size": -1}, "page_size"), ({"page_token": "bm9wZQ"}, "page_token")],
)
def test_bad_position_pages_are_invalid_argument(
    controller: RunningController, request_fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        controller.stub.GetPositions(controller_service_pb2.GetPositionsRequest(**request_fields))  # type: ignore[arg-type]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(raised.value.details())
