"""Slow, obviously-correct allocators used only as test oracles.

They work on the objective as written in the product definition, with exact fractions, and
share nothing with the production arithmetic except the documented tie-break rule.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from controller.waterfill import mix64, stable_hash64


@dataclass(frozen=True)
class Problem:
    """One fill against a book: values, weights, holdings of the fill's ticker, fill terms."""

    accounts: list[str]
    values: list[int]
    percents: list[int]
    holdings: list[int]
    price: int
    quantity: int
    buy: bool
    fill_id: str
    restricted: tuple[bool, ...] = ()
    """Accounts that may not buy the fill's ticker (they keep their weight in the targets)."""

    def weights(self) -> list[Fraction]:
        total = sum(self.percents)
        return [Fraction(p, total) for p in self.percents]

    def caps(self) -> list[int]:
        if self.buy:
            barred = self.restricted or (False,) * len(self.percents)
            return [
                self.quantity if p > 0 and not no else 0
                for p, no in zip(self.percents, barred, strict=True)
            ]
        return list(self.holdings)

    def new_total(self) -> int:
        sign = 1 if self.buy else -1
        return sum(self.values) + sign * self.price * self.quantity

    def cost(self, shares: list[int]) -> Fraction:
        """The objective: sum of squared distances of values from their targets after the fill."""
        sign = 1 if self.buy else -1
        target_total = self.new_total()
        return sum(
            (
                (v + sign * self.price * x - w * target_total) ** 2
                for v, w, x in zip(self.values, self.weights(), shares, strict=True)
            ),
            Fraction(0),
        )

    def tie_key(self, i: int) -> int:
        return mix64(stable_hash64(self.accounts[i]) ^ stable_hash64(self.fill_id))


def unit_greedy(problem: Problem) -> list[int]:
    """Give shares one at a time to the account whose objective rises least (ties: tie key)."""
    sign = 1 if problem.buy else -1
    weights = problem.weights()
    target_total = problem.new_total()
    caps = problem.caps()
    shares = [0] * len(problem.values)

    def marginal(i: int) -> Fraction:
        before = problem.values[i] + sign * problem.price * shares[i] - weights[i] * target_total
        after = before + sign * problem.price
        return after * after - before * before

    heap = [(marginal(i), problem.tie_key(i), i) for i in range(len(shares)) if caps[i] > 0]
    heapq.heapify(heap)
    for _ in range(problem.quantity):
        _, key, i = heapq.heappop(heap)
        shares[i] += 1
        if shares[i] < caps[i]:
            heapq.heappush(heap, (marginal(i), key, i))
    return shares


def brute_force_minimum(problem: Problem) -> Fraction:
    """The least objective over every feasible whole-share allocation (small Q and N only)."""
    costs = [problem.cost(shares) for shares in _compositions(problem.quantity, problem.caps())]
    assert costs, "no feasible allocation"
    return min(costs)


def _compositions(total: int, caps: list[int]) -> Iterator[list[int]]:
    """Every way to write total as a sum of len(caps) parts with 0 <= part_i <= caps[i]."""
    if not caps:
        if total == 0:
            yield []
        return
    for first in range(min(total, caps[0]) + 1):
        for rest in _compositions(total - first, caps[1:]):
            yield [first, *rest]


def brute_force_lot_minimum(problem: Problem, lot: int) -> Fraction:
    """The least objective over every allocation of the round-lot shape: multiples of ``lot``
    for each account, plus the odd lot (quantity mod lot) to one account that may buy."""
    lots, odd = divmod(problem.quantity, lot)
    caps = problem.caps()
    eligible = [i for i, cap in enumerate(caps) if cap > 0]
    costs = []
    for counts in _compositions(lots, [lots if cap else 0 for cap in caps]):
        base = [lot * k for k in counts]
        for j in eligible if odd else [None]:
            shares = list(base)
            if j is not None:
                shares[j] += odd
            costs.append(problem.cost(shares))
    assert costs, "no feasible allocation"
    return min(costs)
