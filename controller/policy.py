"""Allocation policies: what each account's share of a fill is measured against.

Both policies minimise a separable convex objective of the same shape: for the accounts that may
take part, sum_i (m_i + u * x_i - w_i * M')^2 for a buy (m_i - u x_i for a sell), where m_i is
the account's measure, u what one share adds to it, and M' the book's total measure after the
fill. A policy only says what m, u and M' are; the water-filling core (``controller.book``,
``controller.waterfill``) is the same for both.

- ``total-value`` (the product definition): m_i is account i's net cost value over all tickers,
  u the fill's price, M' the book's total value after the fill. Each account's whole book tracks
  its weight, so an account under target in one ticker can catch up in another.
- ``per-ticker`` (pro rata per security): m_i is account i's holding of the fill's ticker, in
  shares, u = 1, M' the book's holding of that ticker after the fill. The objective of the
  definition, sum_i (P q_it + P x_i - w_i (P Q_t + P Q))^2, is P^2 times this one: each
  account's share of every ticker tracks its weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

# A per-account column as the book stores it: a list while the book is small, an array after.
Values = TypeVar("Values")

TOTAL_VALUE = "total-value"
PER_TICKER = "per-ticker"
POLICIES = (TOTAL_VALUE, PER_TICKER)


@dataclass(frozen=True, slots=True)
class Measure(Generic[Values]):
    """What one fill is allocated against."""

    values: Values
    """Every account's measure before the fill (indexed like the book's accounts)."""
    total_after: int
    """The book's total measure after the fill."""
    unit: int
    """What one share adds to (a buy) or takes from (a sell) an account's measure."""


def measure(
    policy: str,
    *,
    buy: bool,
    price: int,
    quantity: int,
    values: Values,
    total_value_after: int,
    holdings: Values,
    ticker_total: int,
) -> Measure[Values]:
    """The measure of a fill under ``policy``, from the book's cost values and total after the
    fill, and its holdings and total of the fill's ticker before it."""
    if policy == TOTAL_VALUE:
        return Measure(values, total_value_after, price)
    if policy == PER_TICKER:
        return Measure(holdings, ticker_total + (quantity if buy else -quantity), 1)
    raise ValueError(f"unknown policy {policy!r}; policies are {list(POLICIES)}")
