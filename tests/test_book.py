"""The allocation rule: optimality against oracles, bounds, determinism and edge cases."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.book import VECTOR_SAFE, Book
from controller.domain import (
    NO_RESTRICTIONS,
    Allocation,
    Fill,
    Rejected,
    RejectReason,
    Restrictions,
    Side,
    Split,
)
from controller.policy import PER_TICKER, POLICIES, TOTAL_VALUE
from tests.oracles import Problem, brute_force_lot_minimum, brute_force_minimum, unit_greedy
from tests.strategies import TICKERS, events

# Every path of the book, as (small_book, python_candidates, vector_safe): exact Python integers
# for small books; numpy for large ones, finishing in Python when few accounts can receive, or in
# numpy; and a large book past int64's safe range, back on Python integers.
PATHS = {
    "python": (10**9, 10**9, VECTOR_SAFE),
    "prefiltered": (0, 10**9, VECTOR_SAFE),
    "numpy": (0, 0, VECTOR_SAFE),
    "past-int64": (0, 0, 0),
}


def problem_for(
    book: Book,
    split: Split,
    fill: Fill,
    policy: str = TOTAL_VALUE,
    restrictions: Restrictions = NO_RESTRICTIONS,
) -> Problem:
    """The oracle's view of the book just before ``fill``: under ``per-ticker`` an account's
    value is its holding of the fill's ticker at the fill's price, as the definition says."""
    snapshot = book.snapshot()
    names = sorted({a.account for a in snapshot.accounts} | set(split.percents))
    by_name = {a.account: a for a in snapshot.accounts}
    values, holdings = [], []
    for name in names:
        state = by_name.get(name)
        values.append(state.value if state else 0)
        held = [q for t, q, _, _ in state.positions if t == fill.ticker] if state else []
        holdings.append(held[0] if held else 0)
    if policy == PER_TICKER:
        values = [fill.price * held for held in holdings]
    return Problem(
        accounts=names,
        values=values,
        percents=[split.percents.get(name, 0) for name in names],
        holdings=holdings,
        price=fill.price,
        quantity=fill.quantity,
        buy=fill.side is Side.BUY,
        fill_id=fill.fill_id,
        restricted=tuple(name in restrictions.restricted(fill.ticker) for name in names),
    )


def shares_of(allocation: Allocation, names: list[str]) -> list[int]:
    given_shares = dict(allocation.shares)
    return [given_shares.get(name, 0) for name in names]


Event = Fill | Split | Restrictions


def run(book: Book, sequence: Sequence[Event]) -> list[Allocation]:
    """Apply events, skipping those the book rejects (they must change nothing): fills, and
    splits that would leave a pending buy no account may receive."""
    out: list[Allocation] = []
    for event in sequence:
        try:
            if isinstance(event, Restrictions):
                book.set_restrictions(event)
            elif isinstance(event, Split):
                out.extend(book.set_split(event))
            else:
                out.append(book.submit(event))
        except Rejected:
            continue
    return out


def fills_after_a_split(
    book: Book, sequence: Sequence[Event], policy: str = TOTAL_VALUE
) -> Iterator[tuple[Fill, Problem]]:
    """Apply the splits, restricted lists and the fills before the first split (pending);
    yield every later fill with the oracle's view of the book just before it, for the caller
    to submit. A split that would strand a pending buy is refused and changes nothing."""
    split: Split | None = None
    restrictions = NO_RESTRICTIONS
    for event in sequence:
        if isinstance(event, Restrictions):
            restrictions = event
            book.set_restrictions(event)
        elif isinstance(event, Split):
            try:
                book.set_split(event)
            except Rejected as refused:
                assert refused.reason is RejectReason.RESTRICTED
                continue
            split = event
        elif split is None:
            assert all(a.pending for a in run(book, [event]))
        else:
            yield event, problem_for(book, split, event, policy, restrictions)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None)
@given(sequence=events(max_quantity=60))
def test_allocation_equals_unit_greedy_and_respects_limits(
    path: str, policy: str, sequence: list[Fill | Split]
) -> None:
    book = Book(TICKERS, *PATHS[path], policy=policy)
    for event, problem in fills_after_a_split(book, sequence, policy):
        if not problem.buy and sum(problem.holdings) < problem.quantity:
            before = book.snapshot()
            with pytest.raises(Rejected) as rejected:
                book.submit(event)
            assert rejected.value.reason is RejectReason.INSUFFICIENT_HOLDINGS
            assert book.snapshot() == before
            continue
        shares = shares_of(book.submit(event), problem.accounts)
        assert shares == unit_greedy(problem)
        assert sum(shares) == event.quantity
        assert all(0 <= x <= cap for x, cap in zip(shares, problem.caps(), strict=True))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None)
@given(sequence=events(max_events=12, max_quantity=7))
def test_allocation_reaches_brute_force_minimum(
    path: str, policy: str, sequence: list[Fill | Split]
) -> None:
    book = Book(TICKERS, *PATHS[path], policy=policy)
    for event, problem in fills_after_a_split(book, sequence, policy):
        try:
            allocation = book.submit(event)
        except Rejected:
            continue
        shares = shares_of(allocation, problem.accounts)
        assert problem.cost(shares) == brute_force_minimum(problem)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=100, deadline=None)
@given(sequence=events(max_quantity=40, restricted=True))
def test_restricted_accounts_get_no_buys_and_the_others_share_optimally(
    path: str, policy: str, sequence: list[Event]
) -> None:
    """Against the share-by-share oracle with the restricted accounts' buy caps at zero (they
    keep their weight in the targets): equal allocations, ties by the documented key. A buy no
    account may receive is refused and changes nothing; sells ignore restrictions."""
    book = Book(TICKERS, *PATHS[path], policy=policy)
    for event, problem in fills_after_a_split(book, sequence, policy):
        receivable = sum(problem.caps())
        if (receivable < problem.quantity and not problem.buy) or receivable == 0:
            before = book.snapshot()
            with pytest.raises(Rejected) as refused:
                book.submit(event)
            expected = (
                RejectReason.RESTRICTED if problem.buy else RejectReason.INSUFFICIENT_HOLDINGS
            )
            assert refused.value.reason is expected
            assert book.snapshot() == before
            continue
        shares = shares_of(book.submit(event), problem.accounts)
        assert shares == unit_greedy(problem)
        if problem.buy:
            assert not any(x for x, no in zip(shares, problem.restricted, strict=True) if no)


LOTS = {"AAPL": 3, "MSFT": 5}


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=150, deadline=None)
@given(sequence=events(max_events=12, max_quantity=14, restricted=True))
def test_round_lots_reach_the_minimum_of_their_shape(policy: str, sequence: list[Event]) -> None:
    """Buys of AAPL (lots of 3) and MSFT (5) in multiples of the lot but for one odd lot, with
    the least objective among all allocations of that shape (brute force, exact fractions);
    TSLA and sells are unaffected."""
    book = Book(TICKERS, policy=policy, lot_sizes=LOTS)
    for event, problem in fills_after_a_split(book, sequence, policy):
        try:
            allocation = book.submit(event)
        except Rejected:
            continue
        shares = shares_of(allocation, problem.accounts)
        lot = LOTS.get(event.ticker, 1) if problem.buy else 1
        assert allocation.lot_size == lot
        if lot == 1:
            assert shares == unit_greedy(problem)
            continue
        odd = [x % lot for x in shares if x % lot]
        assert odd == ([event.quantity % lot] if event.quantity % lot else [])
        assert problem.cost(shares) == brute_force_lot_minimum(problem, lot)


def test_a_first_split_that_would_strand_a_pending_buy_is_refused() -> None:
    book = Book(TICKERS)
    book.set_restrictions(Restrictions("r", {"a": frozenset({"AAPL"})}))
    book.submit(Fill("early", "AAPL", 10 * 10**6, 5))
    with pytest.raises(Rejected) as refused:
        book.set_split(Split("only-a", {"a": 100 * 10**6}))
    assert refused.value.reason is RejectReason.RESTRICTED
    assert "'early' waits to buy AAPL" in refused.value.message
    released = book.set_split(Split("a-and-b", {"a": 50 * 10**6, "b": 50 * 10**6}))
    assert [dict(a.shares) for a in released] == [{"b": 5}]


def _excess(problem: Problem, shares: list[int], after: bool) -> list[Fraction]:
    """Each account's value minus its target, before or after the fill's shares."""
    total = problem.new_total() if after else sum(problem.values)
    return [
        v + (problem.price * x if after else 0) - w * total
        for v, w, x in zip(problem.values, problem.weights(), shares, strict=True)
    ]


@pytest.mark.parametrize("sells", [False, True], ids=["buys-only", "buys-and-sells"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_buy_keeps_receivers_within_one_share_of_target(sells: bool, data: st.DataObject) -> None:
    """The bound holds whenever no account outside the split has a negative net value.

    Shortfalls sum to zero, so an account outside the split that sold at a profit (negative
    value) pushes the split's accounts above target, and no allocation can prevent that.
    """
    sequence = data.draw(events(max_quantity=500, sells=sells))
    book = Book(TICKERS)
    for event, problem in fills_after_a_split(book, sequence):
        if event.side is Side.SELL:
            run(book, [event])
            continue
        shares = shares_of(book.submit(event), problem.accounts)
        outside = [v for v, p in zip(problem.values, problem.percents, strict=True) if p == 0]
        if any(v < 0 for v in outside):
            assert sells, "a buys-only book never has negative values"
            continue
        before = _excess(problem, [0] * len(shares), after=False)
        after = _excess(problem, shares, after=True)
        for x, excess in zip(shares, after, strict=True):
            if x > 0:
                assert excess < event.price
        if all(e <= 0 for e in before):
            in_split = [e for e, p in zip(after, problem.percents, strict=True) if p > 0]
            assert all(abs(e) < event.price for e in in_split)


@settings(max_examples=60, deadline=None)
@given(sequence=events(max_events=30))
def test_same_events_give_byte_identical_state(sequence: list[Fill | Split]) -> None:
    def state() -> bytes:
        book = Book(TICKERS)
        allocations = run(book, sequence)
        return json.dumps(
            [[asdict(a) for a in book.snapshot().accounts], [asdict(a) for a in allocations]],
            sort_keys=True,
            default=str,
        ).encode()

    assert state() == state()


@settings(max_examples=100, deadline=None)
@given(sequence=events(max_events=30, restricted=True))
def test_a_book_moving_from_lists_to_arrays_as_it_grows_keeps_its_state(
    sequence: list[Event],
) -> None:
    """A book of at most ``small_book`` accounts keeps its state in lists, and moves it to
    arrays when a split brings more: allocations, changed positions and the snapshot are those
    of a book that kept arrays throughout."""

    def state(small_book: int) -> str:
        book = Book(TICKERS, small_book=small_book, python_candidates=10**9)
        allocations = run(book, sequence)
        changed = sorted((t, sorted(a)) for t, a in book.take_changed())
        accounts = [asdict(a) for a in book.snapshot().accounts]
        return json.dumps([accounts, [asdict(a) for a in allocations], changed], default=str)

    assert state(small_book=3) == state(small_book=0)


def split_of(**percents: int) -> Split:
    return Split(split_id="s", percents={k: v * 1_000_000 for k, v in percents.items()})


def buy(fill_id: str, quantity: int, price: int = 10_000_000, ticker: str = "AAPL") -> Fill:
    return Fill(fill_id=fill_id, ticker=ticker, price=price, quantity=quantity)


def sell(fill_id: str, quantity: int, price: int = 10_000_000, ticker: str = "AAPL") -> Fill:
    return Fill(fill_id=fill_id, ticker=ticker, price=price, quantity=quantity, side=Side.SELL)


@pytest.mark.parametrize("path", PATHS)
def test_single_account_gets_everything(path: str) -> None:
    book = Book(TICKERS, *PATHS[path])
    book.set_split(split_of(only=100))
    assert book.submit(buy("f1", 37)).shares == (("only", 37),)


@pytest.mark.parametrize("path", PATHS)
def test_zero_percent_account_receives_no_buys(path: str) -> None:
    book = Book(TICKERS, *PATHS[path])
    book.set_split(split_of(a=60, b=40, zero=0))
    for n in range(20):
        shares = dict(book.submit(buy(f"f{n}", 7 + n)).shares)
        assert "zero" not in shares


@pytest.mark.parametrize("path", PATHS)
def test_all_weight_in_one_account(path: str) -> None:
    book = Book(TICKERS, *PATHS[path])
    book.set_split(split_of(a=100, b=0, c=0))
    assert book.submit(buy("f1", 1000)).shares == (("a", 1000),)


@pytest.mark.parametrize("path", PATHS)
def test_account_leaving_is_wound_down_by_sells_and_joiner_gets_buys(path: str) -> None:
    book = Book(TICKERS, *PATHS[path])
    book.set_split(split_of(old=50, stay=50))
    book.submit(buy("f1", 100))
    book.set_split(Split("s2", {"stay": 50_000_000, "new": 50_000_000}))
    # Excess before: old +50 shares' worth, stay +25, new -25 (holds nothing, cannot sell).
    # Equalising old and stay sells 37.5 / 12.5; the half share goes by the tie rule.
    sold = dict(book.submit(sell("f2", 50)).shares)
    assert sold in ({"old": 37, "stay": 13}, {"old": 38, "stay": 12})
    bought = dict(book.submit(buy("f3", 100)).shares)
    assert set(bought) == {"new"} or bought.get("new", 0) > bought.get("stay", 0)
    assert "old" not in bought


@pytest.mark.parametrize("path", PATHS)
def test_huge_quantity_with_few_accounts(path: str) -> None:
    book = Book(TICKERS, *PATHS[path])
    book.set_split(split_of(a=50, b=30, c=20))
    shares = dict(book.submit(buy("f1", 10**9, price=1_000_000)).shares)
    assert shares == {"a": 500_000_000, "b": 300_000_000, "c": 200_000_000}


def test_many_accounts_with_single_share_fills() -> None:
    book = Book(TICKERS)
    names = [f"acct-{i:06d}" for i in range(100_000)]
    book.set_split(Split("s", dict.fromkeys(names, 1_000)))
    receivers = [book.submit(buy(f"f{n}", 1)).shares for n in range(20)]
    assert all(len(r) == 1 and r[0][1] == 1 for r in receivers)
    # Equal weights and equal holdings: no account gets a second share before all got one.
    assert len({r[0][0] for r in receivers}) == 20


@pytest.mark.parametrize("path", PATHS)
def test_sell_that_empties_positions_exactly(path: str) -> None:
    book = Book(TICKERS, *PATHS[path])
    book.set_split(split_of(a=70, b=30))
    book.submit(buy("f1", 10))
    assert dict(book.submit(sell("f2", 10)).shares) == {"a": 7, "b": 3}
    assert book.snapshot().tickers == (("AAPL", 0, 10_000_000),)
    with pytest.raises(Rejected) as rejected:
        book.submit(sell("f3", 1))
    assert rejected.value.reason is RejectReason.INSUFFICIENT_HOLDINGS
    assert "fill.quantity 1" in rejected.value.message


def test_fills_before_first_split_are_pending_then_allocated_in_order() -> None:
    book = Book(TICKERS)
    assert book.submit(buy("f1", 10)).pending
    assert book.submit(sell("f2", 4)).pending
    with pytest.raises(Rejected):
        book.submit(sell("f3", 7))  # only 6 net shares will exist
    released = book.set_split(split_of(a=50, b=50))
    assert [a.fill.fill_id for a in released] == ["f1", "f2"]
    assert sum(q for _, q in released[0].shares) == 10
    assert sum(q for _, q in released[1].shares) == 4
    assert book.snapshot().tickers == (("AAPL", 6, 10_000_000),)
    assert book.snapshot().pending_count == 0


def test_new_split_replaces_old_one_entirely() -> None:
    book = Book(TICKERS)
    book.set_split(split_of(a=50, b=50))
    book.submit(buy("f1", 10))
    book.set_split(Split("s2", {"b": 100_000_000}))
    assert dict(book.submit(buy("f2", 10)).shares) == {"b": 10}
    targets = {a.account: a.target_micro_percent for a in book.snapshot().accounts}
    assert targets == {"a": 0, "b": 100_000_000}


def test_remainders_do_not_always_favour_the_same_account() -> None:
    book = Book(TICKERS)
    book.set_split(split_of(a=25, b=25, c=25, d=25))
    firsts = set()
    for n in range(40):
        # 4k + 1 shares: one share is a remainder decided by the tie rule.
        allocation = dict(book.submit(buy(f"f{n}", 5, ticker="MSFT")).shares)
        firsts.add(max(allocation, key=lambda k: allocation[k]))
        book = Book(TICKERS)
        book.set_split(split_of(a=25, b=25, c=25, d=25))
    assert len(firsts) == 4


@settings(max_examples=100, deadline=None)
@given(
    splits_and_fills=st.lists(
        st.tuples(
            st.lists(st.integers(0, 10**6), min_size=2, max_size=12),
            st.integers(1, 10**12),
            st.integers(1, 10**6),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_python_and_numpy_paths_agree_at_large_magnitudes(
    splits_and_fills: list[tuple[list[int], int, int, bool]],
) -> None:
    books = [Book(TICKERS, *tuning) for tuning in PATHS.values()]
    results: list[list[object]] = [[] for _ in books]
    for n, (raw, price, quantity, sell_it) in enumerate(splits_and_fills):
        if sum(raw) == 0:
            raw[0] = 1
        percents = {f"acct-{i}": w * 100_000_000 // sum(raw) for i, w in enumerate(raw)}
        fill = Fill(f"f{n}", "AAPL", price, quantity, Side.SELL if sell_it else Side.BUY)
        for book, out in zip(books, results, strict=True):
            out.extend(book.set_split(Split(f"s{n}", percents)))
            try:
                out.append(book.submit(fill))
            except Rejected as rejected:
                out.append(rejected.reason)
    assert all(result == results[0] for result in results)
    assert all(book.snapshot() == books[0].snapshot() for book in books)


PRICE_MILLION = 1_000_000 * 1_000_000  # 1,000,000 in micro-units


def test_no_lifetime_limit_on_traded_value() -> None:
    """One legal fill of 1,100,000 shares at 1,000,000 used 95 % of the old lifetime limit, and
    every later fill was refused. Now 20 round trips of two such buys and two sells (88 times
    that limit traded) are allocated exactly: with two bought the book is past int64's safe
    range and the fills take the exact Python path."""
    book = Book(TICKERS, small_book=0)
    book.set_split(split_of(a=50, b=30, c=20))
    for n in range(20):
        for leg in range(2):
            bought = book.submit(Fill(f"buy-{n}-{leg}", "AAPL", PRICE_MILLION, 1_100_000))
            assert bought.shares == (("a", 550_000), ("b", 330_000), ("c", 220_000))
        for leg in range(2):
            sold = book.submit(Fill(f"sell-{n}-{leg}", "AAPL", PRICE_MILLION, 1_100_000, Side.SELL))
            assert sold.shares == (("a", 550_000), ("b", 330_000), ("c", 220_000))
    book.submit(Fill("tiny", "AAPL", 1_000_000, 1))
    assert sum(book.submit(Fill("unwind", "AAPL", 1_000_000, 1, Side.SELL)).quantities) == 1
    snapshot = book.snapshot()
    assert snapshot.total_value == 0
    assert snapshot.tickers == (("AAPL", 0, 1_000_000),)


def test_a_fill_past_what_an_account_can_store_is_refused_and_changes_nothing() -> None:
    book = Book(TICKERS)
    book.set_split(split_of(a=100))
    for n in range(4):
        book.submit(Fill(f"f{n}", "AAPL", PRICE_MILLION, 1_100_000))
    before = book.snapshot()
    with pytest.raises(Rejected) as refused:
        book.submit(Fill("too-much", "AAPL", PRICE_MILLION, 1_100_000))
    assert refused.value.reason is RejectReason.LIMIT_EXCEEDED
    assert "net value past" in refused.value.message
    assert book.snapshot() == before
    assert book.submit(Fill("unwind", "AAPL", PRICE_MILLION, 1, Side.SELL)).quantities == (1,)


@pytest.mark.parametrize(
    ("policy", "expected"), [(TOTAL_VALUE, {"b": 10}), (PER_TICKER, {"a": 5, "b": 5})]
)
def test_the_policies_worked_example(policy: str, expected: dict[str, int]) -> None:
    """`--help`'s example: A alone holds 10 MSFT at 100, the split turns 50/50, 10 AAPL at 100
    arrive. Total value evens the books (B gets all); per ticker evens the AAPL holdings."""
    book = Book(TICKERS, policy=policy)
    book.set_split(Split("s1", {"a": 100 * 10**6}))
    book.submit(Fill("m", "MSFT", 100 * 10**6, 10))
    book.set_split(Split("s2", {"a": 50 * 10**6, "b": 50 * 10**6}))
    assert dict(book.submit(Fill("x", "AAPL", 100 * 10**6, 10)).shares) == expected
