"""The history-free baseline most implementations ship: per-fill largest remainder."""

from __future__ import annotations

import numpy as np

from controller.waterfill import Int64Array


def largest_remainder(percents: Int64Array, quantity: int) -> Int64Array:
    """Split quantity by weight alone: floors, then the rest to the largest fractional parts.

    Exact integer arithmetic; ties go to the lower account index. It ignores what each account
    already holds, which is the point of comparison.
    """
    total = int(percents.sum())
    exact = percents * quantity
    shares = exact // total
    leftover = quantity - int(shares.sum())
    if leftover:
        order = np.argsort(-(exact % total), kind="stable")
        shares[order[:leftover]] += 1
    return shares
