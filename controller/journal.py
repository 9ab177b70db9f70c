"""The controller's durable journal: what it stores, the interface every backend implements, and
the row format the backends share.

Every accepted fill (with its allocation), every split and restricted list, and the counters are
written in one transaction per group of requests, committed before any of them is acknowledged.
Positions are a checkpoint written a little at a time: each row holds the absolute values of one
(account, ticker) pair as of the journal sequence in its ``as_of`` column, and
``checkpoint_sequence`` is a low-water mark: every allocation up to it is in the rows. Recovery
reads the rows and replays the allocations journaled after the mark, each onto the pairs whose
row is older than it, so it reads O(accounts + fills since the mark) rows, not the history; fills
are looked up by id on demand, so memory does not grow with the journal.

Two backends implement ``JournalStore``: ``controller.journal_sqlite`` (the embedded default, one
file) and ``controller.journal_postgres`` (a database several controllers share, one leading).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from controller.book import PositionRow
from controller.domain import NO_RESTRICTIONS, Allocation, Fill, Restrictions, Side, Split


class JournalVersionError(RuntimeError):
    """The journal was written by an incompatible version of the controller."""


class JournalDamaged(RuntimeError):
    """The journal fails its integrity check, has a damaged header, or is not a journal."""


class JournalPolicyError(RuntimeError):
    """The journal was created under another allocation policy than the one asked for."""


class JournalLocked(RuntimeError):
    """Another running controller holds the journal."""


class JournalFenced(RuntimeError):
    """Another controller took the lead: this one's writes are refused (it must step down)."""


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """A PostgreSQL journal: a libpq connection URL."""

    url: str

    def __str__(self) -> str:
        """The URL with any password masked, for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


JournalTarget = Path | PostgresTarget


def journal_path(text: str) -> Path:
    """argparse type for an SQLite journal: a file path or ``sqlite:///path``; anything else
    (another scheme, a directory) is an error naming what is understood."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "sqlite" or not rest.startswith("/"):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a journal this tool understands: give a file path or"
                " sqlite:///absolute/path"
            )
        text = rest
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the journal's file path")
    return path


def journal_target(text: str) -> JournalTarget:
    """argparse type for the controller's ``--db``: ``postgresql://...`` (or ``postgres://``,
    any libpq URL) selects PostgreSQL; a path or ``sqlite:///path`` selects SQLite."""
    scheme = text.partition("://")[0] if "://" in text else ""
    if scheme in ("postgresql", "postgres"):
        if not urlsplit(text).path.strip("/"):
            raise argparse.ArgumentTypeError(
                f"{text!r} names no database; give postgresql://user@host:port/dbname"
            )
        return PostgresTarget(text)
    try:
        return journal_path(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a journal this controller understands: give a file path,"
            " sqlite:///absolute/path or postgresql://user@host:port/dbname"
        ) from None


@dataclass(frozen=True, slots=True)
class StoredFill:
    """A journaled fill: its place in the journal and its allocation (pending if no split)."""

    sequence: int
    allocation: Allocation


@dataclass(frozen=True, slots=True)
class StoredSplit:
    """A journaled split and its place in the journal."""

    sequence: int
    split: Split


@dataclass(frozen=True, slots=True)
class StoredRestrictions:
    """A journaled restricted list and its place in the journal."""

    sequence: int
    restrictions: Restrictions


@dataclass(frozen=True, slots=True)
class Counters:
    """Running totals, exact as of every commit."""

    next_sequence: int = 1
    fill_count: int = 0
    report_sequence: int = 0
    checkpoint_sequence: int = 0
    """The positions table holds every allocation made up to this journal sequence (rows
    may be newer: see their ``as_of``)."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """Everything needed to rebuild the book after a restart."""

    counters: Counters
    positions: list[PositionRow]
    split: Split | None
    last_prices: dict[str, int]
    pending: list[Fill]
    restrictions: Restrictions = NO_RESTRICTIONS


@dataclass(slots=True)
class JournalBatch:
    """What one group commit writes."""

    new_fills: list[StoredFill] = field(default_factory=list)
    released: list[tuple[int, Allocation]] = field(default_factory=list)
    """Pending fills allocated by the split journaled at the given sequence."""
    splits: list[StoredSplit] = field(default_factory=list)
    restrictions: list[StoredRestrictions] = field(default_factory=list)
    checkpoint: list[PositionRow] = field(default_factory=list)
    """Positions (absolute values) to write, as of ``checkpoint_as_of``."""
    checkpoint_as_of: int = 0
    checkpoint_prices: dict[str, int] = field(default_factory=dict)
    recorded_ns: int | None = None
    """When the group was journaled (wall clock), stored with its fills and splits."""


class JournalStore(Protocol):
    """What the sequencer and the controller's main need of a journal; all methods are called
    by one thread at a time: whichever holds the sequencer's writer turn (or before it starts)."""

    journal_id: str
    """Made when the journal was created; reports carry it."""
    policy: str
    """The allocation policy the journal was created under."""

    def recover(self) -> Recovered:
        """Read the aggregated state written by earlier runs."""

    def find_fills(self, fill_ids: Collection[str]) -> dict[str, StoredFill]:
        """The journaled fills among ``fill_ids``, by id."""

    def find_split(self, split_id: str) -> StoredSplit | None:
        """The journaled split with this id, if any."""

    def find_restrictions(self, restrictions_id: str) -> StoredRestrictions | None:
        """The journaled restricted list with this id, if any."""

    def write(self, batch: JournalBatch, counters: Counters) -> None:
        """Write one group of events and the new counters in a single committed transaction."""

    def check_integrity(self) -> None:
        """Raise ``JournalDamaged`` if the stored journal is damaged."""

    def close(self) -> None:
        """Release the journal (everything written is committed)."""


# The row format both backends store. Amounts in micro-units. An allocation is two
# comma-separated lists in its fill's row (account names cannot contain commas: see
# controller.validation.ACCOUNT).
FILL_COLUMNS = (
    "fill_id, sequence, ticker, price, quantity, sell, execute_time_ns, split_id, accounts,"
    " quantities, allocated_sequence, lot_size"
)
SPLIT_COLUMNS = "sequence, split_id, percents, effective_time_ns"
RESTRICTIONS_COLUMNS = "sequence, restrictions_id, accounts"
# The allocations recovery replays, in the order they were made.
REPLAY_COLUMNS = "allocated_sequence, ticker, price, sell, accounts, quantities"
REPLAY_ORDER = "ORDER BY allocated_sequence, sequence"

FillRow = tuple[
    str, int, str, int, int, int, int | None, str | None, str | None, str | None, int | None,
    int | None,
]  # fmt: skip
ReplayRow = tuple[int, str, int, int, str, str]
Checkpoint = dict[tuple[str, str], tuple[int, int, int]]


def fill_row(stored: StoredFill, recorded_ns: int | None) -> tuple[object, ...]:
    """The row of a newly journaled fill (``FILL_COLUMNS`` then ``recorded_ns``)."""
    allocation = stored.allocation
    fill = allocation.fill
    pending = allocation.pending
    return (
        fill.fill_id,
        stored.sequence,
        fill.ticker,
        fill.price,
        fill.quantity,
        int(fill.side is Side.SELL),
        fill.execute_time_ns,
        None if pending else allocation.split_id,
        None if pending else ",".join(allocation.accounts),
        None if pending else _join_ints(allocation.quantities),
        None if pending else stored.sequence,
        None if pending else _lot_column(allocation),
        recorded_ns,
    )


def released_row(sequence: int, allocation: Allocation) -> tuple[object, ...]:
    """The columns a released pending fill gets: split_id, accounts, quantities,
    allocated_sequence, lot_size, then the fill id to update."""
    return (
        allocation.split_id,
        ",".join(allocation.accounts),
        _join_ints(allocation.quantities),
        sequence,
        _lot_column(allocation),
        allocation.fill.fill_id,
    )


def split_row(stored: StoredSplit, recorded_ns: int | None) -> tuple[object, ...]:
    """The row of a journaled split (``SPLIT_COLUMNS`` then ``recorded_ns``)."""
    split = stored.split
    return (
        stored.sequence,
        split.split_id,
        json.dumps(split.percents),
        split.effective_time_ns,
        recorded_ns,
    )


def restrictions_row(stored: StoredRestrictions, recorded_ns: int | None) -> tuple[object, ...]:
    """The row of a journaled restricted list (``RESTRICTIONS_COLUMNS`` then ``recorded_ns``)."""
    restrictions = stored.restrictions
    return (
        stored.sequence,
        restrictions.restrictions_id,
        restrictions_json(restrictions),
        recorded_ns,
    )


def counter_rows(counters: Counters) -> list[tuple[str, int]]:
    """Every counter as a (name, value) row."""
    return [(name, getattr(counters, name)) for name in Counters.__slots__]


def counters_from_rows(rows: Iterable[tuple[str, int]]) -> Counters:
    """The counters stored as rows; names no longer kept (version 1's "gross") are ignored."""
    stored = dict(rows)
    return Counters(**{name: stored[name] for name in Counters.__slots__ if name in stored})


def stored_fill(row: FillRow) -> StoredFill:
    """The journaled fill a row of ``FILL_COLUMNS`` holds."""
    (fill_id, sequence, ticker, price, quantity, sell, time_ns, split_id, accounts, quantities,
     _, lot) = row  # fmt: skip
    fill = Fill(fill_id, ticker, price, quantity, Side.SELL if sell else Side.BUY, time_ns)
    allocation = Allocation(
        fill=fill,
        split_id=split_id or "",
        accounts=tuple(accounts.split(",")) if accounts else (),
        quantities=_split_ints(quantities) if quantities else (),
        lot_size=lot or 1,
    )
    return StoredFill(sequence, allocation)


def stored_split(row: tuple[int, str, str, int | None]) -> StoredSplit:
    """The journaled split a row of ``SPLIT_COLUMNS`` holds."""
    sequence, split_id, percents, effective_time_ns = row
    return StoredSplit(sequence, Split(split_id, json.loads(percents), effective_time_ns))


def stored_restrictions(row: tuple[int, str, str]) -> StoredRestrictions:
    """The journaled restricted list a row of ``RESTRICTIONS_COLUMNS`` holds."""
    sequence, restrictions_id, accounts = row
    return StoredRestrictions(sequence, restrictions_from_json(restrictions_id, accounts))


def replay(
    checkpoint: Checkpoint, checkpoint_prices: Mapping[str, int], replayed: Iterable[ReplayRow]
) -> tuple[list[PositionRow], dict[str, int]]:
    """Checkpointed positions and last prices, plus every replayed allocation (rows of
    ``REPLAY_COLUMNS`` after the low-water mark, in ``REPLAY_ORDER``) that is newer than its
    pair's row."""
    last_prices = dict(checkpoint_prices)
    totals = {pair: [quantity, value] for pair, (quantity, value, _) in checkpoint.items()}
    for sequence, ticker, price, sell, accounts, quantities in replayed:
        sign = -1 if sell else 1
        for account, quantity in zip(accounts.split(","), _split_ints(quantities), strict=True):
            row = checkpoint.get((account, ticker))
            if row is not None and row[2] >= sequence:
                continue  # the row was written after this allocation: it holds it already
            total = totals.setdefault((account, ticker), [0, 0])
            total[0] += sign * quantity
            total[1] += sign * quantity * price
        last_prices[ticker] = price
    positions = [PositionRow(a, t, q, v) for (a, t), (q, v) in sorted(totals.items())]
    return positions, last_prices


class Execute(Protocol):
    """A connection's ``execute``: runs one statement and returns a cursor over its rows (both
    ``sqlite3`` and psycopg connections have one)."""

    def __call__(self, query: str, parameters: tuple[object, ...] = ..., /) -> Any:
        """The cursor of ``query`` run with ``parameters``."""


def recover_journal(execute: Execute, mark: str) -> Recovered:
    """The state a backend's rows hold (see the module docstring); ``mark`` is the backend's
    placeholder (``?`` or ``%s``). The caller makes the reads one consistent snapshot."""
    counters = counters_from_rows(execute("SELECT name, value FROM counters"))
    checkpoint = {
        (account, ticker): (quantity, value, as_of)
        for account, ticker, quantity, value, as_of in execute(
            "SELECT account, ticker, quantity, value, as_of FROM positions"
        )
    }
    split = execute(f"SELECT {SPLIT_COLUMNS} FROM splits ORDER BY sequence DESC LIMIT 1").fetchone()
    pending = [
        stored_fill(row).allocation.fill
        for row in execute(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE split_id IS NULL ORDER BY sequence"
        )
    ]
    positions, last_prices = replay(
        checkpoint,
        dict(execute("SELECT ticker, price FROM last_prices").fetchall()),
        execute(
            f"SELECT {REPLAY_COLUMNS} FROM fills WHERE allocated_sequence > {mark} {REPLAY_ORDER}",
            (counters.checkpoint_sequence,),
        ),
    )
    restricted = execute(
        f"SELECT {RESTRICTIONS_COLUMNS} FROM restrictions ORDER BY sequence DESC LIMIT 1"
    ).fetchone()
    return Recovered(
        counters=counters,
        positions=positions,
        split=stored_split(split).split if split else None,
        last_prices=last_prices,
        pending=pending,
        restrictions=(
            stored_restrictions(restricted).restrictions if restricted else NO_RESTRICTIONS
        ),
    )


class ExecuteMany(Protocol):
    """A connection's or cursor's ``executemany``."""

    def __call__(self, query: str, rows: Iterable[Sequence[object]], /) -> Any:
        """Run ``query`` once per row."""


# Rows one INSERT statement writes at most. Python's sqlite3 releases the GIL around every step
# of a statement, and getting it back from a busy thread can take the whole switch interval
# (5 ms): one statement per row made a 400-row commit wait for the GIL hundreds of times.
ROWS_PER_INSERT = 256
# Below ROWS_PER_INSERT a chunk is a multiple of this many rows, then the rest: at most
# 256 / 16 + 15 = 31 statement texts per table, each prepared once and then cached (preparing a
# 300-row statement afresh doubled its cost), and at most two statements below 256 rows.
ROW_GRANULE = 16


def insert_rows(
    executemany: ExecuteMany,
    insert: str,
    row_marks: str,
    rows: Sequence[Sequence[object]],
    suffix: str = "",
    many_per_statement: bool = True,
) -> None:
    """``insert`` (``INSERT INTO t (columns) VALUES ``) of every row, then ``suffix`` (an
    ``ON CONFLICT`` clause), many rows per statement unless ``many_per_statement`` is off
    (``row_marks`` is one row's ``(?, ...)``)."""
    if not many_per_statement:
        executemany(insert + row_marks + suffix, rows)
        return
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = min(ROWS_PER_INSERT, left if left < ROW_GRANULE else left - left % ROW_GRANULE)
        chunk = rows[start : start + size]
        executemany(
            insert + ", ".join([row_marks] * size) + suffix, [list(chain.from_iterable(chunk))]
        )
        start += size


def write_batch(
    executemany: ExecuteMany,
    mark: str,
    batch: JournalBatch,
    counters: Counters,
    many_per_statement: bool = True,
) -> None:
    """Every row of one group and the counters, inside the caller's transaction (``mark`` as for
    ``recover_journal``; the upserts are the SQL both SQLite and PostgreSQL understand), many
    rows per INSERT statement unless ``many_per_statement`` is off (see ``insert_rows``)."""

    def values(count: int) -> str:
        return ", ".join([mark] * count)

    recorded = batch.recorded_ns
    insert_rows(
        executemany,
        f"INSERT INTO fills ({FILL_COLUMNS}, recorded_ns) VALUES ",
        f"({values(13)})",
        [fill_row(stored, recorded) for stored in batch.new_fills],
        many_per_statement=many_per_statement,
    )
    executemany(
        f"UPDATE fills SET split_id = {mark}, accounts = {mark}, quantities = {mark},"
        f" allocated_sequence = {mark}, lot_size = {mark} WHERE fill_id = {mark}",
        [released_row(sequence, a) for sequence, a in batch.released],
    )
    executemany(
        f"INSERT INTO splits ({SPLIT_COLUMNS}, recorded_ns) VALUES ({values(5)})",
        [split_row(s, recorded) for s in batch.splits],
    )
    executemany(
        f"INSERT INTO restrictions ({RESTRICTIONS_COLUMNS}, recorded_ns) VALUES ({values(4)})",
        [restrictions_row(r, recorded) for r in batch.restrictions],
    )
    as_of = batch.checkpoint_as_of
    insert_rows(
        executemany,
        "INSERT INTO positions (account, ticker, quantity, value, as_of) VALUES ",
        f"({values(5)})",
        [(r.account, r.ticker, r.quantity, r.value, as_of) for r in batch.checkpoint],
        " ON CONFLICT (account, ticker) DO UPDATE SET"
        " quantity = excluded.quantity, value = excluded.value, as_of = excluded.as_of",
        many_per_statement=many_per_statement,
    )
    insert_rows(
        executemany,
        "INSERT INTO last_prices (ticker, price) VALUES ",
        f"({values(2)})",
        list(batch.checkpoint_prices.items()),
        " ON CONFLICT (ticker) DO UPDATE SET price = excluded.price",
        many_per_statement=many_per_statement,
    )
    insert_rows(
        executemany,
        "INSERT INTO counters (name, value) VALUES ",
        f"({values(2)})",
        counter_rows(counters),
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        many_per_statement=many_per_statement,
    )


def find_split(execute: Execute, mark: str, split_id: str) -> StoredSplit | None:
    """The journaled split with this id, if any (``mark`` as for ``recover_journal``)."""
    row = execute(f"SELECT {SPLIT_COLUMNS} FROM splits WHERE split_id = {mark}", (split_id,))
    found = row.fetchone()
    return stored_split(found) if found else None


def find_restrictions(
    execute: Execute, mark: str, restrictions_id: str
) -> StoredRestrictions | None:
    """The journaled restricted list with this id, if any."""
    row = execute(
        f"SELECT {RESTRICTIONS_COLUMNS} FROM restrictions WHERE restrictions_id = {mark}",
        (restrictions_id,),
    )
    found = row.fetchone()
    return stored_restrictions(found) if found else None


def restrictions_json(restrictions: Restrictions) -> str:
    """A restricted list as stored: account -> sorted tickers, accounts sorted."""
    return json.dumps(
        {account: sorted(tickers) for account, tickers in sorted(restrictions.accounts.items())}
    )


def restrictions_from_json(restrictions_id: str, text: str) -> Restrictions:
    """The restricted list ``restrictions_json`` stored."""
    return Restrictions(
        restrictions_id, {account: frozenset(t) for account, t in json.loads(text).items()}
    )


def _lot_column(allocation: Allocation) -> int | None:
    """The lot a buy was allocated in; NULL for whole shares."""
    return allocation.lot_size if allocation.lot_size > 1 else None


# The text of small quantities, looked up instead of formatted: a third of the time of a
# 100-receiver row.
_SMALL_INT_TEXT = {value: str(value) for value in range(1024)}


def _join_ints(values: tuple[int, ...]) -> str:
    try:
        return ",".join(map(_SMALL_INT_TEXT.__getitem__, values))
    except KeyError:
        return ",".join(map(str, values))


def _split_ints(text: str) -> tuple[int, ...]:
    return tuple(map(int, text.split(",")))
