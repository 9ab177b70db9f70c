"""Benchmark of ``audit verify`` on a seeded journal: fills verified per second, beside two
baselines measured in the same run on the same journal: reading the events alone, and the
engine replaying them alone (what verify adds is the certificate and the reconciliation).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controller.audit.history import FillEvent, SplitEvent, SqliteHistory
from controller.audit.simulation import simulate
from controller.audit.verify import verify
from controller.book import Book


@dataclass(frozen=True)
class AuditResult:
    """Rates over one journal, in fills per second."""

    fills: int
    write_seconds: float
    read_per_s: float
    engine_per_s: float
    verify_per_s: float
    verify_seconds: float
    mismatches: int


def run(fills: int) -> AuditResult:
    """Write a journal of ``fills`` seeded fills, then time reading, replaying and verifying."""
    with tempfile.TemporaryDirectory(prefix="fill-allocator-audit-") as tmp:
        path = Path(tmp) / "journal.db"
        started = time.perf_counter()
        simulate(path, fills, seed=1, split_every=max(1_000, fills // 20), restart_at=fills // 2)
        written = time.perf_counter() - started
        history = SqliteHistory(path)
        started = time.perf_counter()
        for _ in history.events():
            pass
        read = time.perf_counter() - started
        book = Book(history.tickers())
        started = time.perf_counter()
        for event in history.events():
            if isinstance(event, SplitEvent):
                book.set_split(event.split)
            elif isinstance(event, FillEvent):
                book.submit(event.fill)
        engine = time.perf_counter() - started
        started = time.perf_counter()
        result = verify(history)
        verified = time.perf_counter() - started
        history.close()
    return AuditResult(
        fills,
        written,
        fills / read,
        fills / engine,
        fills / verified,
        verified,
        len(result.mismatches),
    )
