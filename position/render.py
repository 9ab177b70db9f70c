"""A position report as tables a person can read (rich; plain ASCII when not on a terminal).

Formats are fixed so columns line up: money with thousands separators and two decimals (rounded
half-even for display; the report itself is exact), percentages with four decimals, deviation in
currency and in basis points of the total value. The account table fits in 120 columns; per-ticker
columns are optional (``--per-ticker``), and a ticker table shows per-ticker totals. Text that came
from a client (account names, ids, tickers) is shown literally: rich markup is not interpreted and
control characters are escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from allocation.v1 import allocation_pb2
from controller.domain import Rejected, RejectReason
from controller.validation import timestamp_ns

PER_TICKER_CHOICES = ("none", "shares", "values")
# A signed plain decimal, ASCII digits only: what the controller writes for every amount.
_AMOUNT = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,6})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CENT = Decimal("0.01")
_PERCENT_PLACES = Decimal("0.0001")
_BASIS_POINT_PLACES = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How reports are shown."""

    max_rows: int = 50
    """Accounts shown; beyond it, those with the largest |deviation| first."""
    per_ticker: str = "none"
    """Per-ticker columns in the account table: none, shares, or values (market value)."""
    plain: bool = False
    """ASCII borders (output is not a terminal)."""


def check_report(report: allocation_pb2.PositionReport) -> None:
    """``Rejected`` naming the first field of ``report`` that cannot be shown: an amount that
    is not a plain decimal, or a time out of the Timestamp range."""
    timestamp_ns(report.generate_time, "report.generate_time")
    fields = [("report.total_value", report.total_value)]
    fields.append(("report.total_market_value", report.total_market_value))
    fields += [
        (f"report.tickers[{i}].last_price", t.last_price) for i, t in enumerate(report.tickers)
    ]
    for i, account in enumerate(report.accounts):
        where = f"report.accounts[{i}]"
        fields += [
            (f"{where}.target_percent", account.target_percent),
            (f"{where}.actual_percent", account.actual_percent),
            (f"{where}.value", account.value),
            (f"{where}.market_value", account.market_value),
            (f"{where}.deviation", account.deviation),
        ]
        fields += [
            (f"{where}.positions[{j}].{name}", getattr(position, name))
            for j, position in enumerate(account.positions)
            for name in ("value", "market_value")
        ]
    for field, text in fields:
        if not _AMOUNT.fullmatch(text):
            raise Rejected(
                RejectReason.INVALID_ARGUMENT,
                field,
                f"{field} {text[:40]!r} is not a plain decimal such as '-12.5'",
            )


def safe(text: str) -> Text:
    """Client text as literal, printable text: markup not interpreted, control characters
    shown as escapes."""
    return Text(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text))


def money(text: str) -> str:
    """An exact decimal amount as ``-1,234.57``."""
    return f"{Decimal(text).quantize(_CENT, ROUND_HALF_EVEN):,}"


def percent(text: str) -> str:
    """A percentage as ``12.3457``."""
    return f"{Decimal(text).quantize(_PERCENT_PLACES, ROUND_HALF_EVEN)}"


def basis_points(deviation: str, total: Decimal) -> str:
    """Deviation as basis points of the total value, ``-12.3``; blank when the total is 0."""
    if not total:
        return ""
    points = Decimal(deviation) * 10_000 / total
    rounded = points.quantize(_BASIS_POINT_PLACES, ROUND_HALF_EVEN)
    # A deviation that rounds to nothing shows as 0.0, not -0.0.
    return f"{rounded.copy_abs() if rounded.is_zero() else rounded:,}"


def select_accounts(
    report: allocation_pb2.PositionReport, max_rows: int
) -> tuple[list[allocation_pb2.AccountPositions], int]:
    """All accounts by name if they fit; otherwise the ``max_rows`` with the largest absolute
    deviation, largest first. Returns the rows and how many accounts were left out."""
    accounts = list(report.accounts)
    if len(accounts) <= max_rows:
        return accounts, 0
    by_deviation = sorted(accounts, key=lambda a: (-abs(Decimal(a.deviation)), a.account))
    return by_deviation[:max_rows], len(accounts) - max_rows


# Marks an account's restricted tickers in the account table ("acct-03 !AAPL,MSFT").
RESTRICTED_MARK = "!"


def title(report: allocation_pb2.PositionReport) -> str:
    """One line naming the report: number, time, split, fills and journal."""
    generated = report.generate_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    pending = f" ({report.pending_fill_count:,} pending)" if report.pending_fill_count else ""
    return (
        f"Positions report #{report.sequence} at {generated} | split"
        f" {report.split_id or '(none)'} | {report.fill_count:,} fills{pending}"
        f" | journal {report.journal_id[:8]}"
    )


def account_table(report: allocation_pb2.PositionReport, options: RenderOptions) -> Table:
    """One row per shown account plus a totals row."""
    rows, left_out = select_accounts(report, options.max_rows)
    notes = []
    if left_out:
        notes.append(
            f"{left_out:,} of {len(report.accounts):,} accounts not shown (largest |deviation|"
            " first)"
        )
    if any(account.restricted_tickers for account in rows):
        notes.append(f"{RESTRICTED_MARK} may not buy the tickers named: restricted list in force")
    caption = "; ".join(notes) or None
    table = Table(
        caption=caption,
        show_footer=True,
        box=box.ASCII if options.plain else box.HEAVY_HEAD,
    )
    total = Decimal(report.total_value)
    table.add_column("account", footer="TOTAL")
    tickers = [t.ticker for t in report.tickers] if options.per_ticker != "none" else []
    totals = {t.ticker: t for t in report.tickers}
    for ticker in tickers:
        summary = totals[ticker]
        footer = (
            f"{summary.quantity:,}"
            if options.per_ticker == "shares"
            else money(str(summary.quantity * Decimal(summary.last_price)))
        )
        table.add_column(safe(ticker), justify="right", footer=footer)
    has_accounts = bool(report.accounts)
    table.add_column("target %", justify="right", footer="100.0000" if has_accounts else "")
    table.add_column("actual %", justify="right", footer="100.0000" if has_accounts else "")
    table.add_column("cost value", justify="right", footer=money(report.total_value))
    table.add_column("market value", justify="right", footer=money(report.total_market_value))
    table.add_column("deviation", justify="right")
    table.add_column("dev bp", justify="right")
    for account in rows:
        held = {p.ticker: p for p in account.positions}
        cells = []
        for ticker in tickers:
            position = held.get(ticker)
            if options.per_ticker == "shares":
                cells.append(f"{position.quantity:,}" if position else "0")
            else:
                cells.append(money(position.market_value) if position else money("0"))
        name = safe(account.account)
        if account.restricted_tickers:
            name.append_text(safe(f" {RESTRICTED_MARK}{','.join(account.restricted_tickers)}"))
        table.add_row(
            name,
            *cells,
            percent(account.target_percent),
            percent(account.actual_percent),
            money(account.value),
            money(account.market_value),
            money(account.deviation),
            basis_points(account.deviation, total),
        )
    return table


def ticker_table(report: allocation_pb2.PositionReport, options: RenderOptions) -> Table:
    """One row per ticker: net shares, last price, cost and market value over all accounts."""
    cost = dict.fromkeys((t.ticker for t in report.tickers), Decimal(0))
    for account in report.accounts:
        for position in account.positions:
            if position.ticker in cost:
                cost[position.ticker] += Decimal(position.value)
    table = Table(box=box.ASCII if options.plain else box.HEAVY_HEAD)
    for column in ("ticker", "shares", "last price", "cost value", "market value"):
        table.add_column(column, justify="left" if column == "ticker" else "right")
    for summary in report.tickers:
        table.add_row(
            safe(summary.ticker),
            f"{summary.quantity:,}",
            money(summary.last_price),
            money(str(cost[summary.ticker])),
            money(str(summary.quantity * Decimal(summary.last_price))),
        )
    return table


def render_report(report: allocation_pb2.PositionReport, options: RenderOptions) -> RenderableType:
    """The title line, the account table and, when anything was traded, the ticker table."""
    parts: list[RenderableType] = [safe(title(report)), account_table(report, options)]
    if report.tickers:
        parts.append(ticker_table(report, options))
    return Group(*parts)
