"""The simulators' own promises: exact splits, reproducible streams, sells covered by buys."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.v1 import allocation_pb2
from controller.validation import DEFAULT_TICKERS, parse_fill, parse_split
from simulators.aum import random_split
from simulators.fills import FillGenerator


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), accounts=st.integers(1, 300))
def test_random_splits_sum_to_exactly_100_and_pass_validation(seed: int, accounts: int) -> None:
    split = random_split(random.Random(seed), accounts, "s-1")
    assert len(split.percentages) == accounts
    assert sum(Decimal(p) for p in split.percentages.values()) == 100
    assert all(Decimal(p) >= 0 for p in split.percentages.values())
    parse_split(split)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), sell_ratio=st.floats(0, 1))
def test_fill_streams_are_reproducible_valid_and_never_oversell(
    seed: int, sell_ratio: float
) -> None:
    def stream() -> list[allocation_pb2.Fill]:
        generator = FillGenerator(seed, "run-v0", DEFAULT_TICKERS, sell_ratio)
        return [generator.next() for _ in range(300)]

    fills = stream()
    assert fills == stream()
    assert len({f.fill_id for f in fills}) == len(fills)
    held: Counter[str] = Counter()
    for message in fills:
        fill = parse_fill(message, DEFAULT_TICKERS)
        held[fill.ticker] += (
            fill.quantity if message.side == allocation_pb2.SIDE_BUY else -fill.quantity
        )
        assert held[fill.ticker] >= 0
