"""The allocation book: every account's positions and values, and the allocation rule.

The rule (product definition). Account i has net cost value V_i (buys minus sells at fill
prices); T = sum V_i; the split in force gives weights w_i = p_i / S (micro-percent over their
sum). A buy of Q shares at price P gives x_i >= 0 shares with sum x_i = Q minimising
sum_i (V_i + P x_i - w_i (T + P Q))^2, only to accounts with w_i > 0. A sell minimises
sum_i (V_i - P x_i - w_i (T - P Q))^2 with 0 <= x_i <= account i's position, from any holder.
Both objectives are separable and convex, so taking the best share slots one at a time is
exactly optimal; ``controller.waterfill`` finds the same slots without looping over Q.

Exactness. Multiplying the objective by S^2 makes every term an integer: the buy slot values
are a_i - S P k with a_i = p_i T' - S V_i. Writing a_i = S h_i + r_i (0 <= r_i < S) keeps the
numpy path inside int64 while |T'|, every |V_i| and the fill's P (Q + 1) are below
``VECTOR_SAFE``; a fill beyond that takes the exact Python-integer path instead, so there is no
limit on the book's lifetime traded value. What remains bounded is what the int64 position
arrays store: an account's net value below ``STORED_LIMIT``.

Ties. Slots of equal value are ordered by ``mix64(account_hash ^ fill_hash)``: a per-fill
pseudo-random but reproducible order, so remainders do not always favour the same account and
replaying the same events yields identical allocations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

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
from controller.lots import allocate_lots
from controller.policy import TOTAL_VALUE, Measure, measure
from controller.snapshot import BookSnapshot
from controller.waterfill import (
    Int64Array,
    UInt64Array,
    allocate_small,
    allocate_uncapped,
    allocate_vector,
    mix64,
    mix64_array,
    one_share_each,
    smallest_by,
    stable_hash64,
)

# The numpy path's int64 arithmetic is exact while |T'|, every |V_i| and one fill's P (Q + 1)
# stay below this (micro-units; about 1.15e12 in price units); beyond it, the Python path.
VECTOR_SAFE = 1 << 60
# What an account's net value (and per-ticker value) may reach in the int64 arrays and the
# journal's INTEGER columns: about 4.6e12 in price units. Fills past it are refused.
STORED_LIMIT = 1 << 62
# Up to this many eligible accounts the exact Python path is faster than numpy's overhead; and
# a book of at most this many accounts keeps its per-account state in Python lists, not arrays
# (updating ten list items costs a fifth of ten numpy fancy-index updates).
SMALL_BOOK = 48
# Large books: when at most this many accounts can receive, finish on the exact Python path.
PYTHON_CANDIDATES = 256


def slot_scores(
    weights: Sequence[int], values: Sequence[int], total_after: int, scale: int, buy: bool
) -> list[int]:
    """Each account's first slot, scaled by S: p_i M' - S m_i for a buy (how far below its
    target after the fill), S m_i - p_i M' for a sell (how far above). Its k-th slot is worth
    S u k less. The one place the score formula is written."""
    if buy:
        return [w * total_after - scale * v for w, v in zip(weights, values, strict=True)]
    return [scale * v - w * total_after for w, v in zip(weights, values, strict=True)]


IntpArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
# Per-account state: Python lists while the book has at most ``small_book`` accounts, int64 (or
# bool) arrays once it grows past that; indices into it come as a list or an array to match.
Column = list[int] | Int64Array
Flags = list[bool] | BoolArray
Indices = list[int] | IntpArray


def gather(column: Column, indices: Indices) -> list[int]:
    """``column`` at ``indices``, as Python integers."""
    if isinstance(column, list):
        return [column[i] for i in indices]
    values: list[int] = column[indices].tolist()
    return values


def holders(holdings: Column) -> Indices:
    """The accounts holding some of a ticker (index order)."""
    if isinstance(holdings, list):
        return [i for i, held in enumerate(holdings) if held]
    return np.flatnonzero(holdings)


class Buyers(NamedTuple):
    """The accounts a buy of one ticker may reach (index order), their weights, and the longest
    of their names."""

    indices: Indices
    weights: list[int]
    longest_name: int


@dataclass(frozen=True, slots=True)
class PositionRow:
    """One account's holding of one ticker: shares and net cost value (micro-units)."""

    account: str
    ticker: str
    quantity: int
    value: int


class ReceiverBound(NamedTuple):
    """At most how many accounts one fill's allocation can name, and their longest name."""

    accounts: int
    longest_name: int


class Book:
    """Positions of all accounts, the split in force, and the fills still waiting for a split."""

    def __init__(
        self,
        tickers: Sequence[str],
        small_book: int = SMALL_BOOK,
        python_candidates: int = PYTHON_CANDIDATES,
        vector_safe: int = VECTOR_SAFE,
        policy: str = TOTAL_VALUE,
        lot_sizes: Mapping[str, int] | None = None,
    ) -> None:
        """A book over ``tickers`` allocating by ``policy`` (``controller.policy``). Tuning
        only (every path gives identical results):
        ``small_book`` is the eligible-account count up to which the Python path is used;
        ``python_candidates`` is how many possible receivers a large book may have and still
        finish on the Python path; ``vector_safe`` is the magnitude from which a large book's
        fill takes the Python path (int64 is exact below ``VECTOR_SAFE``)."""
        self._policy = policy
        self._lot_sizes = dict(lot_sizes or {})
        self._small_book = small_book
        self._python_candidates = python_candidates
        self._vector_safe_limit = vector_safe
        self._tickers = tuple(tickers)
        self._names: list[str] = []
        self._name_array = np.zeros(0, dtype=object)
        self._index: dict[str, int] = {}
        self._on_lists = True
        self._value: Column = []
        self._weight = np.zeros(0, dtype=np.int64)
        self._weight_list: list[int] = []
        self._account_hash = np.zeros(0, dtype=np.uint64)
        self._quantity: dict[str, Column] = {t: [] for t in self._tickers}
        self._ticker_value: dict[str, Column] = {t: [] for t in self._tickers}
        # (account, ticker) pairs changed since the last take_changed().
        self._changed: dict[str, Flags] = {t: [] for t in self._tickers}
        self._ticker_total = dict.fromkeys(self._tickers, 0)
        self._last_price: dict[str, int] = {}
        self._split: Split | None = None
        # Accounts with a weight in the split, in index order; and per ticker, those of them
        # that may buy it (the restricted ones left out) with their weights and longest name.
        self._buy_eligible: IntpArray = np.zeros(0, dtype=np.intp)
        self._buyers: dict[str, Buyers] = {}
        self._restrictions = NO_RESTRICTIONS
        # Per ticker with restrictions: True for the accounts that may not buy it.
        self._restricted: dict[str, npt.NDArray[np.bool_]] = {}
        self._longest_name = 0
        self._weight_total = 0
        self._total = 0
        # An upper bound of every |V_i| and per-ticker |value|: grows by each fill's value and
        # is recomputed exactly only when it nears a limit.
        self._value_bound = 0
        self._pending_value = 0
        self._fill_count = 0
        self._pending: list[Fill] = []
        self._pending_net = dict.fromkeys(self._tickers, 0)

    @property
    def fill_count(self) -> int:
        """Fills allocated so far (pending fills excluded)."""
        return self._fill_count

    def _check(self, fill: Fill) -> None:
        """Raise ``Rejected`` if ``fill`` cannot be applied now; changes nothing."""
        if fill.ticker not in self._quantity:
            raise Rejected(
                RejectReason.INVALID_ARGUMENT,
                "fill.ticker",
                f"fill.ticker {fill.ticker!r} is not in the universe {list(self._tickers)}",
            )
        if (
            fill.side is Side.BUY
            and self._split is not None
            and not len(self._buyers_of(fill.ticker).indices)
        ):
            raise Rejected(
                RejectReason.RESTRICTED,
                "fill.ticker",
                f"every account with a weight in split {self._split.split_id!r} is restricted"
                f" from buying {fill.ticker} (restrictions {self._restrictions.restrictions_id!r})",
            )
        if self._bound_after(fill.value + self._pending_value) >= STORED_LIMIT:
            raise Rejected(
                RejectReason.LIMIT_EXCEEDED,
                "fill.quantity",
                f"fill {fill.fill_id!r} could take an account's net value past {STORED_LIMIT:,}"
                " micro-units (about 4.6e12), what the book stores per account",
            )
        if fill.side is Side.SELL:
            held = self._ticker_total[fill.ticker] + self._pending_net[fill.ticker]
            if fill.quantity > held:
                raise Rejected(
                    RejectReason.INSUFFICIENT_HOLDINGS,
                    "fill.quantity",
                    f"fill.quantity {fill.quantity} sells more {fill.ticker} than the accounts"
                    f" hold ({held})",
                )

    def submit(self, fill: Fill) -> Allocation:
        """Allocate ``fill`` (or hold it as pending before the first split); final once returned.

        Raises ``Rejected`` (and changes nothing) for an unknown ticker, an oversell, or a fill
        past the book's value limit.
        """
        self._check(fill)
        if self._split is None:
            self._pending.append(fill)
            signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
            self._pending_net[fill.ticker] += signed
            self._pending_value += fill.value
            return Allocation(fill=fill, split_id="")
        return self._allocate(fill)

    def set_split(self, split: Split) -> list[Allocation]:
        """Put ``split`` in force for every later fill; returns the pending fills it releases.
        Refused (``Rejected``, nothing changed) if a pending buy would have no account that
        may receive it."""
        if split.total <= 0:
            raise Rejected(
                RejectReason.INVALID_ARGUMENT, "split.percentages", "percentages sum to 0"
            )
        for waiting in self._pending:
            restricted = self._restrictions.restricted(waiting.ticker)
            if waiting.side is Side.BUY and not any(
                percent > 0 and account not in restricted
                for account, percent in split.percents.items()
            ):
                raise Rejected(
                    RejectReason.RESTRICTED,
                    "split.percentages",
                    f"fill {waiting.fill_id!r} waits to buy {waiting.ticker}, and every account"
                    " with a weight in this split is restricted from buying it",
                )
        self._add_accounts(split.percents)
        weight = np.zeros(len(self._names), dtype=np.int64)
        for name, percent in split.percents.items():
            weight[self._index[name]] = percent
        self._weight = weight
        self._weight_total = split.total
        self._cache_buy_lists()
        self._split = split
        released, self._pending = self._pending, []
        self._pending_net = dict.fromkeys(self._tickers, 0)
        self._pending_value = 0
        return [self._allocate(fill) for fill in released]

    def _bound_after(self, added: int) -> int:
        """The value bound once ``added`` more value is applied, recomputed exactly when the
        running bound would reach ``VECTOR_SAFE``."""
        if self._value_bound + added >= self._vector_safe_limit:
            self._value_bound = self._largest_value()
        return self._value_bound + added

    def _largest_value(self) -> int:
        """The largest |V_i| or per-ticker |value| of any account (O(N))."""
        columns = [self._value, *self._ticker_value.values()]
        return max((int(np.abs(np.asarray(c)).max()) for c in columns if len(c)), default=0)

    def _vector_safe(self, fill: Fill, measured: Measure[Column]) -> bool:
        """Whether the numpy path's int64 arithmetic is exact for this fill: the totals, one
        fill's worth of units and every account's measure below the limit (per-ticker measures
        are holdings, each at most the ticker's total)."""
        limit = self._vector_safe_limit
        largest = (
            self._bound_after(fill.value)
            if self._policy == TOTAL_VALUE
            else max(abs(measured.total_after), self._ticker_total[fill.ticker])
        )
        return (
            abs(measured.total_after) < limit
            and measured.unit * (fill.quantity + 1) < limit
            and largest < limit
        )

    def set_restrictions(self, restrictions: Restrictions) -> None:
        """Put a restricted list in force for every later fill (it replaces the last one)."""
        self._restrictions = restrictions
        self._cache_buy_lists()

    def _cache_buy_lists(self) -> None:
        """Refresh what buys may reach (after a split, restrictions or a re-indexing)."""
        self._buy_eligible = np.flatnonzero(self._weight)
        self._weight_list = self._weight.tolist()
        self._buyers = {}
        self._restricted = {}
        for ticker in self._tickers:
            restricted = self._restrictions.restricted(ticker)
            if restricted:
                mask = np.zeros(len(self._names), dtype=bool)
                mask[[self._index[a] for a in restricted if a in self._index]] = True
                self._restricted[ticker] = mask

    def _buyers_of(self, ticker: str) -> Buyers:
        """Who a buy of ``ticker`` may reach, cached until the split or restrictions change."""
        found = self._buyers.get(ticker)
        if found is None:
            eligible = self._buy_eligible
            mask = self._restricted.get(ticker)
            if mask is not None:
                eligible = eligible[~mask[eligible]]
            longest = max((len(self._names[i]) for i in eligible), default=0)
            indices: Indices = eligible.tolist() if self._on_lists else eligible
            found = self._buyers[ticker] = Buyers(indices, self._weight[eligible].tolist(), longest)
        return found

    def receiver_bound(self, fill: Fill) -> ReceiverBound:
        """At most how many accounts ``fill``'s allocation can name if it were applied now (each
        receiver gets at least one share), and the longest name among them: what bounds the
        size of its acknowledgement."""
        if self._split is None:
            return ReceiverBound(0, 0)
        if fill.side is Side.BUY:
            buyers = self._buyers_of(fill.ticker)
            return ReceiverBound(min(fill.quantity, len(buyers.indices)), buyers.longest_name)
        return ReceiverBound(min(fill.quantity, len(self._names)), self._longest_name)

    def receiver_ceiling(self) -> ReceiverBound:
        """What bounds every allocation, past or future: all the book's accounts (accounts are
        never removed) and the longest of their names."""
        return ReceiverBound(len(self._names), self._longest_name)

    def _add_accounts(self, names: Iterable[str]) -> None:
        """Give new accounts zeroed state, keeping every array in account-name order.

        Name order makes allocations come out sorted and indices reproducible; re-indexing
        costs O(N) but happens only when a split brings new accounts. The state moves from
        lists to arrays when the book grows past ``small_book`` accounts (it never shrinks).
        """
        new = set(names) - self._index.keys()
        if not new:
            return
        merged = sorted([*self._names, *new])
        index = {name: i for i, name in enumerate(merged)}
        old_positions = np.array([index[name] for name in self._names], dtype=np.intp)
        on_lists = len(merged) <= self._small_book

        def grown(column: Any, dtype: type[Any]) -> npt.NDArray[Any]:
            result = np.zeros(len(merged), dtype=dtype)
            result[old_positions] = column
            return result

        def grown_column(column: Any, dtype: type[Any]) -> Any:
            result = grown(column, dtype)
            return result.tolist() if on_lists else result

        new_positions = np.array([index[name] for name in new], dtype=np.intp)
        self._account_hash = grown(self._account_hash, np.uint64)
        self._account_hash[new_positions] = [stable_hash64(name) for name in new]
        self._weight = grown(self._weight, np.int64)
        self._value = grown_column(self._value, np.int64)
        for ticker in self._tickers:
            self._quantity[ticker] = grown_column(self._quantity[ticker], np.int64)
            self._ticker_value[ticker] = grown_column(self._ticker_value[ticker], np.int64)
            self._changed[ticker] = grown_column(self._changed[ticker], np.bool_)
        self._on_lists = on_lists
        self._names = merged
        self._longest_name = max(self._longest_name, *map(len, new))
        self._name_array = np.array(merged, dtype=object)
        self._index = index
        self._cache_buy_lists()

    def _allocate(self, fill: Fill) -> Allocation:
        """Allocate a fill that ``_check`` accepted (at submission, or while it was pending)."""
        assert self._split is not None
        buy = fill.side is Side.BUY
        new_total = self._total + fill.value if buy else self._total - fill.value
        holdings = self._quantity[fill.ticker]
        measured = measure(
            self._policy,
            buy=buy,
            price=fill.price,
            quantity=fill.quantity,
            values=self._value,
            total_value_after=new_total,
            holdings=holdings,
            ticker_total=self._ticker_total[fill.ticker],
        )
        buyers = self._buyers_of(fill.ticker)
        eligible = buyers.indices if buy else holders(holdings)
        lot = self._lot_sizes.get(fill.ticker, 1) if buy else 1
        if lot > 1:
            # Lots run on exact Python integers whatever the book's size (see controller.lots).
            scores = slot_scores(
                buyers.weights,
                gather(measured.values, eligible),
                measured.total_after,
                self._weight_total,
                buy,
            )
            picked = allocate_lots(
                scores,
                self._weight_total * measured.unit,
                lot,
                fill.quantity,
                self._tie_keys(fill, eligible),
            )
            receivers, quantities = _taken(eligible, picked)
            return self._apply(fill, receivers, quantities, new_total, lot)
        if len(eligible) <= self._small_book or not self._vector_safe(fill, measured):
            weights = buyers.weights if buy else gather(self._weight_list, eligible)
            caps = None if buy else gather(holdings, eligible)
            scores = slot_scores(
                weights,
                gather(measured.values, eligible),
                measured.total_after,
                self._weight_total,
                buy,
            )
            return self._apply(
                fill, *self._shares_python(fill, eligible, scores, caps, measured.unit), new_total
            )
        return self._apply(fill, *self._shares_vector(fill, measured, buy), new_total)

    def set_lot_sizes(self, lot_sizes: Mapping[str, int]) -> None:
        """Round lots for later buys: ticker -> lot size (absent or 1: whole shares)."""
        self._lot_sizes = dict(lot_sizes)

    def _tie_keys(self, fill: Fill, indices: Indices) -> Callable[[int], int]:
        """The documented tie key of ``indices[j]`` for this fill, computed on demand."""
        account_hash = self._account_hash
        fill_hash: list[int] = []

        def key_of(j: int) -> int:
            if not fill_hash:
                fill_hash.append(stable_hash64(fill.fill_id))
            return mix64(int(account_hash[indices[j]]) ^ fill_hash[0])

        return key_of

    def _shares_python(
        self,
        fill: Fill,
        indices: Indices,
        scores: list[int],
        caps: list[int] | None,
        unit: int,
    ) -> tuple[Indices, list[int]]:
        """Exact Python-integer path over a few accounts (their exact scaled scores given);
        ``caps`` None when no account is capped below the fill's quantity (a buy)."""
        step = self._weight_total * unit
        # Keys are hashed only for exact ties at the remainder cut: on demand.
        key_of = self._tie_keys(fill, indices)
        picked = (
            allocate_uncapped(scores, step, fill.quantity, key_of)
            if caps is None
            else allocate_small(scores, caps, step, fill.quantity, key_of)
        )
        return _taken(indices, picked)

    def _shares_vector(
        self, fill: Fill, measured: Measure[Column], buy: bool
    ) -> tuple[Indices, list[int] | Int64Array]:
        """numpy path for large books; the exact search runs on the accounts that can win.
        The slot scores of ``slot_scores``, split as S * head + frac to stay inside int64.
        Arrays are over the accounts that can take a share (``live``), gathered only when
        those are not all of them. Only a book past ``small_book`` accounts comes here, so its
        state is in arrays already."""
        scale = self._weight_total
        holdings = np.asarray(self._quantity[fill.ticker])
        live = np.asarray(self._buyers_of(fill.ticker).indices if buy else holders(holdings))
        everyone = len(live) == len(self._weight)

        def of_live(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return array if everyone else array[live]

        weights = of_live(self._weight)
        values = of_live(np.asarray(measured.values))
        hashes = of_live(self._account_hash)
        caps = np.full(len(live), fill.quantity, dtype=np.int64) if buy else of_live(holdings)
        # p_i * M' = S * q_i + r_i computed without overflow via M' = A * S + B.
        whole, part = divmod(measured.total_after, scale)
        scaled = weights * part
        quotient = weights * whole + scaled // scale
        remainder = scaled % scale
        if buy:
            head = quotient - values
            frac = remainder
        else:
            # The excess S m_i - p_i M' = S (m_i - q_i - 1) + (S - r_i) when r_i > 0.
            borrow = (remainder > 0).astype(np.int64)
            head = values - quotient - borrow
            frac = (scale - remainder) % scale
        seed = np.uint64(stable_hash64(fill.fill_id))

        def keys_in(hashes: UInt64Array) -> Callable[[npt.NDArray[np.intp]], UInt64Array]:
            """Tie keys of positions in ``hashes`` (the account hashes of the arrays in use)."""
            return lambda among: mix64_array(hashes[among] ^ seed)

        if fill.quantity < len(live):
            # An account can only receive if its first slot is among the q best first slots:
            # keep exactly those (slots order by head, then frac, then tie key).
            best = np.sort(
                smallest_by(
                    len(live),
                    fill.quantity,
                    [lambda among: -head[among], lambda among: -frac[among], keys_in(hashes)],
                )
            )
            live, head, frac, caps, hashes = (
                live[best], head[best], frac[best], caps[best], hashes[best]
            )  # fmt: skip
        if len(live) == fill.quantity and one_share_each(head, frac, measured.unit):
            return live, np.ones(len(live), dtype=np.int64)
        if len(live) <= self._python_candidates:
            scores = [scale * h + r for h, r in zip(head.tolist(), frac.tolist(), strict=True)]
            capped = None if buy else caps.tolist()
            return self._shares_python(fill, live, scores, capped, measured.unit)
        shares = allocate_vector(head, frac, caps, measured.unit, fill.quantity, keys_in(hashes))
        taken = np.flatnonzero(shares)
        return live[taken], shares[taken]

    def _apply(
        self,
        fill: Fill,
        receivers: Indices,
        quantities: list[int] | Int64Array,
        new_total: int,
        lot_size: int = 1,
    ) -> Allocation:
        ticker = fill.ticker
        value, holdings = self._value, self._quantity[ticker]
        ticker_value, changed = self._ticker_value[ticker], self._changed[ticker]
        sign = 1 if fill.side is Side.BUY else -1
        price = sign * fill.price
        if isinstance(value, list):
            assert isinstance(holdings, list) and isinstance(ticker_value, list)
            assert isinstance(changed, list) and isinstance(quantities, list)
            for i, quantity in zip(receivers, quantities, strict=True):
                amount = quantity * price
                value[i] += amount
                ticker_value[i] += amount
                holdings[i] += sign * quantity
                changed[i] = True
            self._ticker_total[ticker] += sign * sum(quantities)
            accounts = tuple(map(self._names.__getitem__, receivers))
            shares = tuple(quantities)
        else:
            assert isinstance(holdings, np.ndarray) and isinstance(ticker_value, np.ndarray)
            at = np.asarray(receivers, dtype=np.intp)
            shares = tuple(quantities if isinstance(quantities, list) else quantities.tolist())
            signed = sign * np.asarray(quantities, dtype=np.int64)
            amounts = signed * fill.price
            value[at] += amounts
            holdings[at] += signed
            ticker_value[at] += amounts
            self._ticker_total[ticker] += int(signed.sum())
            changed[at] = True
            accounts = tuple(self._name_array[at].tolist())
        self._total = new_total
        self._value_bound += fill.value
        self._fill_count += 1
        self._last_price[fill.ticker] = fill.price
        assert self._split is not None
        return Allocation(
            fill=fill,
            split_id=self._split.split_id,
            accounts=accounts,
            quantities=shares,
            lot_size=lot_size,
        )

    def take_changed(self) -> list[tuple[str, list[str]]]:
        """The (ticker, accounts) pairs changed since the last call, and forget them: what a
        checkpoint must write (vectorised, so cheap whatever the book's size)."""
        changed = []
        for ticker in self._tickers:
            flags = self._changed[ticker]
            if isinstance(flags, list):
                names = [self._names[i] for i, flag in enumerate(flags) if flag]
                self._changed[ticker] = [False] * len(flags)
            else:
                indices = np.flatnonzero(flags)
                flags[indices] = False
                names = self._name_array[indices].tolist()
            if names:
                changed.append((ticker, names))
        return changed

    def positions_of(self, ticker: str, accounts: Iterable[str]) -> list[PositionRow]:
        """The current positions of ``accounts`` (known to the book) in ``ticker``."""
        names = list(accounts)
        indices = [self._index[name] for name in names]
        return [
            PositionRow(name, ticker, quantity, value)
            for name, quantity, value in zip(
                names,
                gather(self._quantity[ticker], indices),
                gather(self._ticker_value[ticker], indices),
                strict=True,
            )
        ]

    def restore(
        self,
        positions: Iterable[PositionRow],
        split: Split | None,
        fill_count: int,
        last_prices: dict[str, int],
        pending: Iterable[Fill],
        restrictions: Restrictions = NO_RESTRICTIONS,
    ) -> None:
        """Load state aggregated from a journal into this new, empty book; ``pending`` fills
        are submitted again."""
        if self._names or self._fill_count:
            raise RuntimeError("restore() needs an empty book")
        self.set_restrictions(restrictions)
        rows = list(positions)
        if split is not None:
            self.set_split(split)
        self._add_accounts(row.account for row in rows)
        for row in rows:
            i = self._index[row.account]
            self._quantity[row.ticker][i] += row.quantity
            self._ticker_value[row.ticker][i] += row.value
            self._value[i] += row.value
            self._ticker_total[row.ticker] += row.quantity
            self._total += row.value
            # Part of these rows may come from replay, not the checkpoint: rewrite them all.
            self._changed[row.ticker][i] = True
        self._fill_count = fill_count
        self._value_bound = self._largest_value()
        self._last_price = dict(last_prices)
        for fill in pending:
            self.submit(fill)

    @property
    def last_prices(self) -> dict[str, int]:
        """Price of the most recent allocated fill per ticker (micro-units)."""
        return dict(self._last_price)

    def snapshot(self) -> BookSnapshot:
        """A consistent copy for reports: array copies only (milliseconds at 100,000 accounts);
        the rows are derived from it later, off the writer thread."""
        return BookSnapshot(
            split_id=self._split.split_id if self._split else "",
            fill_count=self._fill_count,
            pending_count=len(self._pending),
            total_value=self._total,
            weight_total=self._weight_total,
            names=self._names,
            weights=self._weight.copy(),
            values=np.array(self._value, dtype=np.int64),
            quantities={t: np.array(q, dtype=np.int64) for t, q in self._quantity.items()},
            ticker_values={t: np.array(v, dtype=np.int64) for t, v in self._ticker_value.items()},
            ticker_totals=dict(self._ticker_total),
            last_prices=dict(self._last_price),
            restricted={
                account: tuple(sorted(tickers))
                for account, tickers in self._restrictions.accounts.items()
            },
        )


def _taken(indices: Indices, picked: list[int]) -> tuple[Indices, list[int]]:
    """The accounts of ``indices`` given shares by ``picked`` (per position), and their shares."""
    quantities = [shares for shares in picked if shares]
    if isinstance(indices, list):
        return list(compress(indices, picked)), quantities
    return indices[[j for j, shares in enumerate(picked) if shares]], quantities
