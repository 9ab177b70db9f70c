"""The controller's durable journal: SQLite in WAL mode, one writer.

Every accepted fill (with its allocation), every split and the counters are written in one
transaction per group of requests, and committed before any of them is acknowledged. Positions
are a checkpoint written a little at a time: each row holds the absolute values of one
(account, ticker) pair as of the journal sequence in its ``as_of`` column, and
``checkpoint_sequence`` is a low-water mark: every allocation up to it is in the rows. Recovery
reads the rows and replays the allocations journaled after the mark, each onto the pairs whose
row is older than it, so it reads O(accounts + fills since the mark) rows, not the history; fills
are looked up by id on demand, so memory does not grow with the journal.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from controller.book import PositionRow
from controller.domain import NO_RESTRICTIONS, Allocation, Fill, Restrictions, Side, Split
from controller.policy import TOTAL_VALUE

log = logging.getLogger(__name__)

# Seconds between WAL checkpoints, made by a background thread on its own connection: SQLite's
# automatic checkpoint runs inside a commit and stalled it for up to 70 ms on large books.
WAL_CHECKPOINT_SECONDS = 1.0

# Stored in SQLite's user_version; a journal of another version is refused, not misread.
# Version 2 added the journal's identity (the meta table) and per-row checkpoint sequences
# (positions.as_of); version 3 the time each fill and split was journaled (recorded_ns), which
# the audit tool's time ranges use. Older journals are upgraded in place (their earlier rows
# have no recorded time); version 4 the restricted lists (restrictions) and the round lot
# each buy was allocated in (fills.lot_size).
SCHEMA_VERSION = 4


class JournalVersionError(RuntimeError):
    """The journal file was written by an incompatible version of the controller."""


class JournalDamaged(RuntimeError):
    """The file fails the integrity check, has a damaged header, or is not a journal."""


class JournalPolicyError(RuntimeError):
    """The journal was created under another allocation policy than the one asked for."""


class JournalLocked(RuntimeError):
    """Another running controller holds the journal."""


class JournalLock:
    """An exclusive lock on ``<journal>.lock`` held while a controller runs, naming its holder
    (pid, host, start time) in the file. The kernel drops it when the holder dies."""

    def __init__(self, journal: Path) -> None:
        """Take the lock or raise ``JournalLocked`` naming the holder."""
        self._path = journal.with_name(journal.name + ".lock")
        self._file = self._path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "an unknown process"
            self._file.close()
            raise JournalLocked(f"{journal} is in use by {holder}") from None
        self._file.seek(0)
        self._file.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._file.write(f"controller pid {os.getpid()} on {socket.gethostname()} since {started}")
        self._file.flush()

    def release(self) -> None:
        """Give the lock up (closing the file drops it)."""
        self._file.close()


def journal_path(text: str) -> Path:
    """argparse type for ``--db``: a file path or ``sqlite:///path``; anything else (another
    scheme, a directory) is an error naming what is understood."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "sqlite" or not rest.startswith("/"):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a journal this controller understands: give a file path or"
                " sqlite:///absolute/path"
            )
        text = rest
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the journal's file path")
    return path


_SCHEMA = """
CREATE TABLE IF NOT EXISTS fills (
    fill_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    ticker TEXT NOT NULL,
    price INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    sell INTEGER NOT NULL,
    execute_time_ns INTEGER,
    split_id TEXT,
    accounts TEXT,
    quantities TEXT,
    allocated_sequence INTEGER,
    recorded_ns INTEGER,
    lot_size INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fills_pending ON fills (sequence) WHERE split_id IS NULL;
CREATE INDEX IF NOT EXISTS fills_allocated ON fills (allocated_sequence);
CREATE TABLE IF NOT EXISTS splits (
    sequence INTEGER PRIMARY KEY,
    split_id TEXT NOT NULL UNIQUE,
    percents TEXT NOT NULL,
    effective_time_ns INTEGER,
    recorded_ns INTEGER
);
CREATE TABLE IF NOT EXISTS positions (
    account TEXT NOT NULL,
    ticker TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    value INTEGER NOT NULL,
    as_of INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account, ticker)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restrictions (
    sequence INTEGER PRIMARY KEY,
    restrictions_id TEXT NOT NULL UNIQUE,
    accounts TEXT NOT NULL,
    recorded_ns INTEGER
);
CREATE TABLE IF NOT EXISTS last_prices (ticker TEXT PRIMARY KEY, price INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Identity of the journal, made once: reports carry it so that their sequences are compared only
# with reports of the same journal.
_META = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('journal_id', '{journal_id}');
"""
# Version 1 checkpointed every row at once, as of checkpoint_sequence.
_UPGRADE_FROM_3 = """
ALTER TABLE fills ADD COLUMN lot_size INTEGER;
CREATE TABLE IF NOT EXISTS restrictions (
    sequence INTEGER PRIMARY KEY,
    restrictions_id TEXT NOT NULL UNIQUE,
    accounts TEXT NOT NULL,
    recorded_ns INTEGER
);
"""
_UPGRADE_FROM_2 = (
    """
ALTER TABLE fills ADD COLUMN recorded_ns INTEGER;
ALTER TABLE splits ADD COLUMN recorded_ns INTEGER;
"""
    + _UPGRADE_FROM_3
)
_UPGRADE_FROM_1 = (
    """
ALTER TABLE positions ADD COLUMN as_of INTEGER NOT NULL DEFAULT 0;
UPDATE positions SET as_of = coalesce(
    (SELECT value FROM counters WHERE name = 'checkpoint_sequence'), 0);
"""
    + _UPGRADE_FROM_2
)
_SCRIPTS = {0: _SCHEMA, 1: _UPGRADE_FROM_1, 2: _UPGRADE_FROM_2, 3: _UPGRADE_FROM_3}

# Amounts in micro-units. An allocation is two comma-separated lists in its fill's row (account
# names cannot contain commas: see controller.validation.ACCOUNT).
_FILL_COLUMNS = (
    "fill_id, sequence, ticker, price, quantity, sell, execute_time_ns, split_id, accounts,"
    " quantities, allocated_sequence, lot_size"
)


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


class Journal:
    """SQLite journal; all methods must be called from the single writer thread."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        lock: bool = True,
        policy: str = TOTAL_VALUE,
    ) -> None:
        """Open (or create) the journal at ``path``; ``synchronous`` is SQLite's FULL or NORMAL.
        A new journal records ``policy``; an existing one made under another policy is refused
        (``JournalPolicyError``).

        With ``lock`` (the controller) the journal is held exclusively until ``close``: a second
        holder gets ``JournalLocked`` naming the first. An existing journal must pass SQLite's
        integrity check (``JournalDamaged`` otherwise, as for a file that is not a journal).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = JournalLock(path) if lock else None
        self._integrity: _IntegrityCheck | None = None
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                version = self._open(path, synchronous)
            except BaseException as error:
                self._db.close()
                if isinstance(error, sqlite3.DatabaseError):
                    raise JournalDamaged(f"{path} is not a readable journal: {error}") from error
                raise
            self._checkpointer = _WalCheckpointer(path, synchronous)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        if version != SCHEMA_VERSION:
            script = _SCRIPTS[version] + _META.format(journal_id=uuid.uuid4())
            self._db.executescript(f"BEGIN; {script} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        # Made when the journal was created; never changes.
        self.journal_id: str = self._db.execute(
            "SELECT value FROM meta WHERE name='journal_id'"
        ).fetchone()[0]
        # The allocation policy is fixed at creation: journals older than the choice were all
        # made under total-value.
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('policy', ?)",
                (policy if version == 0 else TOTAL_VALUE,),
            )
        self.policy: str = self._db.execute(
            "SELECT value FROM meta WHERE name='policy'"
        ).fetchone()[0]
        if self.policy != policy:
            self.close()
            raise JournalPolicyError(
                f"{path} was created with --policy {self.policy}; start with --policy"
                f" {self.policy} (its allocations are only meaningful under the rule that made"
                " them), or use a new journal"
            )

    def _open(self, path: Path, synchronous: str) -> int:
        """Set the connection up and check the file; returns its schema version."""
        db = self._db
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables:
            raise JournalDamaged(f"{path} is an SQLite database but not a controller journal")
        if version not in (*_SCRIPTS, SCHEMA_VERSION):
            raise JournalVersionError(
                f"{path} has journal schema version {version}; this controller reads"
                f" versions 1 to {SCHEMA_VERSION}"
            )
        if tables:
            self._integrity = _IntegrityCheck(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA wal_autocheckpoint=0")
        return version

    def check_integrity(self) -> None:
        """Wait for the integrity check begun when the journal was opened (it reads the whole
        file on its own connection, beside recovery); ``JournalDamaged`` if it failed."""
        if self._integrity is not None:
            self._integrity.result()

    def close(self) -> None:
        """Stop the WAL checkpointer and close the database (everything written is committed).
        A failing disk is logged, not raised: closing must not hide why the controller stops."""
        try:
            self._checkpointer.stop()
        except sqlite3.Error as error:
            log.error("final WAL checkpoint failed", extra={"error": str(error)})
        self._db.close()
        if self._lock is not None:
            self._lock.release()

    def recover(self) -> Recovered:
        """Read the aggregated state written by earlier runs."""
        # Names no longer kept (version 1's "gross") are ignored.
        stored = dict(self._db.execute("SELECT name, value FROM counters"))
        counters = Counters(**{name: stored[name] for name in Counters.__slots__ if name in stored})
        checkpoint = {
            (account, ticker): (quantity, value, as_of)
            for account, ticker, quantity, value, as_of in self._db.execute(
                "SELECT account, ticker, quantity, value, as_of FROM positions"
            )
        }
        row = self._db.execute(
            "SELECT sequence, split_id, percents, effective_time_ns FROM splits"
            " ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        pending = [
            stored.allocation.fill
            for stored in self._fills(
                f"SELECT {_FILL_COLUMNS} FROM fills WHERE split_id IS NULL ORDER BY sequence", ()
            )
        ]
        checkpoint_prices = dict(self._db.execute("SELECT ticker, price FROM last_prices"))
        positions, last_prices = self._replay(
            checkpoint, checkpoint_prices, counters.checkpoint_sequence
        )
        restricted = self._db.execute(
            "SELECT sequence, restrictions_id, accounts FROM restrictions"
            " ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        return Recovered(
            counters=counters,
            positions=positions,
            split=_split_from_row(row).split if row else None,
            last_prices=last_prices,
            pending=pending,
            restrictions=(
                _restrictions_from_row(restricted).restrictions if restricted else NO_RESTRICTIONS
            ),
        )

    def _replay(
        self,
        checkpoint: dict[tuple[str, str], tuple[int, int, int]],
        checkpoint_prices: dict[str, int],
        after: int,
    ) -> tuple[list[PositionRow], dict[str, int]]:
        """Checkpointed positions and last prices, plus every allocation journaled after the
        low-water mark ``after`` that is newer than its pair's row."""
        last_prices = dict(checkpoint_prices)
        totals = {pair: [quantity, value] for pair, (quantity, value, _) in checkpoint.items()}
        replayed = self._db.execute(
            "SELECT allocated_sequence, ticker, price, sell, accounts, quantities FROM fills"
            " WHERE allocated_sequence > ? ORDER BY allocated_sequence, sequence",
            (after,),
        )
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

    def find_fills(self, fill_ids: Collection[str]) -> dict[str, StoredFill]:
        """The journaled fills among ``fill_ids``, by id."""
        if not fill_ids:
            return {}
        marks = ",".join("?" * len(fill_ids))
        query = f"SELECT {_FILL_COLUMNS} FROM fills WHERE fill_id IN ({marks})"
        return {s.allocation.fill.fill_id: s for s in self._fills(query, tuple(fill_ids))}

    def find_split(self, split_id: str) -> StoredSplit | None:
        """The journaled split with this id, if any."""
        row = self._db.execute(
            "SELECT sequence, split_id, percents, effective_time_ns FROM splits WHERE split_id=?",
            (split_id,),
        ).fetchone()
        return _split_from_row(row) if row else None

    def find_restrictions(self, restrictions_id: str) -> StoredRestrictions | None:
        """The journaled restricted list with this id, if any."""
        row = self._db.execute(
            "SELECT sequence, restrictions_id, accounts FROM restrictions WHERE restrictions_id=?",
            (restrictions_id,),
        ).fetchone()
        return _restrictions_from_row(row) if row else None

    def write(self, batch: JournalBatch, counters: Counters) -> None:
        """Write one group of events and the new counters in a single committed transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                f"INSERT INTO fills ({_FILL_COLUMNS}, recorded_ns)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(*_fill_row(stored), batch.recorded_ns) for stored in batch.new_fills],
            )
            db.executemany(
                "UPDATE fills SET split_id=?, accounts=?, quantities=?, allocated_sequence=?,"
                " lot_size=? WHERE fill_id=?",
                [
                    (
                        a.split_id,
                        ",".join(a.accounts),
                        _join_ints(a.quantities),
                        sequence,
                        _lot_column(a),
                        a.fill.fill_id,
                    )
                    for sequence, a in batch.released
                ],
            )
            db.executemany(
                "INSERT INTO splits (sequence, split_id, percents, effective_time_ns, recorded_ns)"
                " VALUES (?,?,?,?,?)",
                [
                    (
                        s.sequence,
                        s.split.split_id,
                        json.dumps(s.split.percents),
                        s.split.effective_time_ns,
                        batch.recorded_ns,
                    )
                    for s in batch.splits
                ],
            )
            db.executemany(
                "INSERT INTO restrictions (sequence, restrictions_id, accounts, recorded_ns)"
                " VALUES (?,?,?,?)",
                [
                    (
                        r.sequence,
                        r.restrictions.restrictions_id,
                        restrictions_json(r.restrictions),
                        batch.recorded_ns,
                    )
                    for r in batch.restrictions
                ],
            )
            if batch.checkpoint:
                as_of = batch.checkpoint_as_of
                db.executemany(
                    "INSERT OR REPLACE INTO positions (account, ticker, quantity, value, as_of)"
                    " VALUES (?,?,?,?,?)",
                    [(r.account, r.ticker, r.quantity, r.value, as_of) for r in batch.checkpoint],
                )
            if batch.checkpoint_prices:
                db.executemany(
                    "INSERT OR REPLACE INTO last_prices (ticker, price) VALUES (?,?)",
                    batch.checkpoint_prices.items(),
                )
            db.executemany(
                "INSERT OR REPLACE INTO counters (name, value) VALUES (?,?)",
                [(name, getattr(counters, name)) for name in Counters.__slots__],
            )
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT may already have rolled back: rolling back again would raise
            # "no transaction is active" and hide the real error (a full disk, say).
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error as rollback_error:
                    log.error("rollback failed too", extra={"error": str(rollback_error)})
            raise

    def _fills(self, query: str, parameters: tuple[str, ...]) -> Iterator[StoredFill]:
        for row in self._db.execute(query, parameters):
            (fill_id, sequence, ticker, price, quantity, sell, time_ns, split_id, accounts, qs, _,
             lot) = row  # fmt: skip
            fill = Fill(fill_id, ticker, price, quantity, Side.SELL if sell else Side.BUY, time_ns)
            allocation = Allocation(
                fill=fill,
                split_id=split_id or "",
                accounts=tuple(accounts.split(",")) if accounts else (),
                quantities=_split_ints(qs) if qs else (),
                lot_size=lot or 1,
            )
            yield StoredFill(sequence, allocation)


def _fill_row(stored: StoredFill) -> tuple[object, ...]:
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
    )


def _lot_column(allocation: Allocation) -> int | None:
    """The lot a buy was allocated in; NULL for whole shares."""
    return allocation.lot_size if allocation.lot_size > 1 else None


def _join_ints(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _split_ints(text: str) -> tuple[int, ...]:
    return tuple(map(int, text.split(",")))


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


def _restrictions_from_row(row: tuple[int, str, str]) -> StoredRestrictions:
    sequence, restrictions_id, accounts = row
    return StoredRestrictions(sequence, restrictions_from_json(restrictions_id, accounts))


def _split_from_row(row: tuple[int, str, str, int | None]) -> StoredSplit:
    sequence, split_id, percents, effective_time_ns = row
    return StoredSplit(sequence, Split(split_id, json.loads(percents), effective_time_ns))


class _WalCheckpointer:
    """Copies the WAL into the database file every ``WAL_CHECKPOINT_SECONDS`` from its own
    connection: PASSIVE checkpoints run beside the writer and never block its commits."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(WAL_CHECKPOINT_SECONDS):
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as error:
                # The writer's own commits are what matter; it sees any disk fault itself.
                log.warning("WAL checkpoint failed", extra={"error": str(error)})

    def stop(self) -> None:
        """Stop, folding the whole WAL into the database file first."""
        self._stopping.set()
        self._thread.join()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()


class _IntegrityCheck:
    """``PRAGMA quick_check`` in a thread on a connection of its own: it runs beside recovery
    (SQLite releases the GIL), and the pages it reads leave with its connection instead of
    filling the writer's cache."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._problems: list[str] = []
        self._thread = threading.Thread(target=self._run, name="integrity-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with contextlib.closing(sqlite3.connect(self._path)) as checker:
                self._problems = [row[0] for row in checker.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as error:
            self._problems = [str(error)]

    def result(self) -> None:
        """Wait for the check; ``JournalDamaged`` naming the first problems if it failed."""
        self._thread.join()
        if self._problems != ["ok"]:
            raise JournalDamaged(
                f"{self._path} fails its integrity check: {'; '.join(self._problems)}"
            )
