"""Recovery from the journal: checkpointed positions plus replay give the state exactly."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from benchmarks.postgres import PostgresServer
from controller import journal_sqlite
from controller.book import Book
from controller.domain import Fill, Rejected, Side, Split
from controller.journal import JournalDamaged, JournalPolicyError, JournalVersionError
from controller.journal_postgres import PostgresJournal
from controller.journal_sqlite import SqliteJournal
from controller.leadership import LeaderLease
from controller.policy import PER_TICKER, TOTAL_VALUE
from controller.sequencer import Sequencer, SequencerStopped
from controller.snapshot import BookSnapshot
from tests.conftest import ROOT, JournalBackend, both_backends
from tests.strategies import TICKERS


def events() -> list[Fill | Split]:
    """Pending fills, a split that releases them, more fills, a new split, sells."""
    sequence: list[Fill | Split] = [
        Fill(f"early-{n}", "AAPL", 10_000_000 + n, 5 + n) for n in range(3)
    ]
    sequence.append(Split("s1", {"a": 50_000_000, "b": 30_000_000, "c": 20_000_000}))
    sequence += [Fill(f"f-{n}", TICKERS[n % 3], 1_000_000 * (n + 1), 10 + n) for n in range(30)]
    sequence.append(Split("s2", {"b": 60_000_000, "d": 40_000_000}))
    sequence += [
        Fill(f"g-{n}", TICKERS[n % 3], 2_000_000 * (n + 1), 3 + n, Side.SELL if n % 2 else Side.BUY)
        for n in range(20)
    ]
    return sequence


def apply(sequencer: Sequencer, sequence: list[Fill | Split]) -> None:
    for event in sequence:
        if isinstance(event, Split):
            sequencer.set_split(event)
        else:
            assert sequencer.submit_fills([event])[0].rejection is None


@pytest.mark.parametrize(
    ("interval", "rows", "clean_stop"),
    [(0.0, 2_000, False), (0.0, 3, False), (1e9, 2_000, False), (1e9, 3, True)],
    ids=[
        "checkpoint-every-commit",
        "checkpoints-spread-over-commits",
        "replay-everything",
        "final-checkpoint-on-stop",
    ],
)
@both_backends
def test_recovered_book_equals_the_book_that_wrote_the_journal(
    journal_backend: JournalBackend, interval: float, rows: int, clean_stop: bool
) -> None:
    """Without a clean stop the journal is what a crash leaves; with 3 rows per commit every
    checkpoint round is still unfinished at most commits, rows newer than the low-water mark."""
    writer_journal = journal_backend.open()
    writer = Sequencer(
        Book(TICKERS), writer_journal, checkpoint_interval=interval, checkpoint_rows=rows
    )
    writer.start()
    apply(writer, events())
    expected = writer.snapshot()[0]
    expected_counters = writer.counters
    if clean_stop:
        writer.stop()
        assert writer.counters.checkpoint_sequence == writer.counters.next_sequence - 1
    # Without a clean stop this reads what a crash would leave: only committed transactions.
    # Read beside the writer, as a crash would leave the file (the writer still holds the lock).
    reader = Sequencer(Book(TICKERS), journal_backend.open(lock=False))
    assert reader.counters.fill_count == expected_counters.fill_count
    assert reader.counters.next_sequence == expected_counters.next_sequence
    reader.start()
    assert reader.snapshot()[0] == expected
    reader.stop()
    writer.stop()
    writer_journal.close()


@both_backends
def test_a_message_of_many_fills_is_journaled_whole_in_one_commit(
    journal_backend: JournalBackend,
) -> None:
    """600 fills in one commit: on SQLite many rows per statement, in chunks of every size."""
    writer_journal = journal_backend.open()
    writer = Sequencer(Book(TICKERS), writer_journal)
    writer.start()
    writer.set_split(Split("s1", {"a": 50_000_000, "b": 30_000_000, "c": 20_000_000}))
    fills: list[Fill | Rejected] = [
        Fill(f"many-{n}", TICKERS[n % 3], 1_000_000 + n, 1 + n % 5) for n in range(600)
    ]
    outcomes = writer.submit_fills(fills)
    expected = writer.snapshot()[0]
    writer.stop()
    writer_journal.close()
    reader = Sequencer(Book(TICKERS), journal_backend.open())
    assert reader.counters.fill_count == 600
    reader.start()
    assert reader.snapshot()[0] == expected
    for outcome in outcomes:
        assert outcome.stored is not None
        assert reader.lookup(outcome.stored.allocation.fill.fill_id) == outcome.stored
    reader.stop()


@both_backends
def test_a_final_checkpoint_behind_an_unfinished_round_commits_and_recovers_the_book(
    journal_backend: JournalBackend,
) -> None:
    """One row per commit: the round the first fill started still holds account c when the
    stop's final round queues a, b and c again, so one commit meets c twice (which one
    PostgreSQL statement may not upsert: many rows per statement would fail there)."""
    writer_journal = journal_backend.open()
    writer = Sequencer(Book(TICKERS), writer_journal, checkpoint_interval=0.0, checkpoint_rows=1)
    writer.start()
    writer.set_split(Split("s1", {"a": 50_000_000, "b": 30_000_000, "c": 20_000_000}))
    for n in range(2):
        assert writer.submit_fills([Fill(f"twice-{n}", "AAPL", 1_000_000, 10)])[0].stored
    expected = writer.snapshot()[0]
    writer.stop()
    writer_journal.close()
    reader = Sequencer(Book(TICKERS), journal_backend.open())
    assert reader.counters.checkpoint_sequence == reader.counters.next_sequence - 1
    reader.start()
    assert reader.snapshot()[0] == expected
    reader.stop()


@both_backends
def test_a_failed_journal_write_stops_the_writer_and_acknowledges_nothing(
    journal_backend: JournalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = journal_backend.open()
    failures: list[bool] = []
    sequencer = Sequencer(Book(TICKERS), journal, on_failure=lambda: failures.append(True))
    sequencer.start()
    sequencer.set_split(Split("s1", {"a": 100_000_000}))

    def broken_write(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(journal, "write", broken_write)
    with pytest.raises(SequencerStopped, match="disk full"):
        sequencer.submit_fills([Fill("lost", "AAPL", 1_000_000, 1)])
    assert failures == [True]
    with pytest.raises(SequencerStopped):
        sequencer.snapshot()
    monkeypatch.undo()
    sequencer.stop()
    journal.close()
    recovered = Sequencer(Book(TICKERS), journal_backend.open())
    assert recovered.counters.fill_count == 0


def test_a_journal_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    SqliteJournal(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(JournalVersionError, match="version 99"):
        SqliteJournal(db)


def test_a_postgresql_journal_of_another_schema_version_is_refused(
    postgres: PostgresServer,
) -> None:
    target = postgres.database()
    lease = LeaderLease(target, TOTAL_VALUE, "test", "in-process")
    lease.close()
    postgres.execute(target, "UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(JournalVersionError, match="version 99"):
        PostgresJournal(target, epoch=1)


def test_a_postgresql_database_holding_other_tables_is_not_taken_for_a_journal(
    postgres: PostgresServer,
) -> None:
    target = postgres.database()
    postgres.execute(target, "CREATE TABLE orders (id INTEGER)")
    with pytest.raises(JournalDamaged, match="holds 1 tables but no controller journal"):
        PostgresJournal(target, epoch=1)


def journal_of_events(db: Path) -> BookSnapshot:
    """Write ``events()`` to a new SQLite journal at ``db``; the book they made."""
    written = SqliteJournal(db, synchronous="NORMAL")
    writer = Sequencer(Book(TICKERS), written, checkpoint_interval=0.0)
    writer.start()
    apply(writer, events())
    expected = writer.snapshot()[0]
    writer.stop()
    written.close()
    return expected


def test_a_version_1_journal_is_upgraded_and_recovers_the_same_book(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    expected = journal_of_events(db)
    # What version 1 wrote: no journal identity, positions all as of checkpoint_sequence,
    # no recorded times, no restricted lists or lots.
    with sqlite3.connect(db) as raw:
        raw.executescript(
            "ALTER TABLE positions DROP COLUMN as_of; DROP TABLE meta;"
            " ALTER TABLE fills DROP COLUMN recorded_ns;"
            " ALTER TABLE splits DROP COLUMN recorded_ns;"
            " ALTER TABLE fills DROP COLUMN lot_size; DROP TABLE restrictions;"
            " PRAGMA user_version=1;"
        )
    upgraded = SqliteJournal(db, synchronous="NORMAL")
    assert upgraded.journal_id
    reader = Sequencer(Book(TICKERS), upgraded)
    reader.start()
    assert reader.snapshot()[0] == expected
    reader.stop()
    upgraded.close()
    assert SqliteJournal(db).journal_id == upgraded.journal_id


def test_a_version_4_journal_keyed_by_fill_id_is_rebuilt_and_recovers_the_same_book(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"
    expected = journal_of_events(db)
    with sqlite3.connect(db) as raw:
        stored = raw.execute("SELECT * FROM fills ORDER BY sequence").fetchall()
        columns = [c[1] for c in raw.execute("PRAGMA table_info(fills)")]
        # What version 4 stored: the same rows, in a table keyed by fill id.
        raw.executescript(
            "CREATE TABLE v4 (fill_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, ticker TEXT"
            " NOT NULL, price INTEGER NOT NULL, quantity INTEGER NOT NULL, sell INTEGER NOT NULL,"
            " execute_time_ns INTEGER, split_id TEXT, accounts TEXT, quantities TEXT,"
            " allocated_sequence INTEGER, recorded_ns INTEGER, lot_size INTEGER) WITHOUT ROWID;"
            f" INSERT INTO v4 ({', '.join(columns)}) SELECT * FROM fills; DROP TABLE fills;"
            " ALTER TABLE v4 RENAME TO fills; PRAGMA user_version=4;"
        )
    upgraded = SqliteJournal(db, synchronous="NORMAL")
    reader = Sequencer(Book(TICKERS), upgraded)
    reader.start()
    assert reader.snapshot()[0] == expected
    some = stored[len(stored) // 2]
    assert reader.lookup(some[columns.index("fill_id")]) is not None
    reader.stop()
    upgraded.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 5
        assert raw.execute("SELECT * FROM fills ORDER BY sequence").fetchall() == stored
        assert (
            "WITHOUT ROWID"
            not in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'fills'").fetchone()[0]
        )


@both_backends
@pytest.mark.parametrize("rows", [1, 3, 2_000])
def test_recovery_is_exact_at_every_crash_point_while_checkpoints_are_spread(
    journal_backend: JournalBackend, rows: int
) -> None:
    """After every event, a journal read as a crash would leave it recovers the writer's book,
    whatever part of a checkpoint round was written (rows newer than the low-water mark)."""
    writer = Sequencer(
        Book(TICKERS),
        journal_backend.open(),
        checkpoint_interval=0.0,
        checkpoint_rows=rows,
    )
    writer.start()
    for event in events():
        apply(writer, [event])
        reader = Sequencer(Book(TICKERS), journal_backend.open(lock=False))
        reader.start()
        assert reader.snapshot()[0] == writer.snapshot()[0]
        reader.stop()
    writer.stop()


@both_backends
def test_a_journal_keeps_the_policy_it_was_created_with(journal_backend: JournalBackend) -> None:
    journal_backend.open(policy=PER_TICKER).close()
    with pytest.raises(JournalPolicyError, match="created with --policy per-ticker"):
        journal_backend.open()
    reopened = journal_backend.open(policy=PER_TICKER)
    assert reopened.policy == PER_TICKER
    reopened.close()
    run = subprocess.run(
        [sys.executable, "-m", "controller", "--port=0", f"--db={journal_backend.target}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "start with --policy per-ticker" in run.stderr


def wal_generation(wal: Path) -> int:
    """The checkpoint sequence number in the WAL's header: SQLite adds one each time the WAL
    starts again from its beginning."""
    with wal.open("rb") as file:
        header = file.read(16)
    return int.from_bytes(header[12:16], "big")


def test_the_wal_starts_again_at_every_checkpoint_round_while_commits_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass beside a writer that never pauses leaves its last commits uncopied, and the WAL
    only starts again once everything in it is copied: it grew without end. Each round's second
    pass, between two commits, lets the next commit start it again."""
    monkeypatch.setattr(journal_sqlite, "WAL_CHECKPOINT_SECONDS", 1e9)  # rounds made here
    journal = SqliteJournal(tmp_path / "journal.db")
    writer = Sequencer(Book(TICKERS), journal)
    writer.start()
    writer.set_split(Split("s1", {"a": 50_000_000, "b": 50_000_000}))
    committed = threading.Condition()
    count = 0
    stopping = threading.Event()

    def commit_without_pause() -> None:
        nonlocal count
        while not stopping.is_set():
            fill = Fill(f"flow-{count}", TICKERS[count % 3], 1_000_000, 10)
            assert writer.submit_fills([fill])[0].rejection is None
            with committed:
                count += 1
                committed.notify_all()

    def wait_for_commits(total: int) -> None:
        with committed:
            assert committed.wait_for(lambda: count >= total, timeout=60)

    flow = threading.Thread(target=commit_without_pause)
    flow.start()
    generations = []
    for _ in range(5):
        wait_for_commits(count + 50)
        journal._checkpointer._checkpoint()
        # Two acknowledgements later, one commit was made wholly after the round.
        wait_for_commits(count + 2)
        generations.append(wal_generation(tmp_path / "journal.db-wal"))
    stopping.set()
    flow.join()
    writer.stop()
    journal.close()
    assert generations == sorted(set(generations)), generations
