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


def write_fill(target: allocation_pb2.Fill, fill: Fill) -> None:
    """Fill ``target`` with the accepted fill (price normalised, side explicit)."""
    target.fill_id = fill.fill_id
    target.ticker = fill.ticker
    target.price = format_micro(fill.price)
    target.quantity = fill.quantity
    target.side = allocation_pb2.SIDE_SELL if fill.side is Side.SELL else allocation_pb2.SIDE_BUY
    if fill.execute_time_ns is not None:
        target.execute_time.FromNanoseconds(fill.execute_time_ns)


def write_allocation(
    target: allocation_pb2.FillAllocation, allocation: Allocation, sequence: int
) -> None:
    """Fill ``target`` with a journaled allocation (or pending fill).

    Messages are filled in place: building sub-messages separately and passing them to a
    constructor copies each one, which doubles the cost of a large allocation.
    """
    target.fill_id = allocation.fill.fill_id
    target.status = (
        allocation_pb2.FILL_STATUS_PENDING
        if allocation.pending
        else allocation_pb2.FILL_STATUS_ALLOCATED
    )
    add = target.allocations.add
    for account, quantity in zip(allocation.accounts, allocation.quantities, strict=True):
        add(account=account, quantity=quantity)
    target.split_id = allocation.split_id
    target.sequence = sequence
    write_fill(target.fill, allocation.fill)


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
