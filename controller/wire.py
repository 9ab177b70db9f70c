"""Domain -> wire: allocations, rejections and position reports as protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from allocation.v1 import allocation_pb2
from controller.book import BookSnapshot
from controller.domain import Allocation, Fill, Rejected, RejectReason, Side
from controller.money import format_micro

REJECTION_REASONS = {
    RejectReason.INVALID_ARGUMENT: allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT,
    RejectReason.INSUFFICIENT_HOLDINGS: allocation_pb2.REJECTION_REASON_INSUFFICIENT_HOLDINGS,
    RejectReason.CONFLICTING_DUPLICATE: allocation_pb2.REJECTION_REASON_CONFLICTING_DUPLICATE,
    RejectReason.LIMIT_EXCEEDED: allocation_pb2.REJECTION_REASON_LIMIT_EXCEEDED,
}


def fill_message(fill: Fill) -> allocation_pb2.Fill:
    """The accepted fill in wire form (price normalised, side explicit)."""
    message = allocation_pb2.Fill(
        fill_id=fill.fill_id,
        ticker=fill.ticker,
        price=format_micro(fill.price),
        quantity=fill.quantity,
        side=allocation_pb2.SIDE_SELL if fill.side is Side.SELL else allocation_pb2.SIDE_BUY,
    )
    if fill.execute_time_ns is not None:
        message.execute_time.FromNanoseconds(fill.execute_time_ns)
    return message


def allocation_message(allocation: Allocation, sequence: int) -> allocation_pb2.FillAllocation:
    """A journaled allocation (or pending fill) in wire form."""
    return allocation_pb2.FillAllocation(
        fill_id=allocation.fill.fill_id,
        status=(
            allocation_pb2.FILL_STATUS_PENDING
            if allocation.pending
            else allocation_pb2.FILL_STATUS_ALLOCATED
        ),
        allocations=[
            allocation_pb2.AccountQuantity(account=account, quantity=quantity)
            for account, quantity in zip(allocation.accounts, allocation.quantities, strict=True)
        ],
        split_id=allocation.split_id,
        sequence=sequence,
        fill=fill_message(allocation.fill),
    )


def rejection_message(rejected: Rejected) -> allocation_pb2.Rejection:
    """An in-band rejection for a stream."""
    return allocation_pb2.Rejection(
        reason=REJECTION_REASONS[rejected.reason], message=rejected.message, field=rejected.field
    )


def report_message(
    snapshot: BookSnapshot, sequence: int, generated_ns: int
) -> allocation_pb2.PositionReport:
    """A full position report with every amount as an exact decimal string."""
    generate_time = Timestamp()
    generate_time.FromNanoseconds(generated_ns)
    return allocation_pb2.PositionReport(
        sequence=sequence,
        generate_time=generate_time,
        split_id=snapshot.split_id,
        fill_count=snapshot.fill_count,
        pending_fill_count=snapshot.pending_count,
        total_value=format_micro(snapshot.total_value),
        total_market_value=format_micro(snapshot.total_market_value),
        accounts=[
            allocation_pb2.AccountPositions(
                account=account.account,
                target_percent=format_micro(account.target_micro_percent),
                actual_percent=format_micro(account.actual_micro_percent),
                value=format_micro(account.value),
                market_value=format_micro(account.market_value),
                deviation=format_micro(account.deviation),
                positions=[
                    allocation_pb2.Position(
                        ticker=ticker,
                        quantity=quantity,
                        value=format_micro(value),
                        market_value=format_micro(market),
                    )
                    for ticker, quantity, value, market in account.positions
                ],
            )
            for account in snapshot.accounts
        ],
        tickers=[
            allocation_pb2.TickerSummary(
                ticker=ticker, quantity=quantity, last_price=format_micro(price)
            )
            for ticker, quantity, price in snapshot.tickers
        ],
    )
