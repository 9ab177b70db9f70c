"""The position service's report history: kept across restarts, bounded by a retention count.

Every accepted report is stored whole, with its header (every field but the accounts) beside it
so that listings without accounts read little; at most ``keep`` reports are kept (the oldest are
dropped). The newest one is what ``GetLatestReport`` answers after a restart, and each journal's
newest sequence keeps refusing stale reports. SQLite, one transaction per accepted report.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from allocation.v1 import allocation_pb2

DEFAULT_KEEP = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    journal_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    generate_ns INTEGER NOT NULL,
    header BLOB NOT NULL,
    report BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_time ON reports (generate_ns, id);
PRAGMA user_version = 1;
"""


@dataclass(frozen=True, slots=True)
class StoredReport:
    """One kept report (or its header) and its place in the history."""

    id: int
    report: allocation_pb2.PositionReport


class ReportHistory:
    """The newest ``keep`` accepted reports, in SQLite."""

    def __init__(self, path: Path, keep: int = DEFAULT_KEEP) -> None:
        """Open (or create) the history at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._keep = keep
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(
        self, header: allocation_pb2.PositionReport, report: allocation_pb2.PositionReport
    ) -> None:
        """Keep an accepted report (``header`` is the report without its accounts)."""
        generate_ns = header.generate_time.ToNanoseconds()
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO reports (journal_id, sequence, generate_ns, header, report)"
                " VALUES (?,?,?,?,?)",
                (
                    header.journal_id,
                    header.sequence,
                    generate_ns,
                    header.SerializeToString(),
                    report.SerializeToString(),
                ),
            )
            db.execute(
                "DELETE FROM reports WHERE id <= (SELECT max(id) FROM reports) - ?", (self._keep,)
            )
            db.execute("COMMIT")

    def latest(self) -> allocation_pb2.PositionReport | None:
        """The latest report accepted, whole."""
        with self._lock:
            row = self._db.execute("SELECT report FROM reports ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else allocation_pb2.PositionReport.FromString(row[0])

    def newest_sequences(self) -> dict[str, int]:
        """Each kept journal's newest report sequence, oldest journal first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT journal_id, max(sequence), max(id) FROM reports GROUP BY journal_id"
                " ORDER BY 3"
            ).fetchall()
        return {journal_id: sequence for journal_id, sequence, _ in rows}

    def between(
        self, start_ns: int, end_ns: int, after_id: int, limit: int, full: bool
    ) -> list[StoredReport]:
        """Up to ``limit`` reports generated in ``[start_ns, end_ns)`` with an id above
        ``after_id``, in the order they were accepted; whole if ``full``, else headers."""
        column = "report" if full else "header"
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, {column} FROM reports WHERE generate_ns >= ? AND generate_ns < ?"
                " AND id > ? ORDER BY id LIMIT ?",
                (start_ns, end_ns, after_id, limit),
            ).fetchall()
        return [StoredReport(i, allocation_pb2.PositionReport.FromString(r)) for i, r in rows]

    def recent(self, limit: int) -> list[StoredReport]:
        """The newest ``limit`` reports, whole, in the order they were accepted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, report FROM reports ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [StoredReport(i, allocation_pb2.PositionReport.FromString(r)) for i, r in rows[::-1]]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
