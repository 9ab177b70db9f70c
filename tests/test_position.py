"""PositionService: ordering of reports, latest report, readable tables, JSON lines."""

from __future__ import annotations

import json

import grpc
import pytest

from allocation.v1 import allocation_pb2, position_service_pb2
from tests.conftest import RunningPositionService


def report(sequence: int, deviations: list[str]) -> allocation_pb2.PositionReport:
    message = allocation_pb2.PositionReport(
        sequence=sequence, split_id="s1", fill_count=sequence * 10, total_value="1000"
    )
    message.generate_time.FromSeconds(1_700_000_000 + sequence)
    for n, deviation in enumerate(deviations):
        message.accounts.append(
            allocation_pb2.AccountPositions(
                account=f"acct-{n:02d}",
                target_percent="10",
                actual_percent="10",
                value="100",
                market_value="101",
                deviation=deviation,
                positions=[allocation_pb2.Position(ticker="AAPL", quantity=n + 1, value="100")],
            )
        )
    message.tickers.append(allocation_pb2.TickerSummary(ticker="AAPL", quantity=55, last_price="1"))
    return message


def send(service: RunningPositionService, message: allocation_pb2.PositionReport) -> bool:
    request = position_service_pb2.ReportPositionsRequest(report=message)
    return service.stub.ReportPositions(request).accepted


def test_latest_report_is_not_found_before_the_first(
    position_service: RunningPositionService,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        position_service.stub.GetLatestReport(position_service_pb2.GetLatestReportRequest())
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_only_newer_reports_are_accepted_printed_and_kept(
    position_service: RunningPositionService,
) -> None:
    assert send(position_service, report(5, ["1"]))
    assert not send(position_service, report(5, ["2"]))
    assert not send(position_service, report(4, ["3"]))
    assert send(position_service, report(6, ["4"]))
    latest = position_service.stub.GetLatestReport(
        position_service_pb2.GetLatestReportRequest()
    ).report
    assert latest.sequence == 6
    printed = position_service.output.getvalue()
    assert "Positions report #5 " in printed and "Positions report #6 " in printed
    assert "#4 " not in printed
    assert printed.count("Positions report #") == 2
    logged = [json.loads(line) for line in position_service.jsonl.read_text().splitlines()]
    assert [r["sequence"] for r in logged] == ["5", "6"]


def test_table_shows_accounts_tickers_values_and_totals(
    position_service: RunningPositionService,
) -> None:
    send(position_service, report(1, ["-0.5", "0.25"]))
    printed = position_service.output.getvalue()
    assert "s1" in printed and "10 fills allocated" in printed
    for header in (
        "account",
        "AAPL",
        "cost value",
        "market value",
        "target %",
        "actual %",
        "deviation",
    ):
        assert header in printed
    assert "acct-00" in printed and "acct-01" in printed
    assert "TOTAL" in printed and "1000" in printed
    assert "\x1b[" not in printed


def test_large_books_show_largest_deviations_and_say_how_many_are_left_out(
    position_service: RunningPositionService,
) -> None:
    deviations = ["0.1", "-9", "0", "5", "-0.2", "7", "1"]
    send(position_service, report(1, deviations))
    printed = position_service.output.getvalue()
    shown = [f"acct-{n:02d}" for n in (1, 5, 3)]
    hidden = [f"acct-{n:02d}" for n in (0, 2, 4, 6)]
    assert all(name in printed for name in shown)
    assert not any(name in printed for name in hidden)
    assert "4 of 7 accounts not shown" in printed
    assert printed.index("acct-01") < printed.index("acct-05") < printed.index("acct-03")
