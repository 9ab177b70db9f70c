"""Exact whole-share water-filling: which accounts get the shares of one fill.

Both functions solve the same problem. Account i offers a decreasing run of "slots"
``score_i - step * k`` for ``k = 0 .. cap_i - 1``; the allocation takes the ``q`` best slots over
all accounts, and ``x_i`` is how many of account i's slots were taken. Slots are ordered by value,
then by a per-fill tie key (smaller key first), so the answer is unique. Taking the best slots one
at a time is the unit greedy, which is exactly optimal for the separable convex objective of the
allocation (see ``controller.book``); these functions reach the same answer without a loop over q.

``allocate_small`` works on Python integers of any size and suits a handful of accounts;
``allocate_vector`` works on numpy int64 arrays in time independent of ``q`` and suits large
books. Floats never decide anything: every comparison is on exact integers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
UInt64Array = npt.NDArray[np.uint64]

_MASK64 = (1 << 64) - 1
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def stable_hash64(text: str) -> int:
    """A 64-bit hash of text that is the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix64(value: int) -> int:
    """The splitmix64 finaliser: a bijection on 64-bit integers that scrambles all bits."""
    value = ((value ^ (value >> 30)) * _MIX1) & _MASK64
    value = ((value ^ (value >> 27)) * _MIX2) & _MASK64
    return value ^ (value >> 31)


def mix64_array(values: UInt64Array) -> UInt64Array:
    """``mix64`` over a uint64 array (multiplication wraps modulo 2**64 as in ``mix64``)."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(_MIX1)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(_MIX2)
    return values ^ (values >> np.uint64(31))


def allocate_small(
    scores: Sequence[int], caps: Sequence[int], step: int, q: int, key_of: Callable[[int], int]
) -> list[int]:
    """Take the ``q`` best slots; exact on Python integers. Requires ``sum(caps) >= q``.

    ``key_of(i)`` is account i's tie key; it is asked only for accounts that tie exactly where
    the remainder is cut, which is rare, so it may be costly.

    Caps are handled by the classic fixing rule: an account whose uncapped share exceeds its cap
    is at its cap in the capped optimum too, because removing slots can only lower the threshold.
    """
    shares = [0] * len(scores)
    free = [i for i, cap in enumerate(caps) if cap > 0]
    if len(free) == q:
        # q accounts whose first slots are all above every second slot take one share each:
        # what a large book's fill to its q best accounts usually is.
        free_scores = [scores[i] for i in free]
        if max(free_scores) - min(free_scores) < step:
            for i in free:
                shares[i] = 1
            return shares
    remaining = q
    while remaining > 0:
        uncapped = _uncapped_small(scores, free, step, remaining, key_of)
        saturated = [i for i in free if uncapped[i] > caps[i]]
        if not saturated:
            for i in free:
                shares[i] = uncapped[i]
            return shares
        for i in saturated:
            shares[i] = caps[i]
            remaining -= caps[i]
        saturated_set = set(saturated)
        free = [i for i in free if i not in saturated_set]
    return shares


def allocate_uncapped(
    scores: Sequence[int], step: int, q: int, key_of: Callable[[int], int]
) -> list[int]:
    """``allocate_small`` when no account is capped below ``q`` (a buy): the same answer.

    Usually every account is above the threshold they set together (a fill larger than the
    book's imbalance); then no ordering is needed, only the floors and the remainder.
    """
    count = len(scores)
    numerator = sum(scores) - step * q
    if count * min(scores) <= numerator:
        return _uncapped_small(scores, range(count), step, q, key_of)
    divisor = count * step
    shares = [(count * score - numerator) // divisor for score in scores]
    leftover = q - sum(shares)
    if leftover:
        _give_remainder(scores, shares, step, range(count), leftover, key_of)
    return shares


def _uncapped_small(
    scores: Sequence[int], free: Sequence[int], step: int, q: int, key_of: Callable[[int], int]
) -> list[int]:
    """Uncapped water-filling over ``free``: continuous threshold, floors, then remainders
    (shares indexed like ``scores``; 0 outside ``free``)."""
    # Order among equal scores does not move the threshold, so no tie key is needed here.
    order = sorted(free, key=scores.__getitem__, reverse=True)
    budget = step * q
    prefix = active = active_sum = 0
    for count, i in enumerate(order, start=1):
        score = scores[i]
        prefix += score
        # The threshold t_k = (prefix_k - step*q) / k is valid while the k-th score is above
        # it; once it fails it fails for every later k (what ``allocate_uncapped`` relies on).
        if count * score > prefix - budget:
            active, active_sum = count, prefix
        else:
            break
    # Threshold t = numerator / active; each active account takes floor((score - t) / step).
    numerator = active_sum - budget
    divisor = active * step
    shares = [0] * len(scores)
    given = 0
    for i in order[:active]:
        taken = (active * scores[i] - numerator) // divisor
        shares[i] = taken
        given += taken
    leftover = q - given
    if leftover:
        # Every active account's residual slot is at least t, so only slots above t - step
        # can win: the active accounts and the inactive ones (score order) that reach it.
        contenders = order[:active]
        for i in order[active:]:
            if active * scores[i] <= numerator - divisor:
                break
            contenders.append(i)
        _give_remainder(scores, shares, step, contenders, leftover, key_of)
    return shares


def _give_remainder(
    scores: Sequence[int],
    shares: list[int],
    step: int,
    contenders: Sequence[int],
    leftover: int,
    key_of: Callable[[int], int],
) -> None:
    """Give the ``leftover`` shares (fewer than the contenders) after the floors in ``shares``:
    each to a different contender with the largest residual slot; every floor slot strictly
    beats every residual slot, and only the contenders' residual slots can win."""
    # Smaller is better: the negated residual slot of each account.
    behind = [step * shares[i] - scores[i] for i in contenders]
    ranked = sorted(range(len(contenders)), key=behind.__getitem__)
    cut = behind[ranked[leftover - 1]]
    if leftover < len(ranked) and behind[ranked[leftover]] == cut:
        # The cut falls inside a run of equal slots: those in the run go by tie key, and
        # equal keys (never, short of a hash collision) by account order.
        winners = [contenders[j] for j in ranked if behind[j] < cut]
        tied = sorted(
            (contenders[j] for j in ranked if behind[j] == cut), key=lambda i: (key_of(i), i)
        )
        ranked_winners = winners + tied[: leftover - len(winners)]
    else:
        ranked_winners = [contenders[j] for j in ranked[:leftover]]
    for i in ranked_winners:
        shares[i] += 1


def allocate_vector(
    head: Int64Array,
    frac: Int64Array,
    caps: Int64Array,
    step: int,
    q: int,
    keys_of: Callable[[npt.NDArray[np.intp]], UInt64Array],
) -> Int64Array:
    """Take the ``q`` best slots where a slot's value is ``(head_i - step*k, frac_i)``.

    Values compare as pairs: ``head`` first, then ``frac`` (the pair stands for the integer
    ``head * D + frac`` for any ``D > max(frac)``). ``keys_of(indices)`` returns tie keys for the
    accounts that meet at the threshold, so keys are computed only where a tie can occur.
    Requires ``sum(caps) >= q``, and magnitudes below 2**61 so that int64 never overflows.
    """
    live = np.flatnonzero(caps > 0)
    live_caps = caps[live]
    result = np.zeros(len(head), dtype=np.int64)
    if int(live_caps.sum()) == q:
        result[live] = live_caps
        return result
    live_head = head[live]

    def count_above(level: int) -> tuple[Int64Array, int]:
        """Slots of each account strictly above ``level`` (in head units), and their total."""
        gap = live_head - level
        above = np.minimum(np.maximum((gap + (step - 1)) // step, 0), live_caps)
        return above, int(above.sum())

    # Find the smallest integer level with at most q slots strictly above it.
    # Invariant: count(low) > q >= count(high).
    high = int(live_head.max())
    low = int(live_head.min()) - step * (q + 1)
    count_low, count_high = count_above(low)[1], 0
    bisect_next = False
    while high - low > 1:
        if bisect_next:
            probe = (low + high) // 2
        else:
            # Secant guess on the piecewise-linear count; floats only choose where to probe.
            span = count_low - count_high
            probe = high - int((high - low) * ((q - count_high) / span))
            probe = min(max(probe, low + 1), high - 1)
        count = count_above(probe)[1]
        previous_width = high - low
        if count > q:
            low, count_low = probe, count
        else:
            high, count_high = probe, count
        # Fall back to bisection whenever the secant step failed to halve the bracket.
        bisect_next = not bisect_next and (high - low) * 2 > previous_width
    threshold = high
    base, taken = count_above(threshold)
    leftover = q - taken
    if leftover:
        # Accounts whose next slot sits exactly at the threshold compete by frac, then tie key.
        at_threshold = np.flatnonzero((base < live_caps) & (live_head - step * base == threshold))
        tied = live[at_threshold]
        best = smallest_by(
            len(tied),
            leftover,
            [lambda among: -frac[tied[among]], lambda among: keys_of(tied[among])],
        )
        base[at_threshold[best]] += 1
    result[live] = base
    return result


def one_share_each(head: Int64Array, frac: Int64Array, step: int) -> bool:
    """Whether every account's first slot ``(head_i, frac_i)`` beats every second slot
    ``(head_j - step, frac_j)``: then, with as many shares as accounts (all caps >= 1), each
    takes one, as ``allocate_small``'s and ``allocate_vector``'s full search would find."""
    top, bottom = int(head.max()), int(head.min())
    if top - step != bottom:
        return top - step < bottom
    return int(frac[head == top].max()) < int(frac[head == bottom].min())


def smallest_by(
    size: int,
    count: int,
    levels: Sequence[Callable[[npt.NDArray[np.intp]], npt.NDArray[Any]]],
) -> npt.NDArray[np.intp]:
    """Positions (in no particular order) of the ``count`` smallest of ``size`` items ordered by
    ``levels`` (then by position): the first ``count`` of a stable lexicographic sort, as a set,
    in linear time. ``levels[k](positions)`` gives the k-th key of those positions; it is asked
    only for the items still tied where the cut falls (a full sort of 100,000 tied accounts
    took 97 % of a fill)."""
    positions = np.arange(size)
    chosen = []
    for level in levels:
        if count == len(positions):
            break
        values = level(positions)
        cut = _kth_smallest(values, count)
        below = positions[values < cut]
        chosen.append(below)
        count -= len(below)
        positions = positions[values == cut]
    chosen.append(positions[:count])
    return np.concatenate(chosen)


# Smallest distinct values walked before ``_kth_smallest`` falls back to ``np.partition``.
DISTINCT_WALK = 4
# Above 16 times this many values, ``_kth_smallest`` first guesses a bound from a sample of
# this size, to partition only the values below it.
SAMPLE = 1024


def _kth_smallest(values: npt.NDArray[Any], k: int) -> Any:
    """The k-th smallest of ``values`` (1 <= k <= len). ``np.partition`` is linear but 15-30x
    slower when k falls in a long run of equal values with larger ones scattered through it
    (12 ms instead of 0.4 ms at 100,000 accounts): what equal weights make of the book. So the
    smallest distinct values are walked first while they come in runs, and a large array is
    first cut down to the values below a bound guessed from a sample."""
    rest = values
    for _ in range(DISTINCT_WALK):
        low = rest.min()
        run = int(np.count_nonzero(rest == low))
        if run >= k:
            return low
        if run == 1:
            break
        k -= run
        rest = rest[rest > low]
    if len(rest) > 16 * SAMPLE:
        # Exact whatever the guess: when at least k values are at most the guess, the k-th
        # smallest is among them; otherwise all values are partitioned.
        sample = rest[:: len(rest) // SAMPLE]
        rank = min(len(sample) - 1, 2 * k * len(sample) // len(rest) + 8)
        near = rest[rest <= np.partition(sample, rank)[rank]]
        if len(near) >= k:
            rest = near
    return np.partition(rest, k - 1)[k - 1]
