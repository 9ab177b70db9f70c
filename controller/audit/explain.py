"""``audit explain FILL_ID``: why one fill was allocated as it was.

For every account that could take part (accounts with a weight for a buy, holders for a sell):
its weight and target before the fill, its value before, its shortfall against the target after
the fill (what the rule closes), the shares it got, and its value and deviation after. Where
slots of equal value competed for the last shares, the tie-break order (the documented per-fill
key: ``mix64(hash(account) ^ hash(fill id))``, smaller first) is shown for the tied accounts.
Amounts are micro-units; targets, which are fractions, are rounded half-even to micro-units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from controller.audit.history import HistoryError, JournalHistory
from controller.audit.ledger import Ledger, Step, replay
from controller.domain import Allocation, Side, Split
from controller.money import MICRO, divide_half_even
from controller.policy import TOTAL_VALUE
from controller.waterfill import mix64, stable_hash64


@dataclass(frozen=True, slots=True)
class AccountLine:
    """One account's part in a fill (micro-units; percent in micro-percent)."""

    account: str
    percent: int
    target_before: int
    value_before: int
    shortfall: int
    """Target after the fill minus value before (a sell: value before minus target after)."""
    shares: int
    value_after: int
    deviation_after: int
    """Value after minus target after."""
    tie_rank: int | None
    """1 = first among the accounts whose equal slots competed for the last shares."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """A fill, the split in force, the book total before, and every account's line."""

    fill_id: str
    sequence: int
    allocated_sequence: int | None
    ticker: str
    side: str
    price: int
    quantity: int
    split_id: str
    split_total: int
    policy: str
    """total-value: the amounts are cost values; per-ticker: holdings of the ticker, in
    (micro-)shares."""
    lot_size: int
    """The round lot of the buy (1: whole shares)."""
    restricted: tuple[str, ...]
    """Accounts barred from buying the ticker when the fill was allocated (left out of a
    buy's table: they could receive nothing)."""
    total_before: int
    accounts: tuple[AccountLine, ...]

    def as_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return asdict(self)


def explain(history: JournalHistory, fill_id: str) -> Explanation:
    """The explanation of ``fill_id`` (``HistoryError`` if the journal does not hold it)."""
    event = history.fill_event(fill_id)
    if event is None:
        raise HistoryError(f"fill {fill_id!r} is not in the journal")
    fill = event.fill

    def explanation(split: Split | None, ledger: Ledger | None) -> Explanation:
        return Explanation(
            fill_id=fill.fill_id,
            sequence=event.sequence,
            allocated_sequence=event.allocated_sequence,
            ticker=fill.ticker,
            side=fill.side.value,
            price=fill.price,
            quantity=fill.quantity,
            split_id="" if split is None else split.split_id,
            split_total=0 if split is None else split.total,
            policy=history.policy,
            lot_size=event.journaled.lot_size,
            restricted=()
            if ledger is None
            else tuple(sorted(ledger.restrictions.restricted(fill.ticker))),
            total_before=0
            if ledger is None
            else _micro(ledger.measure(history.policy, fill.ticker, fill.price)[1], history),
            accounts=()
            if split is None or ledger is None
            else tuple(_lines(ledger, split, event.journaled, history.policy)),
        )

    if event.allocated_sequence is None:
        return explanation(None, None)
    ledger = Ledger()
    for item in replay(history, ledger, event.allocated_sequence):
        if isinstance(item, Step) and item.event.fill.fill_id == fill_id:
            return explanation(item.ledger.split, item.ledger)
    raise HistoryError(f"fill {fill_id!r}: no allocation at sequence {event.allocated_sequence}")


def _micro(amount: int, history: JournalHistory) -> int:
    """A measure in micro-units: values already are; per-ticker holdings are whole shares."""
    return amount if history.policy == TOTAL_VALUE else amount * MICRO


def _lines(ledger: Ledger, split: Split, allocation: Allocation, policy: str) -> list[AccountLine]:
    fill = allocation.fill
    buy = fill.side is Side.BUY
    scale = split.total
    shares = dict(allocation.shares)
    values, total, unit = ledger.measure(policy, fill.ticker, fill.price)
    after = total + (unit if buy else -unit) * fill.quantity
    held = ledger.holdings.get(fill.ticker, {})
    if buy:
        barred = ledger.restrictions.restricted(fill.ticker)
        accounts = sorted(a for a, p in split.percents.items() if p > 0 and a not in barred)
        caps = dict.fromkeys(accounts, fill.quantity)
    else:
        accounts = sorted(held)
        caps = dict(held)
    step = scale * unit
    sign = 1 if buy else -1
    # Slot k of account i is worth first[i] - step * k (scaled by S): a buy's shortfall, a sell's
    # excess, against the target after the fill.
    first = {
        a: sign * (split.percents.get(a, 0) * after - scale * values.get(a, 0)) for a in accounts
    }
    # In round lots the slots are lots and the odd lot: the share tie-break does not apply.
    ranks = _tie_ranks(first, shares, caps, step, fill.fill_id) if allocation.lot_size == 1 else {}
    # Shown in micro-units: per-ticker measures (shares) are scaled up so that the fractional
    # targets show too.
    micro = 1 if policy == TOTAL_VALUE else MICRO
    lines = []
    for account in accounts:
        percent = split.percents.get(account, 0)
        before = values.get(account, 0)
        after_fill = before + sign * unit * shares.get(account, 0)
        lines.append(
            AccountLine(
                account=account,
                percent=percent,
                target_before=divide_half_even(percent * total * micro, scale),
                value_before=before * micro,
                shortfall=divide_half_even(first[account] * micro, scale),
                shares=shares.get(account, 0),
                value_after=after_fill * micro,
                deviation_after=after_fill * micro
                - divide_half_even(percent * after * micro, scale),
                tie_rank=ranks.get(account),
            )
        )
    return lines


def _tie_ranks(
    first: dict[str, int], shares: dict[str, int], caps: dict[str, int], step: int, fill_id: str
) -> dict[str, int]:
    """Where equal slots competed for the last shares: each tied account's place in the
    tie-break order. Empty when the cut fell between slots of different value."""
    taken_last = {a: first[a] - step * (x - 1) for a, x in shares.items() if x > 0 and a in first}
    if not taken_last:
        return {}
    cut = min(taken_last.values())
    at_cut = {a for a, value in taken_last.items() if value == cut}
    left_at_cut = {
        a
        for a, value in first.items()
        if shares.get(a, 0) < caps[a] and value - step * shares.get(a, 0) == cut
    }
    if not left_at_cut:
        return {}
    seed = stable_hash64(fill_id)
    tied = sorted(at_cut | left_at_cut, key=lambda a: mix64(stable_hash64(a) ^ seed))
    return {account: rank for rank, account in enumerate(tied, start=1)}
