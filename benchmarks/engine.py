"""Allocation engine benchmark: time per fill by book size, and allocation quality.

Quality is measured on one seeded stream of buys: after every fill, the largest deviation of an
account's cost value from its target, |V_i - w_i T| / T in basis points, averaged over the stream.
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
    raw = [rng.randint(1, 1000) for _ in range(accounts)]
    percents = [w * HUNDRED // sum(raw) for w in raw]
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


@dataclass(frozen=True)
class QualityRow:
    """Mean over the stream of the worst account's deviation, in basis points of T."""

    scenario: str
    engine_bps: float
    baseline_bps: float


def quality(scenario: str, accounts: int = 20, fills: int = 3000, seed: int = 7) -> QualityRow:
    """Run one seeded buy stream through the engine and the baseline; compare deviations.

    ``static`` keeps one split; ``drifting`` moves every weight by a small random step every
    50 fills (a new split each time), as AUM drifts with flows.
    """
    rng = random.Random(seed)
    names = [f"acct-{i:02d}" for i in range(accounts)]
    percents = random_percents(rng, accounts)
    prices = {t: rng.randint(20_000_000, 900_000_000) for t in TICKERS}
    book = Book(TICKERS)
    book.set_split(Split("q0", dict(zip(names, percents, strict=True))))
    engine_values = np.zeros(accounts, dtype=object)
    baseline_values = np.zeros(accounts, dtype=object)
    engine_worst: list[float] = []
    baseline_worst: list[float] = []
    for n in range(fills):
        if scenario == "drifting" and n and n % 50 == 0:
            raw = [max(1, p + rng.randint(-p // 20, p // 20)) for p in percents]
            percents = [w * HUNDRED // sum(raw) for w in raw]
            percents[0] += HUNDRED - sum(percents)
            book.set_split(Split(f"q{n}", dict(zip(names, percents, strict=True))))
        ticker = rng.choice(TICKERS)
        prices[ticker] = max(1_000_000, prices[ticker] + rng.randint(-2_000_000, 2_000_000))
        fill = Fill(f"q-f{n}", ticker, prices[ticker], rng.randint(1, 500))
        allocation = dict(book.submit(fill).shares)
        engine_values += np.array([allocation.get(a, 0) for a in names], dtype=object) * fill.price
        baseline_values += (
            largest_remainder(np.array(percents, dtype=np.int64), fill.quantity).astype(object)
            * fill.price
        )
        for values, worst in ((engine_values, engine_worst), (baseline_values, baseline_worst)):
            total = int(values.sum())
            # Exact integer deviations; the ratio is a statistic, not an amount.
            deviation = max(
                abs(int(v) * HUNDRED - p * total) for v, p in zip(values, percents, strict=True)
            )
            worst.append(deviation / HUNDRED / total * 1e4)
    return QualityRow(scenario, statistics.fmean(engine_worst), statistics.fmean(baseline_worst))
