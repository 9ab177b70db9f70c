"""Is a journaled allocation correct and optimal? Checked from the ledger, not the engine.

For a buy of Q at P under split p (micro-percent, sum S), with the book's total T' = T + P Q
after the fill, scale the objective by S^2: account i contributes e_i^2 with the exact integer
e_i = S (V_i + P x_i) - p_i T'. The objective is separable and convex, so an allocation is
optimal if and only if no single share moved from a receiver j to another eligible account i
lowers it. Moving one changes the objective by 2 S P (e_i - e_j + S P): it lowers it exactly
when e_j - e_i > S P. So the check takes the largest e among receivers and the smallest among
eligible accounts (the two best of each, for i != j): O(accounts) per fill, whatever algorithm
found the answer. A sell mirrors it: e_i = S (V_i - P x_i) - p_i T' with T' = T - P Q, a share
can move from a receiver j to a holder i with x_i below its holding, and the sale improves
exactly when e_i - e_j > S P. Under the per-ticker policy the same test runs on holdings of the
fill's ticker in shares (u = 1 in place of P, the ticker's total in place of T).
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.audit.ledger import Ledger
from controller.domain import Allocation, Side
from controller.policy import TOTAL_VALUE


def _two(pairs: Iterable[tuple[int, str]], largest: bool) -> list[tuple[int, str]]:
    """The two largest (or smallest) (e, account) pairs (a sort: books are small, and in C)."""
    return sorted(pairs, reverse=largest)[:2]


def _violation(
    gainers: list[tuple[int, str]], losers: list[tuple[int, str]], step: int
) -> tuple[str, str, int] | None:
    """The (high, low, gap) accounts of the single-share move that improves most, if any:
    ``gainers`` are the two largest-e accounts on one side of a move, ``losers`` the two
    smallest-e accounts on the other; a move between different accounts improves when their gap
    exceeds ``step``."""
    best: tuple[str, str, int] | None = None
    for high, giver in gainers:
        for low, taker in losers:
            if giver != taker and high - low > step and (best is None or high - low > best[2]):
                best = (giver, taker, high - low)
    return best


def check(ledger: Ledger, allocation: Allocation, policy: str = TOTAL_VALUE) -> list[str]:
    """What is wrong with ``allocation`` given the ledger before it (empty when it is right
    and optimal under ``policy``)."""
    fill = allocation.fill
    split = ledger.split
    if split is None:
        return ["allocated while no split was in force"]
    problems = []
    shares = dict(allocation.shares)
    if len(shares) != len(allocation.accounts):
        problems.append("an account appears twice")
    if any(quantity <= 0 for quantity in shares.values()):
        problems.append("an allocated quantity is not positive")
    if sum(shares.values()) != fill.quantity:
        problems.append(
            f"allocations sum to {sum(shares.values())}, not the fill's {fill.quantity}"
        )
    if allocation.split_id != split.split_id:
        problems.append(f"allocated under split {allocation.split_id!r}, not {split.split_id!r}")
    scale = split.total
    values, before, unit = ledger.measure(policy, fill.ticker, fill.price)
    lot = allocation.lot_size
    if lot > 1:
        odd = sorted(a for a, quantity in shares.items() if quantity % lot)
        expected_odd = 1 if fill.quantity % lot else 0
        if len(odd) != expected_odd or any(shares[a] % lot != fill.quantity % lot for a in odd):
            problems.append(f"not in lots of {lot} with one odd lot: odd holdings {odd}")
    # In lots, the moves that must not improve are of one whole lot (the odd lot's place is
    # checked by re-running the rule).
    step = scale * unit * lot
    percents = split.percents
    if fill.side is Side.BUY:
        after = before + unit * fill.quantity
        barred = ledger.restrictions.restricted(fill.ticker)
        outside = sorted(a for a in shares if percents.get(a, 0) <= 0 or a in barred)
        if outside:
            problems.append(f"buys given to accounts without weight or restricted: {outside}")
        e = {
            account: scale * (values.get(account, 0) + unit * shares.get(account, 0))
            - percent * after
            for account, percent in percents.items()
            if percent > 0 and account not in barred
        }
        givers = _two(((e[a], a) for a in shares if a in e and shares[a] >= lot), largest=True)
        takers = _two(((value, a) for a, value in e.items()), largest=False)
    else:
        after = before - unit * fill.quantity
        held = ledger.holdings.get(fill.ticker, {})
        short = sorted(a for a, quantity in shares.items() if quantity > held.get(a, 0))
        if short:
            problems.append(f"sells more than these accounts hold: {short}")
        e = {
            account: scale * (values.get(account, 0) - unit * shares.get(account, 0))
            - percents.get(account, 0) * after
            for account in held.keys() | shares.keys()
        }
        # The share of the sale moves from a receiver (smallest e) to a holder with shares to
        # spare (largest e).
        givers = _two(((e[a], a) for a in held if shares.get(a, 0) < held[a]), largest=True)
        takers = _two(((e[a], a) for a in shares), largest=False)
    move = _violation(givers, takers, step)
    if move is not None:
        giver, taker, gap = move
        if fill.side is Side.BUY:
            problems.append(
                f"not optimal: one share from {giver!r} to {taker!r} lowers the objective"
                f" (e gap {gap} > S*u {step})"
            )
        else:
            problems.append(
                f"not optimal: selling one share fewer of {taker!r} and one more of {giver!r}"
                f" lowers the objective (e gap {gap} > S*u {step})"
            )
    return problems
