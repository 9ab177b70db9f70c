"""``audit verify``: every journaled allocation re-derived, certified optimal, and reconciled.

The journal's events are replayed in sequence order into a fresh engine (from nothing, not from
the checkpoint), and for every fill: (1) the engine's answer must equal the journaled
allocation exactly; (2) the journaled allocation must pass ``certificate.check`` against the
ledger (sums, eligibility, no account short, optimal); and the checkpoint's positions rows must
equal the ledger as of the sequence each row was written at, and the counters its totals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.audit.certificate import check
from controller.audit.history import FillEvent, JournalHistory, RestrictionsEvent, SplitEvent
from controller.audit.ledger import Ledger, Step, replay
from controller.book import Book
from controller.domain import Allocation, Rejected, Side


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One thing the journal says that the check does not confirm."""

    sequence: int
    subject: str
    """The fill id, or the positions row / counter concerned."""
    problem: str
    journaled: str
    expected: str


@dataclass(slots=True)
class Verification:
    """What ``verify`` read and found."""

    events: int = 0
    fills: int = 0
    splits: int = 0
    checked: int = 0
    """Allocations checked (those inside the range)."""
    checkpoint_rows: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No mismatch."""
        return not self.mismatches


def describe(answer: Allocation | Rejected | None) -> str:
    """An allocation, refusal or absence as one line."""
    if answer is None:
        return "nothing"
    if isinstance(answer, Rejected):
        return f"refused: {answer.message}"
    if answer.pending:
        return "pending (no split)"
    shares = " ".join(f"{account}:{quantity}" for account, quantity in answer.shares)
    return f"split {answer.split_id}: {shares}"


def verify(
    history: JournalHistory,
    since: int = 0,
    until: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """Check every allocation made at a sequence in ``[since, until]`` (replaying everything
    before it); ``progress(events)`` is called every 1,000 events."""
    result = Verification()
    book = Book(history.tickers(), policy=history.policy)
    ledger = Ledger()
    rows = deque(
        sorted(
            (row for row in history.checkpoint() if until is None or row.as_of <= until),
            key=lambda row: row.as_of,
        )
    )
    # The engine's answers not yet compared, by fill id: an allocation is compared when the
    # journal's step for that fill comes.
    expected: dict[str, Allocation | Rejected] = {}
    # The round lot of each ticker as the journal says it was in force.
    lots: dict[str, int] = {}
    last = 0

    def reconcile(before: int) -> None:
        """Compare the positions rows written as of a sequence below ``before``."""
        while rows and rows[0].as_of < before:
            row = rows.popleft()
            if row.as_of < since:
                continue
            result.checkpoint_rows += 1
            position = row.position
            held = ledger.holdings.get(position.ticker, {}).get(position.account, 0)
            value = ledger.ticker_values.get(position.ticker, {}).get(position.account, 0)
            if (held, value) != (position.quantity, position.value):
                result.mismatches.append(
                    Mismatch(
                        row.as_of,
                        f"positions {position.account}/{position.ticker}",
                        "checkpoint differs from the sum of allocations",
                        f"{position.quantity} shares, value {position.value}",
                        f"{held} shares, value {value}",
                    )
                )

    for item in replay(history, ledger, until):
        if isinstance(item, Step):
            engine = expected.pop(item.event.fill.fill_id, None)
            if since <= item.sequence:
                _check_step(item, engine, result, history.policy)
            continue
        reconcile(item.sequence)
        last = item.sequence
        result.events += 1
        if progress is not None and result.events % 1_000 == 0:
            progress(result.events)
        if isinstance(item, RestrictionsEvent):
            book.set_restrictions(item.restrictions)
            continue
        if isinstance(item, SplitEvent):
            result.splits += 1
            # Fills that waited are allocated now, in the lots in force now (journaled with them).
            lots.update(
                (w.fill.ticker, w.journaled.lot_size)
                for w in ledger.pending
                if w.fill.side is Side.BUY
            )
            book.set_lot_sizes(lots)
            expected.update((a.fill.fill_id, a) for a in book.set_split(item.split))
            continue
        result.fills += 1
        if item.fill.side is Side.BUY and item.allocated_sequence == item.sequence:
            lots[item.fill.ticker] = item.journaled.lot_size
            book.set_lot_sizes(lots)
        try:
            answer: Allocation | Rejected = book.submit(item.fill)
        except Rejected as rejected:
            answer = rejected
        if isinstance(answer, Rejected) or not answer.pending:
            expected[item.fill.fill_id] = answer
        elif item.allocated_sequence == item.sequence:
            expected[item.fill.fill_id] = answer  # the engine holds it; the journal allocated it
    reconcile(last + 1)
    # Answers the journal has no allocation for: the engine allocated a fill the journal holds
    # as pending (or refused one the journal keeps waiting).
    for fill_id, answer in expected.items():
        result.mismatches.append(
            Mismatch(last, fill_id, "the journal did not allocate it", "pending", describe(answer))
        )
    if until is None:
        _check_counters(history, ledger, last, result)
    if progress is not None:
        progress(result.events)
    return result


def _check_step(
    step: Step, answer: Allocation | Rejected | None, result: Verification, policy: str
) -> None:
    event: FillEvent = step.event
    journaled = event.journaled
    result.checked += 1
    subject = journaled.fill.fill_id
    if event.allocated_sequence != step.sequence:
        result.mismatches.append(
            Mismatch(
                step.sequence,
                subject,
                "allocated at another event than the split that released it",
                f"sequence {event.allocated_sequence}",
                f"sequence {step.sequence}",
            )
        )
    if answer != journaled:
        result.mismatches.append(
            Mismatch(
                step.sequence,
                subject,
                "the rule re-run gives another allocation",
                describe(journaled),
                describe(answer),
            )
        )
    for problem in check(step.ledger, journaled, policy):
        result.mismatches.append(Mismatch(step.sequence, subject, problem, describe(journaled), ""))


def _check_counters(
    history: JournalHistory, ledger: Ledger, last: int, result: Verification
) -> None:
    counters = history.counters()
    for name, journaled, derived in (
        ("fill_count", counters.fill_count, ledger.fill_count),
        ("next_sequence", counters.next_sequence, last + 1),
    ):
        if journaled != derived:
            result.mismatches.append(
                Mismatch(
                    last,
                    f"counter {name}",
                    "the counter differs from the events",
                    str(journaled),
                    str(derived),
                )
            )
