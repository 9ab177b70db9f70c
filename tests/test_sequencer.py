"""The writer's turn: an idle blocking call commits on its own thread, everything else through
the writer thread, one gapless order either way, and a fault in a caller's turn stops it all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.book import Book
from controller.domain import Fill, Split
from controller.journal import Counters, JournalBatch
from controller.journal_sqlite import SqliteJournal
from controller.sequencer import FillOutcome, Sequencer, SequencerStopped
from tests.strategies import TICKERS

SPLIT = Split("s", {"a": 50_000_000, "b": 30_000_000, "c": 20_000_000})


def fill(fill_id: str, n: int = 0) -> Fill:
    return Fill(fill_id, TICKERS[n % 3], 1_000_000 + n, 1 + n % 7)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    journal = SqliteJournal(tmp_path / "journal.db", synchronous="NORMAL")
    yield journal
    journal.close()


def started(journal: SqliteJournal) -> tuple[Sequencer, threading.Thread]:
    """A running sequencer with ``SPLIT`` in force, and its writer thread."""
    before = set(threading.enumerate())
    sequencer = Sequencer(Book(TICKERS), journal)
    sequencer.start()
    (writer,) = [t for t in set(threading.enumerate()) - before if t.name == "sequencer"]
    sequencer.set_split(SPLIT)
    return sequencer, writer


def record_writing_threads(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> list[threading.Thread]:
    threads: list[threading.Thread] = []
    write = journal.write

    def recording(batch: JournalBatch, counters: Counters) -> None:
        threads.append(threading.current_thread())
        write(batch, counters)

    monkeypatch.setattr(journal, "write", recording)
    return threads


def test_an_idle_blocking_call_commits_on_its_own_thread_and_a_queued_one_on_the_writers(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequencer, writer = started(journal)
    threads = record_writing_threads(journal, monkeypatch)
    assert sequencer.submit_fills([fill("own")])[0].stored is not None
    assert sequencer.submit_fills_later([fill("queued")]).result(10)[0].stored is not None
    assert threads == [threading.current_thread(), writer]
    sequencer.stop()


def test_blocking_and_queued_fills_from_many_threads_share_one_gapless_order(
    journal: SqliteJournal, tmp_path: Path
) -> None:
    """Callers take the turn whenever it is free, yet every fill gets its own journal sequence,
    the queue keeps its order, and recovery rebuilds exactly the book that answered."""
    sequencer, _ = started(journal)
    per_thread = 60

    def blocking(worker: int) -> list[int]:
        outcomes = [sequencer.submit_fills([fill(f"b{worker}-{n}", n)]) for n in range(per_thread)]
        return [sequence_of(outcome[0]) for outcome in outcomes]

    def queued(worker: int) -> list[int]:
        futures: list[Future[list[FillOutcome]]] = [
            sequencer.submit_fills_later([fill(f"q{worker}-{n}", n)]) for n in range(per_thread)
        ]
        return [sequence_of(future.result(30)[0]) for future in futures]

    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(blocking, w) for w in range(4)] + [
            pool.submit(queued, w) for w in range(2)
        ]
        per_caller = [job.result(60) for job in jobs]
    for sequences in per_caller:
        assert sequences == sorted(sequences)
    every = sorted(s for sequences in per_caller for s in sequences)
    assert every == list(range(every[0], every[0] + 6 * per_thread))
    expected = sequencer.snapshot()[0]
    sequencer.stop()
    reader_journal = SqliteJournal(tmp_path / "journal.db", lock=False)
    reader = Sequencer(Book(TICKERS), reader_journal)
    reader.start()
    assert reader.snapshot()[0] == expected
    reader.stop()
    reader_journal.close()


def sequence_of(outcome: FillOutcome) -> int:
    assert outcome.stored is not None, outcome.rejection
    return outcome.stored.sequence


def test_a_fault_in_a_callers_turn_fails_every_queued_request_and_stops_the_writer_thread(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequencer, writer = started(journal)
    writing = threading.Event()
    go_on = threading.Event()
    threads: list[threading.Thread] = []

    def failing_write(batch: JournalBatch, counters: Counters) -> None:
        threads.append(threading.current_thread())
        writing.set()
        go_on.wait(10)
        raise OSError("disk full")

    monkeypatch.setattr(journal, "write", failing_write)
    with ThreadPoolExecutor(1) as pool:
        own = pool.submit(sequencer.submit_fills, [fill("own")])
        assert writing.wait(10)
        queued = [sequencer.submit_fills_later([fill(f"queued-{n}", n)]) for n in range(20)]
        go_on.set()
        with pytest.raises(SequencerStopped, match="disk full"):
            own.result(10)
        for future in queued:
            with pytest.raises(SequencerStopped, match="disk full"):
                future.result(10)
    assert len(threads) == 1 and threads[0] is not writer
    writer.join(10)
    assert not writer.is_alive()
    with pytest.raises(SequencerStopped, match="journal failed"):
        sequencer.snapshot()
    sequencer.stop()


def test_a_fault_in_a_callers_turn_stops_an_idle_writer_thread(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequencer, writer = started(journal)

    def failing_write(batch: JournalBatch, counters: Counters) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(journal, "write", failing_write)
    with pytest.raises(SequencerStopped, match="disk full"):
        sequencer.submit_fills([fill("own")])
    writer.join(10)
    assert not writer.is_alive()
    sequencer.stop()
