"""A position report as a table a person can read (rich; plain text when not on a terminal)."""

from __future__ import annotations

from decimal import Decimal

from rich.table import Table

from allocation.v1 import allocation_pb2


def _title(report: allocation_pb2.PositionReport) -> str:
    generated = report.generate_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"Positions report #{report.sequence} at {generated}, split {report.split_id or '(none)'},"
        f" {report.fill_count} fills allocated"
        + (f", {report.pending_fill_count} pending" if report.pending_fill_count else "")
    )


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


def report_table(report: allocation_pb2.PositionReport, max_rows: int) -> Table:
    """One row per account (shares per ticker, cost and market value, target, actual and
    deviation) plus a totals row; the title carries sequence, time, split and fill count."""
    tickers = [t.ticker for t in report.tickers]
    rows, left_out = select_accounts(report, max_rows)
    caption = (
        f"{left_out} of {len(report.accounts)} accounts not shown (largest |deviation| first)"
        if left_out
        else None
    )
    table = Table(title=_title(report), caption=caption, show_footer=True)
    table.add_column("account", footer="TOTAL")
    totals = {t.ticker: t.quantity for t in report.tickers}
    for ticker in tickers:
        table.add_column(ticker, justify="right", footer=f"{totals[ticker]:,}")
    table.add_column("cost value", justify="right", footer=report.total_value)
    table.add_column("market value", justify="right", footer=report.total_market_value)
    table.add_column("target %", justify="right", footer="100" if report.accounts else "")
    table.add_column("actual %", justify="right", footer="100" if report.accounts else "")
    table.add_column("deviation", justify="right")
    for account in rows:
        held = {p.ticker: p.quantity for p in account.positions}
        table.add_row(
            account.account,
            *(f"{held.get(t, 0):,}" for t in tickers),
            account.value,
            account.market_value,
            account.target_percent,
            account.actual_percent,
            account.deviation,
        )
    return table
