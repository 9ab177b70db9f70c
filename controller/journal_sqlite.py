"""The SQLite journal: one file in WAL mode, one writer, held exclusively by one controller.

The embedded default: ``make run`` and the tests need no database server. The format of its rows
and the recovery they allow are described in ``controller.journal``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection
from pathlib import Path

from controller.journal import (
    FILL_COLUMNS,
    Counters,
    JournalBatch,
    JournalDamaged,
    JournalLocked,
    JournalPolicyError,
    JournalVersionError,
    Recovered,
    StoredFill,
    StoredRestrictions,
    StoredSplit,
    find_restrictions,
    find_split,
    recover_journal,
    stored_fill,
    write_batch,
)
from controller.policy import TOTAL_VALUE

log = logging.getLogger(__name__)

# Seconds between WAL checkpoints, made by a background thread on its own connection: SQLite's
# automatic checkpoint runs inside a commit and stalled it for up to 70 ms on large books.
WAL_CHECKPOINT_SECONDS = 1.0
# The WAL starts again from its beginning only at a commit that finds everything in it copied;
# a pass made beside the writer never quite finishes (the commits it did not copy), so under a
# steady flow the WAL grew without end (26 MB in 6 s at 500 commits/s), and each commit's fsync
# of appended pages cost about 0.1 ms more than overwriting. A WAL that grew past this size (a
# long audit read holds its start) is cut back to it when it starts again.
WAL_LIMIT_BYTES = 64 * 1024 * 1024

# Stored in SQLite's user_version; a journal of another version is refused, not misread.
# Version 2 added the journal's identity (the meta table) and per-row checkpoint sequences
# (positions.as_of); version 3 the time each fill and split was journaled (recorded_ns), which
# the audit tool's time ranges use. Older journals are upgraded in place (their earlier rows
# have no recorded time); version 4 the restricted lists (restrictions) and the round lot
# each buy was allocated in (fills.lot_size); version 5 keys fills by their sequence (a rowid
# table, so each commit appends) with the fill id a unique index: keyed by fill id, every insert
# went to a random place in a tree of whole rows, 27 us per 100-receiver row instead of 11.
SCHEMA_VERSION = 5


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


_FILLS = """
CREATE TABLE {table} (
    sequence INTEGER PRIMARY KEY,
    fill_id TEXT NOT NULL UNIQUE,
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
);
"""
_FILL_INDEXES = """
CREATE INDEX fills_pending ON fills (sequence) WHERE split_id IS NULL;
CREATE INDEX fills_allocated ON fills (allocated_sequence);
"""
_SCHEMA = (
    _FILLS.format(table="fills")
    + _FILL_INDEXES
    + """
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
)
# Identity of the journal, made once: reports carry it so that their sequences are compared only
# with reports of the same journal.
_META = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('journal_id', '{journal_id}');
"""
# Version 4 kept fills keyed by fill id: rebuilt in sequence order.
_UPGRADE_FROM_4 = (
    _FILLS.format(table="fills_by_sequence")
    + f"""
INSERT INTO fills_by_sequence ({FILL_COLUMNS}, recorded_ns)
    SELECT {FILL_COLUMNS}, recorded_ns FROM fills ORDER BY sequence;
DROP TABLE fills;
ALTER TABLE fills_by_sequence RENAME TO fills;
"""
    + _FILL_INDEXES
)
_UPGRADE_FROM_3 = (
    """
ALTER TABLE fills ADD COLUMN lot_size INTEGER;
CREATE TABLE IF NOT EXISTS restrictions (
    sequence INTEGER PRIMARY KEY,
    restrictions_id TEXT NOT NULL UNIQUE,
    accounts TEXT NOT NULL,
    recorded_ns INTEGER
);
"""
    + _UPGRADE_FROM_4
)
_UPGRADE_FROM_2 = (
    """
ALTER TABLE fills ADD COLUMN recorded_ns INTEGER;
ALTER TABLE splits ADD COLUMN recorded_ns INTEGER;
"""
    + _UPGRADE_FROM_3
)
# Version 1 checkpointed every row at once, as of checkpoint_sequence.
_UPGRADE_FROM_1 = (
    """
ALTER TABLE positions ADD COLUMN as_of INTEGER NOT NULL DEFAULT 0;
UPDATE positions SET as_of = coalesce(
    (SELECT value FROM counters WHERE name = 'checkpoint_sequence'), 0);
"""
    + _UPGRADE_FROM_2
)
_SCRIPTS = {
    0: _SCHEMA,
    1: _UPGRADE_FROM_1,
    2: _UPGRADE_FROM_2,
    3: _UPGRADE_FROM_3,
    4: _UPGRADE_FROM_4,
}


class SqliteJournal:
    """SQLite journal; all methods are called by one thread at a time (the holder of the
    sequencer's writer turn), hence a connection shared across threads."""

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
            self._writing = threading.Lock()
            self._checkpointer = _WalCheckpointer(path, synchronous, self._writing)
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
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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
        """Read the aggregated state written by earlier runs (the writer is the only one, so
        its reads are consistent)."""
        return recover_journal(self._db.execute, "?")

    def find_fills(self, fill_ids: Collection[str]) -> dict[str, StoredFill]:
        """The journaled fills among ``fill_ids``, by id."""
        if not fill_ids:
            return {}
        marks = ",".join("?" * len(fill_ids))
        query = f"SELECT {FILL_COLUMNS} FROM fills WHERE fill_id IN ({marks})"
        found = (stored_fill(row) for row in self._db.execute(query, tuple(fill_ids)))
        return {stored.allocation.fill.fill_id: stored for stored in found}

    def find_split(self, split_id: str) -> StoredSplit | None:
        """The journaled split with this id, if any."""
        return find_split(self._db.execute, "?", split_id)

    def find_restrictions(self, restrictions_id: str) -> StoredRestrictions | None:
        """The journaled restricted list with this id, if any."""
        return find_restrictions(self._db.execute, "?", restrictions_id)

    def write(self, batch: JournalBatch, counters: Counters) -> None:
        """Write one group of events and the new counters in a single committed transaction."""
        with self._writing:
            self._write(batch, counters)

    def _write(self, batch: JournalBatch, counters: Counters) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            write_batch(db.executemany, "?", batch, counters)
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


class _WalCheckpointer:
    """Copies the WAL into the database file every ``WAL_CHECKPOINT_SECONDS`` from its own
    connection. Each round is two PASSIVE passes: one beside the writer, then one that holds
    ``writing`` (the lock the journal holds while it writes) for what the first left."""

    def __init__(self, path: Path, synchronous: str, writing: threading.Lock) -> None:
        self._writing = writing
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(WAL_CHECKPOINT_SECONDS):
            try:
                self._checkpoint()
            except sqlite3.Error as error:
                # The writer's own commits are what matter; it sees any disk fault itself.
                log.warning("WAL checkpoint failed", extra={"error": str(error)})

    def _checkpoint(self) -> None:
        # The bulk beside the writer; then, between two of its commits, what it committed
        # meanwhile (a few ms of commits at most), so that its next commit starts the WAL again.
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        with self._writing:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

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
