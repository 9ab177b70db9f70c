"""A journal written by a seeded simulation, for the audit tool's tests and benchmark.

The simulators' own fill and split generators feed a real sequencer and journal in-process:
fills before the first split wait as pending, splits change every ``split_every`` fills, about a
fifth of fills sell out of what was bought, and the controller can be stopped and recovered in
the middle (``restart_at``), as a crash and restart would leave the journal.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.book import Book
from controller.domain import Fill, Rejected, Restrictions
from controller.journal_sqlite import SqliteJournal
from controller.policy import TOTAL_VALUE
from controller.sequencer import Sequencer
from controller.validation import DEFAULT_TICKERS, parse_fill, parse_split
from simulators.aum import random_split
from simulators.fills import FillGenerator

BATCH = 500


def simulate(
    path: Path,
    fills: int,
    seed: int,
    *,
    accounts: int = 10,
    split_every: int = 5_000,
    pending_first: int = 50,
    restart_at: int | None = None,
    tickers: Sequence[str] = DEFAULT_TICKERS,
    policy: str = TOTAL_VALUE,
    restrict: bool = False,
    lot_sizes: Mapping[str, int] | None = None,
) -> None:
    """Write a journal of ``fills`` fills at ``path``: ``pending_first`` of them before the
    first split, a new random split over ``accounts`` accounts every ``split_every`` fills, and a
    stop and recovery after ``restart_at`` fills. With ``restrict``, each split comes with a
    new restricted list barring a few accounts from a few tickers; ``lot_sizes`` are round lots
    (the second half of the run, after the restart, uses none, as a changed configuration
    would)."""
    rng = random.Random(seed)
    generator = FillGenerator(seed, "sim", tuple(tickers), 0.2)
    journal = SqliteJournal(path, synchronous="OFF", policy=policy)
    sequencer = Sequencer(
        Book(tickers, policy=policy, lot_sizes=lot_sizes), journal, checkpoint_interval=0.5
    )
    sequencer.start()
    done = splits = 0
    next_split = pending_first
    try:
        while done < fills:
            if done == next_split:
                splits += 1
                split = parse_split(random_split(rng, accounts, f"split-{splits}"))
                if restrict:
                    barred = rng.sample(sorted(split.percents), max(1, accounts // 4))
                    sequencer.set_restrictions(
                        Restrictions(
                            f"restricted-{splits}",
                            {a: frozenset(rng.sample(list(tickers), 3)) for a in barred},
                        )
                    )
                sequencer.set_split(split)
                next_split += split_every
            if done == restart_at:
                sequencer.stop()
                journal.close()
                journal = SqliteJournal(path, synchronous="OFF", policy=policy)
                sequencer = Sequencer(
                    Book(tickers, policy=policy), journal, checkpoint_interval=0.5
                )
                sequencer.start()
            stops = [fills, next_split] + ([restart_at] if restart_at and restart_at > done else [])
            size = min(BATCH, *(stop - done for stop in stops if stop > done))
            batch: list[Fill | Rejected] = [
                parse_fill(generator.next(), tickers) for _ in range(size)
            ]
            refused = [o.rejection for o in sequencer.submit_fills(batch) if o.rejection]
            if refused:
                raise RuntimeError(
                    f"the simulation made a fill the controller refused: {refused[0]}"
                )
            done += size
    finally:
        sequencer.stop()
        journal.close()
