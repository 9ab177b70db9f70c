"""Domain records of the allocation engine: fills, splits, allocations and their errors.

Amounts are integers in micro-units (see ``controller.money``); nothing here knows about gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Side(enum.Enum):
    """Direction of a fill."""

    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Fill:
    """A validated execution: price in micro-units per share, quantity in whole shares."""

    fill_id: str
    ticker: str
    price: int
    quantity: int
    side: Side = Side.BUY
    execute_time_ns: int | None = None

    @property
    def value(self) -> int:
        """Price times quantity, in micro-units."""
        return self.price * self.quantity


@dataclass(frozen=True, slots=True)
class Split:
    """An account split: account -> micro-percent (> 0 weights sum to 100 % within tolerance)."""

    split_id: str
    percents: dict[str, int] = field(hash=False)
    effective_time_ns: int | None = None

    @property
    def total(self) -> int:
        """Sum of the micro-percents; each account's weight is its percent over this sum."""
        return sum(self.percents.values())


@dataclass(frozen=True, slots=True)
class Restrictions:
    """The restricted list: per account, the tickers it may not buy (accounts with none are
    left out). Replaces the previous list entirely."""

    restrictions_id: str
    accounts: dict[str, frozenset[str]] = field(hash=False)

    def restricted(self, ticker: str) -> frozenset[str]:
        """The accounts that may not buy ``ticker``."""
        return frozenset(a for a, tickers in self.accounts.items() if ticker in tickers)


NO_RESTRICTIONS = Restrictions("", {})


@dataclass(frozen=True, slots=True)
class Allocation:
    """Whole shares of one fill per account (non-zero only, sorted by account).

    ``split_id`` is empty and there are no accounts while the fill is pending (no split yet).
    """

    fill: Fill
    split_id: str
    accounts: tuple[str, ...] = ()
    quantities: tuple[int, ...] = ()
    lot_size: int = 1
    """The round lot a buy was allocated in (1: whole shares, no lot)."""

    @property
    def shares(self) -> tuple[tuple[str, int], ...]:
        """(account, shares) pairs, sorted by account."""
        return tuple(zip(self.accounts, self.quantities, strict=True))

    @property
    def pending(self) -> bool:
        """True while the fill waits for the first split."""
        return not self.split_id


class RejectReason(enum.Enum):
    """Why a request was refused; the services map these to gRPC codes and wire reasons."""

    INVALID_ARGUMENT = "invalid_argument"
    INSUFFICIENT_HOLDINGS = "insufficient_holdings"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    LIMIT_EXCEEDED = "limit_exceeded"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    STALE_REPORT = "stale_report"
    TOO_MANY_STREAMS = "too_many_streams"
    PERMISSION_DENIED = "permission_denied"
    RESTRICTED = "restricted"


class Rejected(Exception):
    """A fill or split that changes nothing, with the field and value that caused it."""

    def __init__(self, reason: RejectReason, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message
