"""Hypothesis strategies for books: splits, fills and event sequences."""

from __future__ import annotations

from hypothesis import strategies as st

from controller.domain import Fill, Restrictions, Side, Split

TICKERS = ("AAPL", "MSFT", "TSLA")
ACCOUNT_POOL = tuple(f"acct-{i}" for i in range(8))
HUNDRED_PERCENT = 100_000_000  # micro-percent


@st.composite
def splits(draw: st.DrawFn, split_id: str = "s") -> Split:
    """A split over 1-8 accounts whose micro-percents sum to exactly 100 %; zeros allowed."""
    names = draw(st.lists(st.sampled_from(ACCOUNT_POOL), min_size=1, max_size=8, unique=True))
    raw = draw(st.lists(st.integers(0, 1000), min_size=len(names), max_size=len(names)))
    if sum(raw) == 0:
        raw[0] = 1
    shares = [w * HUNDRED_PERCENT // sum(raw) for w in raw]
    shares[raw.index(max(raw))] += HUNDRED_PERCENT - sum(shares)
    return Split(split_id=split_id, percents=dict(zip(names, shares, strict=True)))


@st.composite
def fills(draw: st.DrawFn, fill_id: str, max_quantity: int = 60, sells: bool = True) -> Fill:
    """A buy (mostly) or sell of a ticker at a price with up to 6 decimals."""
    return Fill(
        fill_id=fill_id,
        ticker=draw(st.sampled_from(TICKERS)),
        price=draw(st.integers(1, 500_000_000)),
        quantity=draw(st.integers(1, max_quantity)),
        side=draw(st.sampled_from([Side.BUY, Side.BUY, Side.SELL] if sells else [Side.BUY])),
    )


@st.composite
def restrictions(draw: st.DrawFn, restrictions_id: str = "r") -> Restrictions:
    """A restricted list: a few accounts of the pool, each barred from some tickers."""
    names = draw(st.lists(st.sampled_from(ACCOUNT_POOL), max_size=6, unique=True))
    return Restrictions(
        restrictions_id,
        {
            name: frozenset(draw(st.lists(st.sampled_from(TICKERS), min_size=1, unique=True)))
            for name in names
        },
    )


@st.composite
def events(
    draw: st.DrawFn,
    max_events: int = 25,
    max_quantity: int = 60,
    sells: bool = True,
    restricted: bool = False,
) -> list[Fill | Split | Restrictions]:
    """A split first (sometimes after a few fills), then fills mixed with new splits (and, if
    ``restricted``, new restricted lists, the first possibly before the first split)."""
    count = draw(st.integers(1, max_events))
    result: list[Fill | Split | Restrictions] = []
    first_split_at = draw(st.integers(0, min(3, count)))
    for n in range(count):
        if restricted and draw(st.integers(0, 5)) == 0:
            result.append(draw(restrictions(restrictions_id=f"r{n}")))
        if n == first_split_at or (n > first_split_at and draw(st.integers(0, 6)) == 0):
            result.append(draw(splits(split_id=f"s{n}")))
        else:
            result.append(draw(fills(fill_id=f"f{n}", max_quantity=max_quantity, sells=sells)))
    return result
