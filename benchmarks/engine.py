"""Allocation engine benchmark: time per fill by book size, and allocation quality.

Quality is measured on seeded streams of buys, under each policy and for the history-free
baseline: after every fill, the worst account's deviation of its whole book from its weight and
the worst deviation of one account's holding of one ticker, in basis points, averaged over the
stream.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.baseline import largest_remainder
from controller.book import Book
from controller.domain import Fill, Split

TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "JNJ")
HUNDRED = 100_000_000  # micro-percent


def random_percents(rng: random.Random, accounts: int) -> list[int]:
    """Micro-percents of random positive weights summing to exactly 100 %."""
    return normalised([rng.randint(1, 1000) for _ in range(accounts)])


def normalised(raw: list[int]) -> list[int]:
    """Micro-percents proportional to positive weights ``raw``, summing to exactly 100 %."""
    total = sum(raw)
    percents = [w * HUNDRED // total for w in raw]
    percents[0] += HUNDRED - sum(percents)
    return percents


@dataclass(frozen=True)
class TimingRow:
    """Median time per fill of the engine and of the baseline for one book size."""

    accounts: int
    quantity: int
    engine_ms: float
    baseline_ms: float


def time_per_fill(accounts: int, quantity: int, fills: int, rounds: int = 3) -> TimingRow:
    """Median over rounds of the median time per fill, engine and baseline on the same stream."""
    rng = random.Random(accounts * 7 + quantity)
    percents = random_percents(rng, accounts)
    names = [f"acct-{i:06d}" for i in range(accounts)]
    split = Split("bench", dict(zip(names, percents, strict=True)))
    weights = np.array(percents, dtype=np.int64)
    engine_medians, baseline_medians = [], []
    for round_number in range(rounds):
        book = Book(TICKERS)
        book.set_split(split)
        engine_times, baseline_times = [], []
        for n in range(fills):
            fill = Fill(
                f"r{round_number}-f{n}",
                rng.choice(TICKERS),
                rng.randint(1_000_000, 500_000_000),
                quantity,
            )
            start = time.perf_counter()
            book.submit(fill)
            middle = time.perf_counter()
            largest_remainder(weights, quantity)
            end = time.perf_counter()
            engine_times.append(middle - start)
            baseline_times.append(end - middle)
        engine_medians.append(statistics.median(engine_times))
        baseline_medians.append(statistics.median(baseline_times))
    return TimingRow(
        accounts,
        quantity,
        statistics.median(engine_medians) * 1e3,
        statistics.median(baseline_medians) * 1e3,
    )


SCENARIOS = ("static", "drifting", "random")


@dataclass(frozen=True)
class QualityRow:
    """Means over one stream of the worst account's deviation, in basis points, for the engine
    under one policy and for the history-free baseline on the same stream.

    ``*_total_bps``: max_i |V_i - w_i T| / T (each account's whole book against its weight);
    ``*_ticker_bps``: max over tickers t and accounts i of |q_it - w_i Q_t| / Q_t (each account's
    holding of every ticker against its weight).
    """

    scenario: str
    policy: str
    engine_total_bps: float
    engine_ticker_bps: float
    baseline_total_bps: float
    baseline_ticker_bps: float


class _Deviations:
    """Running holdings of one allocator, and the two worst deviations after each fill."""

    def __init__(self, accounts: int) -> None:
        self.values = [0] * accounts
        self.holdings = {t: [0] * accounts for t in TICKERS}
        self.total_series: list[float] = []
        self.ticker_series: list[float] = []

    def add(self, shares: list[int], fill: Fill, percents: list[int]) -> None:
        """Apply one fill's shares; record both worst deviations under the split in force."""
        held = self.holdings[fill.ticker]
        for i, x in enumerate(shares):
            self.values[i] += x * fill.price
            held[i] += x
        self.total_series.append(_worst_bps(self.values, percents))
        self.ticker_series.append(
            max(_worst_bps(holding, percents) for holding in self.holdings.values())
        )


def _worst_bps(amounts: list[int], percents: list[int]) -> float:
    """max_i |a_i - w_i A| / A in basis points; exact integers, the ratio is a statistic."""
    total = sum(amounts)
    if not total:
        return 0.0
    deviation = max(abs(a * HUNDRED - p * total) for a, p in zip(amounts, percents, strict=True))
    return deviation / HUNDRED / total * 1e4


def quality(
    scenario: str, policy: str, accounts: int = 20, fills: int = 3000, seed: int = 7
) -> QualityRow:
    """Run one seeded buy stream through the engine under ``policy`` and through the baseline.

    ``static`` keeps one split; ``drifting`` moves every weight by a small random step every
    50 fills (a new split each time), as AUM drifts with flows; ``random`` replaces the split by
    an unrelated random one every 200 fills (subscriptions and redemptions). The stream (tickers,
    prices, quantities, splits) depends on the seed alone, so both policies see the same one.
    """
    rng = random.Random(seed)
    names = [f"acct-{i:02d}" for i in range(accounts)]
    percents = random_percents(rng, accounts)
    prices = {t: rng.randint(20_000_000, 900_000_000) for t in TICKERS}
    book = Book(TICKERS, policy=policy)
    book.set_split(Split("q0", dict(zip(names, percents, strict=True))))
    engine, baseline = _Deviations(accounts), _Deviations(accounts)
    for n in range(fills):
        changed: list[int] | None = None
        if n and scenario == "drifting" and n % 50 == 0:
            changed = normalised([max(1, p + rng.randint(-p // 20, p // 20)) for p in percents])
        if n and scenario == "random" and n % 200 == 0:
            changed = random_percents(rng, accounts)
        if changed is not None:
            percents = changed
            book.set_split(Split(f"q{n}", dict(zip(names, percents, strict=True))))
        ticker = rng.choice(TICKERS)
        prices[ticker] = max(1_000_000, prices[ticker] + rng.randint(-2_000_000, 2_000_000))
        fill = Fill(f"q-f{n}", ticker, prices[ticker], rng.randint(1, 500))
        allocation = dict(book.submit(fill).shares)
        engine.add([allocation.get(a, 0) for a in names], fill, percents)
        baseline.add(
            largest_remainder(np.array(percents, dtype=np.int64), fill.quantity).tolist(),
            fill,
            percents,
        )
    return QualityRow(
        scenario,
        policy,
        statistics.fmean(engine.total_series),
        statistics.fmean(engine.ticker_series),
        statistics.fmean(baseline.total_series),
        statistics.fmean(baseline.ticker_series),
    )
