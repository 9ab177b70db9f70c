"""What the dashboard shows, computed from reports: no HTTP here.

A report becomes account rows (exact decimal strings, as on the wire, plus the deviation in basis
points of the total) that can be filtered, sorted and paged, and a ``ReportSummary``: one point
of the drift chart. Amounts stay exact strings; only the chart's basis points are floats, since a
chart is drawn in floating point anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from allocation.v1 import allocation_pb2
from position.render import basis_points

# Accounts whose deviation is kept in every summary, so that the chart can draw any of them
# over the whole history; larger books keep the worst account's only (and the table's rows).
SERIES_ACCOUNTS = 1_000
SORT_FIELDS = (
    "account",
    "target_percent",
    "actual_percent",
    "deviation",
    "deviation_bp",
    "value",
    "market_value",
)
MAX_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """One accepted report as a point of the history."""

    index: int
    """Position in the order reports were accepted (the live stream's event id)."""
    journal_id: str
    sequence: int
    generate_ns: int
    split_id: str
    fill_count: int
    pending_fill_count: int
    account_count: int
    worst_bp: float
    """The largest |deviation| of any account, in basis points of the total value."""
    deviations_bp: dict[str, float] = field(default_factory=dict)
    """Every account's deviation in basis points (books of up to ``SERIES_ACCOUNTS``)."""

    def as_json(self, accounts: Sequence[str] | None = None) -> dict[str, object]:
        """The summary as JSON, with the deviations of ``accounts`` only (all if None)."""
        chosen = self.deviations_bp if accounts is None else {
            a: self.deviations_bp[a] for a in accounts if a in self.deviations_bp
        }  # fmt: skip
        return {
            "index": self.index,
            "journal_id": self.journal_id,
            "sequence": self.sequence,
            "time_ns": str(self.generate_ns),
            "split_id": self.split_id,
            "fill_count": self.fill_count,
            "pending_fill_count": self.pending_fill_count,
            "account_count": self.account_count,
            "worst_bp": self.worst_bp,
            "deviations_bp": chosen,
        }


def _bp(deviation: str, total: Decimal) -> Decimal:
    return Decimal(deviation) * 10_000 / total if total else Decimal(0)


def summarize(report: allocation_pb2.PositionReport, index: int) -> ReportSummary:
    """The report's point of the history."""
    total = Decimal(report.total_value or "0")
    points = {a.account: _bp(a.deviation, total) for a in report.accounts}
    keep = len(points) <= SERIES_ACCOUNTS
    return ReportSummary(
        index=index,
        journal_id=report.journal_id,
        sequence=report.sequence,
        generate_ns=report.generate_time.ToNanoseconds(),
        split_id=report.split_id,
        fill_count=report.fill_count,
        pending_fill_count=report.pending_fill_count,
        account_count=len(report.accounts),
        worst_bp=float(max((abs(p) for p in points.values()), default=Decimal(0))),
        deviations_bp={a: float(p) for a, p in points.items()} if keep else {},
    )


@dataclass(frozen=True, slots=True)
class AccountRows:
    """A report's accounts as table rows, with sort keys made once per field on demand."""

    header: dict[str, object]
    rows: list[dict[str, object]]
    _keys: dict[str, list[int]] = field(default_factory=dict)

    def page(
        self, sort: str, descending: bool, contains: str, offset: int, limit: int
    ) -> tuple[int, list[dict[str, object]]]:
        """Rows whose account contains ``contains`` (case-insensitive), sorted by ``sort``:
        how many match, and ``limit`` of them from ``offset``."""
        order = self._order(sort)
        if descending:
            order = order[::-1]
        if contains:
            needle = contains.casefold()
            order = [i for i in order if needle in str(self.rows[i]["account"]).casefold()]
        return len(order), [self.rows[i] for i in order[offset : offset + limit]]

    def _order(self, sort: str) -> list[int]:
        order = self._keys.get(sort)
        if order is None:
            if sort == "account":
                keys: list[object] = [row["account"] for row in self.rows]
            else:
                keys = [Decimal(str(row[sort] or "0")) for row in self.rows]
            order = sorted(range(len(self.rows)), key=keys.__getitem__)  # type: ignore[arg-type]
            self._keys[sort] = order
        return order


def account_rows(report: allocation_pb2.PositionReport) -> AccountRows:
    """The report's header fields and one row per account."""
    total = Decimal(report.total_value or "0")
    rows: list[dict[str, object]] = [
        {
            "account": a.account,
            "target_percent": a.target_percent,
            "actual_percent": a.actual_percent,
            "deviation": a.deviation,
            "deviation_bp": basis_points(a.deviation, total).replace(",", "") or "0",
            "value": a.value,
            "market_value": a.market_value,
            "positions": {p.ticker: p.quantity for p in a.positions},
            "restricted_tickers": list(a.restricted_tickers),
        }
        for a in report.accounts
    ]
    header: dict[str, object] = {
        "journal_id": report.journal_id,
        "sequence": report.sequence,
        "time_ns": str(report.generate_time.ToNanoseconds()),
        "split_id": report.split_id,
        "fill_count": report.fill_count,
        "pending_fill_count": report.pending_fill_count,
        "total_value": report.total_value,
        "total_market_value": report.total_market_value,
        "tickers": [
            {"ticker": t.ticker, "quantity": t.quantity, "last_price": t.last_price}
            for t in report.tickers
        ],
    }
    return AccountRows(header, rows)
