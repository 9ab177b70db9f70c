"""A consistent copy of the book, cheap for the writer to take, read on any thread.

The writer thread copies the book's arrays (milliseconds at 100,000 accounts) and nothing more;
everything a report shows (which accounts are listed, targets, deviations, market values) is
derived from the copy later, on the thread that needs it, page by page. All amounts stay exact
integers: micro-units for money, micro-percent for percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

from controller.money import divide_half_even

Int64Array = npt.NDArray[np.int64]
# Percent in micro-percent: 100 % = 100_000_000.
_HUNDRED_PERCENT = 100_000_000


@dataclass(frozen=True, slots=True)
class AccountState:
    """One account in a snapshot; amounts in micro-units, percents in micro-percent."""

    account: str
    target_micro_percent: int
    actual_micro_percent: int
    value: int
    market_value: int
    deviation: int
    positions: tuple[tuple[str, int, int, int], ...]
    """(ticker, quantity, cost value, market value) for every ticker the account holds."""
    restricted: tuple[str, ...] = ()
    """Tickers the account may not buy, sorted."""


class BookSnapshot:
    """The book as of one moment: header figures, and copies of the per-account arrays.

    ``names`` is shared with the book, which replaces its list rather than changing it; every
    array is a private copy.
    """

    def __init__(
        self,
        *,
        split_id: str,
        fill_count: int,
        pending_count: int,
        total_value: int,
        weight_total: int,
        names: Sequence[str],
        weights: Int64Array,
        values: Int64Array,
        quantities: dict[str, Int64Array],
        ticker_values: dict[str, Int64Array],
        ticker_totals: dict[str, int],
        last_prices: dict[str, int],
        restricted: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Keep the copies; nothing is derived until asked for. ``restricted``: account ->
        the tickers it may not buy."""
        self._restricted = restricted or {}
        self.split_id = split_id
        self.fill_count = fill_count
        self.pending_count = pending_count
        self.total_value = total_value
        self._weight_total = weight_total
        self._names = names
        self._weights = weights
        self._values = values
        self._quantities = quantities
        self._ticker_values = ticker_values
        self._ticker_totals = ticker_totals
        self._last_prices = last_prices

    @cached_property
    def _listed(self) -> npt.NDArray[np.intp]:
        """Indices of the accounts a report lists: in the split in force, or holding anything."""
        listed = self._weights != 0
        for ticker, quantity in self._quantities.items():
            listed |= (quantity != 0) | (self._ticker_values[ticker] != 0)
        return np.flatnonzero(listed)

    @property
    def account_count(self) -> int:
        """How many accounts the report lists."""
        return len(self._listed)

    def accounts_between(self, start: int, stop: int) -> list[AccountState]:
        """Listed accounts ``start`` to ``stop`` (by name order), derived exactly."""
        indices = self._listed[start:stop]
        names = [self._names[i] for i in indices.tolist()]
        weights = self._weights[indices].tolist()
        values = self._values[indices].tolist()
        held = [
            (
                ticker,
                self._quantities[ticker][indices].tolist(),
                self._ticker_values[ticker][indices].tolist(),
                self._last_prices.get(ticker, 0),
            )
            for ticker in self._quantities
        ]
        total = self.total_value
        scale = self._weight_total or 1
        rows = []
        for row, (name, weight, value) in enumerate(zip(names, weights, values, strict=True)):
            positions = []
            market = 0
            for ticker, quantities, costs, price in held:
                quantity, cost = quantities[row], costs[row]
                if quantity == 0 and cost == 0:
                    continue
                ticker_market = quantity * price
                market += ticker_market
                positions.append((ticker, quantity, cost, ticker_market))
            rows.append(
                AccountState(
                    account=name,
                    target_micro_percent=divide_half_even(weight * _HUNDRED_PERCENT, scale),
                    actual_micro_percent=(
                        divide_half_even(value * _HUNDRED_PERCENT, total) if total else 0
                    ),
                    value=value,
                    market_value=market,
                    deviation=divide_half_even(value * scale - weight * total, scale),
                    positions=tuple(positions),
                    restricted=self._restricted.get(name, ()),
                )
            )
        return rows

    @cached_property
    def accounts(self) -> tuple[AccountState, ...]:
        """Every listed account (derives all rows: prefer ``accounts_between`` for pages)."""
        return tuple(self.accounts_between(0, self.account_count))

    @cached_property
    def total_market_value(self) -> int:
        """Sum of every account's market value: net shares per ticker times its last price."""
        return sum(
            quantity * self._last_prices[ticker]
            for ticker, quantity in self._ticker_totals.items()
            if ticker in self._last_prices
        )

    @property
    def tickers(self) -> tuple[tuple[str, int, int], ...]:
        """(ticker, net quantity, last price) for every ticker ever allocated, by ticker."""
        return tuple(
            (ticker, self._ticker_totals[ticker], self._last_prices[ticker])
            for ticker in sorted(self._last_prices)
        )

    @property
    def shared_bytes(self) -> int:
        """The shared memory ``share`` needs."""
        return (2 + 2 * len(self._quantities)) * len(self._names) * 8

    def share(self, memory: SharedMemory) -> SharedSnapshot:
        """Copy the arrays into ``memory`` (at least ``shared_bytes`` long) for another process;
        returns a small picklable handle. Pickling the arrays instead held the GIL for ~70 ms
        at 100,000 accounts, stalling the writer; this copy takes a few milliseconds when the
        memory is reused (its pages already mapped)."""
        tickers = tuple(self._quantities)
        rows = [self._weights, self._values]
        rows += [self._quantities[t] for t in tickers] + [self._ticker_values[t] for t in tickers]
        shared = np.ndarray((len(rows), len(self._names)), dtype=np.int64, buffer=memory.buf)
        for row, array in zip(shared, rows, strict=True):
            row[:] = array
        del shared
        return SharedSnapshot(
            memory=memory.name,
            tickers=tickers,
            names=",".join(self._names),  # one string pickles in ~1 ms, 100,000 in ~50 ms
            split_id=self.split_id,
            fill_count=self.fill_count,
            pending_count=self.pending_count,
            total_value=self.total_value,
            weight_total=self._weight_total,
            ticker_totals=self._ticker_totals,
            last_prices=self._last_prices,
            restricted=self._restricted,
        )

    def _key(self) -> tuple[object, ...]:
        return (
            self.split_id,
            self.fill_count,
            self.pending_count,
            self.total_value,
            self.total_market_value,
            self.accounts,
            self.tickers,
        )

    def __eq__(self, other: object) -> bool:
        """Equal when every figure a report would show is equal."""
        if not isinstance(other, BookSnapshot):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable caches: equality only

    def __repr__(self) -> str:
        return (
            f"BookSnapshot(split_id={self.split_id!r}, fill_count={self.fill_count},"
            f" accounts={self.account_count})"
        )


@dataclass(frozen=True, slots=True)
class SharedSnapshot:
    """A ``BookSnapshot`` whose arrays wait in shared memory (see ``BookSnapshot.share``)."""

    memory: str
    tickers: tuple[str, ...]
    names: str
    """Account names joined by commas (names never contain one)."""
    split_id: str
    fill_count: int
    pending_count: int
    total_value: int
    weight_total: int
    ticker_totals: dict[str, int]
    last_prices: dict[str, int]
    restricted: dict[str, tuple[str, ...]]

    def load(self, memory: SharedMemory) -> BookSnapshot:
        """The snapshot, its arrays copied out of ``memory`` (attached to ``self.memory``)."""
        names = self.names.split(",") if self.names else []
        rows = 2 + 2 * len(self.tickers)
        shared = np.ndarray((rows, len(names)), dtype=np.int64, buffer=memory.buf)
        arrays = [row.copy() for row in shared]
        del shared
        count = len(self.tickers)
        return BookSnapshot(
            split_id=self.split_id,
            fill_count=self.fill_count,
            pending_count=self.pending_count,
            total_value=self.total_value,
            weight_total=self.weight_total,
            names=names,
            weights=arrays[0],
            values=arrays[1],
            quantities=dict(zip(self.tickers, arrays[2 : 2 + count], strict=True)),
            ticker_values=dict(zip(self.tickers, arrays[2 + count :], strict=True)),
            ticker_totals=self.ticker_totals,
            last_prices=self.last_prices,
            restricted=self.restricted,
        )
