"""Wire -> domain: every field of an incoming fill or split checked, with a message naming it.

Limits (documented in the README and the proto comments):
- fill_id: 1-128 characters from [A-Za-z0-9._:/-]; account names: 1-64 from [A-Za-z0-9._:-];
- price: plain decimal, > 0, at most 6 decimal places, at most 1,000,000;
- quantity: 1 to 10,000,000,000 whole shares;
- percent: plain decimal, 0 to 100, at most 6 decimal places; all sum to 100 within 0.0001.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from allocation.v1 import allocation_pb2
from controller.domain import Fill, Rejected, RejectReason, Restrictions, Side, Split
from controller.limits import MAX_RESPONSE_BYTES
from controller.money import MICRO, InvalidDecimal, parse_micro

FILL_ID_MAX = 128
FILL_ID = re.compile(rf"[A-Za-z0-9._:/-]{{1,{FILL_ID_MAX}}}")
ACCOUNT = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# A value echoed in an error message is cut to this many characters (a 1 MB id must not make a
# 1 MB error, which no client could receive).
ECHO_MAX = 40
# What a google.protobuf.Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)
SPLIT_ID = ACCOUNT
MAX_PRICE = 1_000_000 * MICRO
MAX_QUANTITY = 10_000_000_000
HUNDRED_PERCENT = 100 * MICRO
PERCENT_TOLERANCE = 100  # 0.0001 percent, in micro-percent
DEFAULT_TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "JNJ")

_SIDES = {
    allocation_pb2.SIDE_BUY: Side.BUY,
    allocation_pb2.SIDE_SELL: Side.SELL,
}


def _invalid(field: str, message: str) -> Rejected:
    return Rejected(RejectReason.INVALID_ARGUMENT, field, message)


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut to its first ``ECHO_MAX`` characters."""
    if len(value) <= ECHO_MAX:
        return repr(value)
    return f"{value[:ECHO_MAX]!r}... ({len(value):,} characters)"


def timestamp_ns(stamp: Timestamp, field: str) -> int:
    """Nanoseconds of a set timestamp; ``Rejected`` naming ``field`` unless it is a valid
    Timestamp."""
    if stamp.seconds not in TIMESTAMP_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise _invalid(
            field,
            f"{field} seconds={stamp.seconds} nanos={stamp.nanos} is not a valid timestamp"
            " (0001-01-01 to 9999-12-31, nanos 0 to 999999999)",
        )
    return stamp.ToNanoseconds()


def _side_name(side: int) -> str:
    try:
        return allocation_pb2.Side.Name(side)  # type: ignore[arg-type]
    except ValueError:
        return str(side)


def require_fill_id(fill_id: str, field: str) -> str:
    """Return ``fill_id`` if well-formed, else raise ``Rejected`` naming ``field``."""
    if not FILL_ID.fullmatch(fill_id):
        raise _invalid(
            field, f"{field} {shown(fill_id)} must be 1-128 characters from [A-Za-z0-9._:/-]"
        )
    return fill_id


# Prices repeat (an order is filled in many prints at a few prices): their parse is looked up.
_price_micro = functools.lru_cache(maxsize=4096)(parse_micro)


def parse_fill(message: allocation_pb2.Fill, tickers: Sequence[str], field: str = "fill") -> Fill:
    """Validate a wire fill and convert it; raises ``Rejected`` naming the first bad field."""
    # Each read of a message field makes a new Python object: every field is read once.
    fill_id, ticker, text, quantity = (
        message.fill_id,
        message.ticker,
        message.price,
        message.quantity,
    )
    require_fill_id(fill_id, f"{field}.fill_id")
    if ticker not in tickers:
        raise _invalid(
            f"{field}.ticker",
            f"{field}.ticker {shown(ticker)} is not in the universe {', '.join(tickers)}",
        )
    try:
        price = _price_micro(text)
    except InvalidDecimal:
        raise _invalid(
            f"{field}.price",
            f"{field}.price {shown(text)} must be a plain decimal such as '101.25'"
            " with at most 6 decimal places",
        ) from None
    if not 0 < price <= MAX_PRICE:
        raise _invalid(f"{field}.price", f"{field}.price {shown(text)} must be > 0 and <= 1000000")
    if not 0 < quantity <= MAX_QUANTITY:
        raise _invalid(
            f"{field}.quantity",
            f"{field}.quantity {quantity} must be between 1 and {MAX_QUANTITY}",
        )
    side = _SIDES.get(message.side)
    if side is None:
        raise _invalid(
            f"{field}.side",
            f"{field}.side {_side_name(message.side)} must be SIDE_BUY or SIDE_SELL",
        )
    return Fill(
        fill_id,
        ticker,
        price,
        quantity,
        side,
        (
            timestamp_ns(message.execute_time, f"{field}.execute_time")
            if message.HasField("execute_time")
            else None
        ),
    )


def parse_split(message: allocation_pb2.AumSplit, field: str = "split") -> Split:
    """Validate a wire split and convert it; an empty ``split_id`` stays empty (assigned later)."""
    if message.split_id and not SPLIT_ID.fullmatch(message.split_id):
        raise _invalid(
            f"{field}.split_id",
            f"{field}.split_id {shown(message.split_id)} must be 1-64 characters from"
            " [A-Za-z0-9._:-]",
        )
    if not message.percentages:
        raise _invalid(f"{field}.percentages", f"{field}.percentages is empty")
    percents: dict[str, int] = {}
    for account, text in sorted(message.percentages.items()):
        where = f"{field}.percentages[{account[:ECHO_MAX]}]"
        if not ACCOUNT.fullmatch(account):
            raise _invalid(
                where, f"account {shown(account)} must be 1-64 characters from [A-Za-z0-9._:-]"
            )
        try:
            percent = parse_micro(text)
        except InvalidDecimal:
            raise _invalid(
                where,
                f"{where} {shown(text)} must be a plain decimal percent such as '12.5'"
                " with at most 6 decimal places",
            ) from None
        if percent > HUNDRED_PERCENT:
            raise _invalid(where, f"{where} {shown(text)} must be between 0 and 100")
        percents[account] = percent
    # One fill can be allocated to every account of the split: that allocation must fit in a
    # response (each entry is the name plus at most 10 bytes of framing and quantity).
    allocation_bytes = sum(len(account) + 10 for account in percents) + 1024
    if allocation_bytes > MAX_RESPONSE_BYTES:
        raise Rejected(
            RejectReason.TOO_LARGE,
            f"{field}.percentages",
            f"{field}.percentages has {len(percents):,} accounts: an allocation to all of them"
            f" could take {allocation_bytes:,} bytes, over the {MAX_RESPONSE_BYTES:,}-byte"
            " response limit; use shorter account names or fewer accounts",
        )
    total = sum(percents.values())
    if abs(total - HUNDRED_PERCENT) > PERCENT_TOLERANCE:
        raise _invalid(
            f"{field}.percentages",
            f"{field}.percentages sum to {total / MICRO:.6f}, not 100 (tolerance 0.0001)",
        )
    return Split(
        split_id=message.split_id,
        percents=percents,
        effective_time_ns=(
            timestamp_ns(message.effective_time, f"{field}.effective_time")
            if message.HasField("effective_time")
            else None
        ),
    )


def parse_restrictions(
    message: allocation_pb2.Restrictions, tickers: Sequence[str], field: str = "restrictions"
) -> Restrictions:
    """Validate a wire restricted list; an empty ``restrictions_id`` stays empty (assigned
    later). Every ticker must be in the universe; accounts with no ticker are dropped."""
    if message.restrictions_id and not SPLIT_ID.fullmatch(message.restrictions_id):
        raise _invalid(
            f"{field}.restrictions_id",
            f"{field}.restrictions_id {shown(message.restrictions_id)} must be 1-64 characters"
            " from [A-Za-z0-9._:-]",
        )
    accounts: dict[str, frozenset[str]] = {}
    for account, listed in sorted(message.accounts.items()):
        where = f"{field}.accounts[{account[:ECHO_MAX]}]"
        if not ACCOUNT.fullmatch(account):
            raise _invalid(
                where, f"account {shown(account)} must be 1-64 characters from [A-Za-z0-9._:-]"
            )
        unknown = [t for t in listed.tickers if t not in tickers]
        if unknown:
            raise _invalid(
                f"{where}.tickers",
                f"{where}.tickers names {shown(unknown[0])}, not in the universe {list(tickers)}",
            )
        if listed.tickers:
            accounts[account] = frozenset(listed.tickers)
    return Restrictions(message.restrictions_id, accounts)
