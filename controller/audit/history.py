"""Read-only access to a journal's history: its events in sequence order, and what the
checkpoint holds.

The audit tool only reads: a SQLite journal is opened read-only (``mode=ro``), never locked,
and read through WAL snapshots, so it is safe beside a running controller (it sees what was
committed when each query began). ``JournalHistory`` is the narrow interface the audit
commands need; ``SqliteHistory`` implements it for the embedded journal.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.book import PositionRow
from controller.domain import Allocation, Fill, Restrictions, Side, Split
from controller.journal import Counters, restrictions_from_json
from controller.journal_sqlite import SCHEMA_VERSION
from controller.policy import TOTAL_VALUE


class HistoryError(RuntimeError):
    """The journal cannot be read as asked (missing, another version, an unknown fill)."""


@dataclass(frozen=True, slots=True)
class FillEvent:
    """A fill as it was sequenced, with the allocation the journal holds for it."""

    sequence: int
    journaled: Allocation
    """Pending (no split, no accounts) when the fill was never allocated."""
    allocated_sequence: int | None
    """The event that allocated it: its own sequence, or a later split's (it waited)."""
    recorded_ns: int | None

    @property
    def fill(self) -> Fill:
        """The fill itself."""
        return self.journaled.fill


@dataclass(frozen=True, slots=True)
class SplitEvent:
    """A split as it was sequenced."""

    sequence: int
    split: Split
    recorded_ns: int | None


@dataclass(frozen=True, slots=True)
class RestrictionsEvent:
    """A restricted list as it was sequenced."""

    sequence: int
    restrictions: Restrictions
    recorded_ns: int | None


Event = FillEvent | SplitEvent | RestrictionsEvent


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A positions row: an account's holding of a ticker as of journal sequence ``as_of``."""

    position: PositionRow
    as_of: int


class JournalHistory(Protocol):
    """What the audit commands read from a journal."""

    journal_id: str
    policy: str
    """The allocation policy the journal was created with (``controller.policy``)."""

    def counters(self) -> Counters:
        """The counters as last committed."""
        ...

    def event_count(self, until: int | None = None) -> int:
        """How many events (fills and splits) have a sequence up to ``until`` (all if None)."""
        ...

    def events(self, until: int | None = None) -> Iterator[Event]:
        """Every event with a sequence up to ``until``, in sequence order."""
        ...

    def fill_event(self, fill_id: str) -> FillEvent | None:
        """One fill's event, if the journal has it."""
        ...

    def checkpoint(self) -> list[CheckpointRow]:
        """Every positions row of the checkpoint."""
        ...

    def sequence_at(self, time_ns: int) -> int:
        """The last sequence journaled at or before ``time_ns`` (0 when none)."""
        ...

    def tickers(self) -> list[str]:
        """Every ticker a journaled fill names, sorted."""
        ...

    def close(self) -> None:
        """Release the journal."""
        ...


_FILL_COLUMNS = (
    "sequence, fill_id, ticker, price, quantity, sell, execute_time_ns, split_id, accounts,"
    " quantities, allocated_sequence, recorded_ns, lot_size"
)


def _fill_event(row: tuple[object, ...]) -> FillEvent:
    (sequence, fill_id, ticker, price, quantity, sell, time_ns, split_id, accounts, qs, allocated,
     recorded, lot) = row  # fmt: skip
    fill = Fill(
        str(fill_id),
        str(ticker),
        int(price),  # type: ignore[call-overload]
        int(quantity),  # type: ignore[call-overload]
        Side.SELL if sell else Side.BUY,
        None if time_ns is None else int(time_ns),  # type: ignore[call-overload]
    )
    allocation = Allocation(
        fill=fill,
        split_id=str(split_id or ""),
        accounts=tuple(str(accounts).split(",")) if accounts else (),
        quantities=tuple(map(int, str(qs).split(","))) if qs else (),
        lot_size=int(lot) if lot else 1,  # type: ignore[call-overload]
    )
    return FillEvent(
        int(sequence),  # type: ignore[call-overload]
        allocation,
        None if allocated is None else int(allocated),  # type: ignore[call-overload]
        None if recorded is None else int(recorded),  # type: ignore[call-overload]
    )


class SqliteHistory:
    """``JournalHistory`` of a SQLite journal, opened read-only."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` read-only; ``HistoryError`` if it is missing or of another version."""
        if not path.is_file():
            raise HistoryError(f"{path}: no such journal")
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise HistoryError(f"{path} is not a readable journal: {error}") from error
        if version != SCHEMA_VERSION:
            self._db.close()
            raise HistoryError(
                f"{path} has journal schema version {version}; the audit tool reads version"
                f" {SCHEMA_VERSION} (start this version's controller on it once to upgrade it)"
            )
        self.journal_id: str = self._db.execute(
            "SELECT value FROM meta WHERE name='journal_id'"
        ).fetchone()[0]
        # Journals older than the choice of policy were all made under total-value.
        row = self._db.execute("SELECT value FROM meta WHERE name='policy'").fetchone()
        self.policy: str = TOTAL_VALUE if row is None else row[0]

    def counters(self) -> Counters:
        """The counters as last committed."""
        stored = dict(self._db.execute("SELECT name, value FROM counters"))
        return Counters(**{name: stored[name] for name in Counters.__slots__ if name in stored})

    def event_count(self, until: int | None = None) -> int:
        """How many events have a sequence up to ``until``."""
        limit = _limit(until)
        fills = self._db.execute("SELECT count(*) FROM fills WHERE sequence <= ?", (limit,))
        others = self._db.execute(
            "SELECT (SELECT count(*) FROM splits WHERE sequence <= ?1)"
            " + (SELECT count(*) FROM restrictions WHERE sequence <= ?1)",
            (limit,),
        )
        return int(fills.fetchone()[0]) + int(others.fetchone()[0])

    def events(self, until: int | None = None) -> Iterator[Event]:
        """Fills, splits and restricted lists merged in sequence order (the last two are few:
        read at once)."""
        limit = _limit(until)
        splits: list[SplitEvent | RestrictionsEvent] = [
            SplitEvent(sequence, Split(split_id, json.loads(percents), effective), recorded)
            for sequence, split_id, percents, effective, recorded in self._db.execute(
                "SELECT sequence, split_id, percents, effective_time_ns, recorded_ns FROM splits"
                " WHERE sequence <= ?",
                (limit,),
            )
        ]
        splits += [
            RestrictionsEvent(sequence, restrictions_from_json(restrictions_id, accounts), recorded)
            for sequence, restrictions_id, accounts, recorded in self._db.execute(
                "SELECT sequence, restrictions_id, accounts, recorded_ns FROM restrictions"
                " WHERE sequence <= ?",
                (limit,),
            )
        ]
        splits.sort(key=lambda event: event.sequence)
        # A cursor of its own: the merge below reads it while the caller works.
        cursor = self._db.cursor()
        cursor.arraysize = 1024
        cursor.execute(
            f"SELECT {_FILL_COLUMNS} FROM fills WHERE sequence <= ? ORDER BY sequence", (limit,)
        )
        next_split = 0
        while rows := cursor.fetchmany():
            for row in rows:
                event = _fill_event(row)
                while next_split < len(splits) and splits[next_split].sequence < event.sequence:
                    yield splits[next_split]
                    next_split += 1
                yield event
        yield from splits[next_split:]

    def fill_event(self, fill_id: str) -> FillEvent | None:
        """One fill's event, by id."""
        row = self._db.execute(
            f"SELECT {_FILL_COLUMNS} FROM fills WHERE fill_id = ?", (fill_id,)
        ).fetchone()
        return None if row is None else _fill_event(row)

    def checkpoint(self) -> list[CheckpointRow]:
        """Every positions row."""
        return [
            CheckpointRow(PositionRow(account, ticker, quantity, value), as_of)
            for account, ticker, quantity, value, as_of in self._db.execute(
                "SELECT account, ticker, quantity, value, as_of FROM positions"
            )
        ]

    def sequence_at(self, time_ns: int) -> int:
        """The last sequence recorded at or before ``time_ns``."""
        row = self._db.execute(
            "SELECT max(s) FROM (SELECT max(sequence) AS s FROM fills WHERE recorded_ns <= ?1"
            " UNION ALL SELECT max(sequence) FROM splits WHERE recorded_ns <= ?1"
            " UNION ALL SELECT max(sequence) FROM restrictions WHERE recorded_ns <= ?1)",
            (time_ns,),
        ).fetchone()
        return int(row[0] or 0)

    def tickers(self) -> list[str]:
        """Every ticker a journaled fill names."""
        return [t for (t,) in self._db.execute("SELECT DISTINCT ticker FROM fills ORDER BY 1")]

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _limit(until: int | None) -> int:
    return (1 << 62) if until is None else until


def open_history(target: Path) -> JournalHistory:
    """The history of the journal ``--db`` names (a path; other backends plug in here)."""
    return SqliteHistory(target)
