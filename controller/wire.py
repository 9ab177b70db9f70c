"""Domain -> wire: allocations and position reports as protobuf messages, and their sizes."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from allocation.v1 import allocation_pb2
from controller.book import ReceiverBound
from controller.domain import Allocation, Fill, Rejected, Side
from controller.journal import Counters
from controller.money import format_micro
from controller.snapshot import AccountState, BookSnapshot
from controller.validation import FILL_ID_MAX

# Upper bound of a FillResult's bytes apart from its ids, ticker and receivers: framing,
# status, split id (<= 64), sequence, price (<= 14 digits), quantity, side and execute time.
_FILL_RESULT_FIXED = 192
# Bytes per receiving account beyond its name: framing and a quantity of up to 10^10.
_PER_RECEIVER = 10
# A rejection's bytes beyond its message, field and fill id.
_REJECTION_FIXED = 32

# An allocation's receivers are merged into the message as encoded bytes: one ``add()`` per
# receiver cost 52 us per 100 receivers, the cached encoding and one parse 13 us. Each entry is
# field ``allocations`` (length-delimited) holding ``account`` (length-delimited) and
# ``quantity`` (varint).
_LENGTH_DELIMITED, _VARINT = 2, 0
_SHARES_TAG = bytes(
    [allocation_pb2.FillAllocation.ALLOCATIONS_FIELD_NUMBER << 3 | _LENGTH_DELIMITED]
)
_ACCOUNT_TAG = bytes([allocation_pb2.AccountQuantity.ACCOUNT_FIELD_NUMBER << 3 | _LENGTH_DELIMITED])
_QUANTITY_TAG = bytes([allocation_pb2.AccountQuantity.QUANTITY_FIELD_NUMBER << 3 | _VARINT])
# The entry of each account seen up to its quantity, for quantities of one varint byte (< 128).
_entry_heads: dict[str, bytes] = {}
_QUANTITY_BYTES = [_QUANTITY_TAG + bytes([q]) for q in range(128)]


def fill_result_bound(item: Fill | Rejected, bound: ReceiverBound) -> int:
    """At most how many bytes the FillResult answering ``item`` can take on the wire, if its
    allocation names at most ``bound.accounts`` accounts of at most ``bound.longest_name``
    characters (ids and names are ASCII, validated)."""
    if isinstance(item, Rejected):
        # The echoed fill id is cut to FILL_ID_MAX characters (see
        # controller.service._write_result) but may be any text: up to 4 UTF-8 bytes each. The
        # message and field can echo such text too, so theirs are counted in bytes.
        return (
            _REJECTION_FIXED
            + len(item.message.encode())
            + len(item.field.encode())
            + 4 * FILL_ID_MAX
        )
    return (
        _FILL_RESULT_FIXED
        + 3 * len(item.fill_id)
        + len(item.ticker)
        + bound.accounts * (bound.longest_name + _PER_RECEIVER)
    )


# Fills repeat a few prices (see controller.validation): their text is looked up.
_price_text = functools.lru_cache(maxsize=4096)(format_micro)


def write_fill(target: allocation_pb2.Fill, fill: Fill) -> None:
    """Fill ``target`` with the accepted fill (price normalised, side explicit)."""
    target.fill_id = fill.fill_id
    target.ticker = fill.ticker
    target.price = _price_text(fill.price)
    target.quantity = fill.quantity
    target.side = allocation_pb2.SIDE_SELL if fill.side is Side.SELL else allocation_pb2.SIDE_BUY
    if fill.execute_time_ns is not None:
        target.execute_time.FromNanoseconds(fill.execute_time_ns)


def _varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _entry(account: str, quantity: int) -> bytes:
    """One receiver entry, encoded in full."""
    name = account.encode()
    body = _ACCOUNT_TAG + _varint(len(name)) + name + _QUANTITY_TAG + _varint(quantity)
    return _SHARES_TAG + _varint(len(body)) + body


def encode_shares(accounts: Sequence[str], quantities: Sequence[int]) -> bytes:
    """The ``allocations`` entries of a ``FillAllocation`` for these receivers, encoded: what
    ``MergeFromString`` appends as if each had been added (quantities are > 0)."""
    parts = [b""] * (2 * len(accounts))
    try:
        parts[::2] = map(_entry_heads.__getitem__, accounts)
        parts[1::2] = map(_QUANTITY_BYTES.__getitem__, quantities)
    except KeyError:
        for account in accounts:
            if account not in _entry_heads:
                # The entry of a quantity of 1 without its two quantity bytes.
                _entry_heads[account] = _entry(account, 1)[:-2]
        return encode_shares(accounts, quantities)
    except IndexError:
        return b"".join([_entry(a, q) for a, q in zip(accounts, quantities, strict=True)])
    return b"".join(parts)


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
    if allocation.accounts:
        target.MergeFromString(encode_shares(allocation.accounts, allocation.quantities))
    target.split_id = allocation.split_id
    target.sequence = sequence
    write_fill(target.fill, allocation.fill)


def report_header(
    snapshot: BookSnapshot, counters: Counters, journal_id: str, generated_ns: int
) -> allocation_pb2.PositionReport:
    """Every field of a position report but its accounts, amounts as exact decimal strings;
    ``counters`` are those taken with the snapshot."""
    generate_time = Timestamp()
    generate_time.FromNanoseconds(generated_ns)
    return allocation_pb2.PositionReport(
        sequence=counters.report_sequence,
        journal_id=journal_id,
        journal_sequence=counters.next_sequence - 1,
        generate_time=generate_time,
        split_id=snapshot.split_id,
        fill_count=snapshot.fill_count,
        pending_fill_count=snapshot.pending_count,
        total_value=format_micro(snapshot.total_value),
        total_market_value=format_micro(snapshot.total_market_value),
        tickers=[
            allocation_pb2.TickerSummary(
                ticker=ticker, quantity=quantity, last_price=format_micro(price)
            )
            for ticker, quantity, price in snapshot.tickers
        ],
    )


def write_account(target: allocation_pb2.AccountPositions, account: AccountState) -> None:
    """Fill ``target`` with one account of a report."""
    target.account = account.account
    target.target_percent = format_micro(account.target_micro_percent)
    target.actual_percent = format_micro(account.actual_micro_percent)
    target.value = format_micro(account.value)
    target.market_value = format_micro(account.market_value)
    target.deviation = format_micro(account.deviation)
    target.restricted_tickers.extend(account.restricted)
    add = target.positions.add
    for ticker, quantity, value, market in account.positions:
        add(
            ticker=ticker,
            quantity=quantity,
            value=format_micro(value),
            market_value=format_micro(market),
        )
