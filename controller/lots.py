"""Round lots: a buy allocated in multiples of the lot size, but for one odd lot.

For a buy of Q shares in lots of N, write Q = N L + r. The allocations of the required shape give
every account a multiple of N shares, and one account j also the odd lot of r shares (when
r > 0). Among them this finds the one with the least objective, exactly:

- Lots are shares of N: the water-filling of ``controller.waterfill`` over slot scores with a
  step N times a share's takes the L best lot slots (the base allocation B, no odd lot).
- Giving j the odd lot lowers every slot of j by d = S u r, less than one lot step D = S u N.
  So the best lots for that j differ from B by at most one lot: j keeps its last lot unless the
  lowered slot falls behind the best lot slot B left to another account, which then takes it.
- The objective (sum of e_i^2, e_i = S u x_i - score_i) of each candidate then follows from B's
  in O(1): the whole choice costs one water-filling and a pass over the accounts.

The odd lot goes to the candidate with the least objective; equal objectives are decided by the
documented tie key (smaller first), as every tie in the engine is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controller.waterfill import allocate_small


def allocate_lots(
    scores: Sequence[int], share_step: int, lot: int, quantity: int, key_of: Callable[[int], int]
) -> list[int]:
    """Shares per account for a buy of ``quantity`` in lots of ``lot``: ``scores`` are the
    accounts' first-slot scores and ``share_step`` what one share lowers a slot (S u)."""
    lots, odd = divmod(quantity, lot)
    count = len(scores)
    step = share_step * lot
    taken = allocate_small(scores, [lots] * count, step, lots, key_of) if lots else [0] * count
    if odd == 0:
        return [lot * k for k in taken]
    keys = [key_of(i) for i in range(count)]
    errors = [share_step * lot * k - score for k, score in zip(taken, scores, strict=True)]
    # Each account's best lot slot B left untaken (value first, then the smaller key), best two.
    untaken = sorted(
        ((scores[i] - step * taken[i], -keys[i], i) for i in range(count)), reverse=True
    )[:2]
    shift = share_step * odd
    best: tuple[int, int, int, int | None] | None = None  # (objective change, key, j, gainer)
    for j in range(count):
        change = (errors[j] + shift) ** 2 - errors[j] ** 2
        gainer = None
        if taken[j]:
            lowered = scores[j] - step * (taken[j] - 1) - shift
            other = next((slot for slot in untaken if slot[2] != j), None)
            if other is not None and (other[0], other[1]) > (lowered, -keys[j]):
                gainer = other[2]
                moved = errors[j] + shift - step
                change = moved**2 - errors[j] ** 2
                change += (errors[gainer] + step) ** 2 - errors[gainer] ** 2
        candidate = (change, keys[j], j, gainer)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    assert best is not None
    _, _, winner, gainer = best
    shares = [lot * k for k in taken]
    shares[winner] += odd
    if gainer is not None:
        shares[winner] -= lot
        shares[gainer] += lot
    return shares
