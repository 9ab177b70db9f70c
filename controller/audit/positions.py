"""``audit positions --as-of``: every account's positions as they stood after one event.

The ledger (journaled allocations only) is rebuilt up to the sequence and loaded into a book,
whose snapshot becomes a ``PositionReport`` exactly as the controller builds its own: the same
fields, the same table when printed. A report the controller sent with ``journal_sequence`` J
equals ``positions --as-of J`` in everything but its number and time.
"""

from __future__ import annotations

from allocation.v1 import allocation_pb2
from controller.audit.history import JournalHistory
from controller.audit.ledger import ledger_at
from controller.book import Book
from controller.journal import Counters
from controller.wire import report_header, write_account


def positions_as_of(history: JournalHistory, sequence: int) -> allocation_pb2.PositionReport:
    """The positions report as of journal ``sequence`` (report number 0: never sent)."""
    ledger = ledger_at(history, sequence)
    book = Book(history.tickers())
    book.restore(
        ledger.positions(),
        ledger.split,
        ledger.fill_count,
        ledger.last_prices,
        [event.fill for event in ledger.pending],
    )
    snapshot = book.snapshot()
    counters = Counters(next_sequence=ledger.sequence + 1, fill_count=ledger.fill_count)
    report = report_header(snapshot, counters, history.journal_id, ledger.recorded_ns or 0)
    for row in snapshot.accounts_between(0, snapshot.account_count):
        write_account(report.accounts.add(), row)
    return report
