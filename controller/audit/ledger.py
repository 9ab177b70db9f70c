"""The book rebuilt from the journal's own records, independently of the engine.

``Ledger`` applies journaled allocations as they are (it never allocates), so every figure it
holds (an account's net cost value, its holding of a ticker, the book's total) is what the
journal says, whatever the engine would do. ``replay`` walks a history and yields, for every
allocation, the ledger just before it is applied: what the audit commands check and explain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from controller.audit.history import (
    Event,
    FillEvent,
    JournalHistory,
    RestrictionsEvent,
    SplitEvent,
)
from controller.book import PositionRow
from controller.domain import NO_RESTRICTIONS, Allocation, Restrictions, Side, Split
from controller.policy import PER_TICKER


@dataclass(slots=True)
class Ledger:
    """Net cost values, holdings and the split in force, from journaled allocations only."""

    split: Split | None = None
    restrictions: Restrictions = NO_RESTRICTIONS
    total: int = 0
    """Sum of every account's net cost value (micro-units)."""
    values: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    holdings: defaultdict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    """Shares held, by ticker then account (accounts that hold none are dropped)."""
    ticker_values: defaultdict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    """Net cost value, by ticker then account."""
    ticker_totals: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Shares of each ticker held by all accounts."""
    last_prices: dict[str, int] = field(default_factory=dict)
    fill_count: int = 0
    pending: list[FillEvent] = field(default_factory=list)
    """Fills waiting for the first split, in the order they were sequenced."""
    sequence: int = 0
    """The last event applied."""
    recorded_ns: int | None = None
    """When the last event applied was journaled (None for rows older than schema 3)."""

    def apply(self, allocation: Allocation) -> None:
        """Book one journaled allocation."""
        fill = allocation.fill
        sign = 1 if fill.side is Side.BUY else -1
        held = self.holdings[fill.ticker]
        valued = self.ticker_values[fill.ticker]
        for account, quantity in allocation.shares:
            value = sign * quantity * fill.price
            self.values[account] += value
            held[account] = held.get(account, 0) + sign * quantity
            valued[account] = valued.get(account, 0) + value
            if held[account] == 0:
                del held[account]
        self.total += sign * fill.value
        self.ticker_totals[fill.ticker] += sign * fill.quantity
        self.last_prices[fill.ticker] = fill.price
        self.fill_count += 1

    def measure(self, policy: str, ticker: str, price: int) -> tuple[Mapping[str, int], int, int]:
        """What a fill of ``ticker`` at ``price`` is allocated against under ``policy``
        (``controller.policy``): each account's measure and the book's total before the fill,
        and what one share adds."""
        if policy == PER_TICKER:
            return self.holdings.get(ticker, {}), self.ticker_totals[ticker], 1
        return self.values, self.total, price

    def positions(self) -> list[PositionRow]:
        """Every (account, ticker) ever traded, sorted by account then ticker, with its shares
        and net cost value."""
        rows = [
            PositionRow(account, ticker, self.holdings[ticker].get(account, 0), value)
            for ticker, valued in self.ticker_values.items()
            for account, value in valued.items()
        ]
        return sorted(rows, key=lambda row: (row.account, row.ticker))


@dataclass(frozen=True, slots=True)
class Step:
    """One allocation about to be applied: where it happened and the ledger before it."""

    sequence: int
    """The event that allocated the fill (a later split for a fill that waited)."""
    event: FillEvent
    ledger: Ledger


def replay(
    history: JournalHistory, ledger: Ledger, until: int | None = None
) -> Iterator[Step | Event]:
    """Walk the history up to ``until`` into ``ledger`` (a new one): yields each event as it
    comes, and before every allocation a ``Step`` holding the ledger as it stood; the
    allocation is applied when the caller asks for the next item. Fills that waited are
    allocated, in the order they arrived, at the split that released them."""
    for event in history.events(until):
        yield event
        ledger.sequence = event.sequence
        ledger.recorded_ns = event.recorded_ns
        if isinstance(event, RestrictionsEvent):
            ledger.restrictions = event.restrictions
        elif isinstance(event, SplitEvent):
            ledger.split = event.split
            released, ledger.pending = ledger.pending, []
            for waiting in released:
                yield Step(event.sequence, waiting, ledger)
                ledger.apply(waiting.journaled)
        elif event.allocated_sequence == event.sequence:
            yield Step(event.sequence, event, ledger)
            ledger.apply(event.journaled)
        else:
            ledger.pending.append(event)


def ledger_at(history: JournalHistory, sequence: int) -> Ledger:
    """The ledger after every event up to ``sequence``."""
    ledger = Ledger()
    for _ in replay(history, ledger, sequence):
        pass
    return ledger
