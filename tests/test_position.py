"""PositionService: reports per journal, refusals, streamed parts, paging, readable tables."""

from __future__ import annotations

import json

import grpc
import pytest

from allocation.v1 import allocation_pb2, position_service_pb2
from controller.paging import MAX_PAGE_BYTES
from tests.conftest import RunningPositionService

JOURNAL = "journal-a"


def report(
    sequence: int, deviations: list[str], journal_id: str = JOURNAL
) -> allocation_pb2.PositionReport:
    message = allocation_pb2.PositionReport(
        sequence=sequence,
        journal_id=journal_id,
        split_id="s1",
        fill_count=sequence % 1_000 * 10,
        total_value="1000",
        total_market_value="1010",
    )
    message.generate_time.FromSeconds(1_700_000_000 + sequence % 1_000)
    for n, deviation in enumerate(deviations):
        message.accounts.append(
            allocation_pb2.AccountPositions(
                account=f"acct-{n:02d}",
                target_percent="10",
                actual_percent="10",
                value="100",
                market_value="101",
                deviation=deviation,
                positions=[
                    allocation_pb2.Position(
                        ticker="AAPL", quantity=n + 1, value="100", market_value="101"
                    )
                ],
            )
        )
    message.tickers.append(allocation_pb2.TickerSummary(ticker="AAPL", quantity=55, last_price="1"))
    return message


def parts_of(
    message: allocation_pb2.PositionReport, per_part: int
) -> list[position_service_pb2.ReportPositionsRequest]:
    """The report split as the controller sends it: header and first accounts, then the rest."""
    accounts = list(message.accounts)
    first = position_service_pb2.ReportPositionsRequest(account_count=len(accounts))
    first.report.CopyFrom(message)
    del first.report.accounts[per_part:]
    parts = [first]
    for start in range(per_part, len(accounts), per_part):
        part = position_service_pb2.ReportPositionsRequest()
        part.report.accounts.extend(accounts[start : start + per_part])
        parts.append(part)
    return parts


def send(
    service: RunningPositionService, message: allocation_pb2.PositionReport, per_part: int = 1_000
) -> position_service_pb2.ReportPositionsResponse:
    return service.stub.ReportPositions(iter(parts_of(message, per_part)))


def latest(service: RunningPositionService) -> allocation_pb2.PositionReport:
    return service.stub.GetLatestReport(position_service_pb2.GetLatestReportRequest()).report


def test_latest_report_is_not_found_before_the_first(
    position_service: RunningPositionService,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        position_service.stub.GetLatestReport(position_service_pb2.GetLatestReportRequest())
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_only_newer_reports_of_a_journal_are_accepted_printed_and_kept(
    position_service: RunningPositionService,
) -> None:
    assert send(position_service, report(5, ["1"])).accepted.sequence == 5
    for stale in (5, 4):
        refused = send(position_service, report(stale, ["2"]))
        assert refused.WhichOneof("outcome") == "rejection"
        assert refused.rejection.reason == allocation_pb2.REJECTION_REASON_STALE_REPORT
        assert f"report {stale} of journal {JOURNAL} is not newer than report 5" in (
            refused.rejection.message
        )
    assert send(position_service, report(6, ["4"])).accepted.journal_id == JOURNAL
    assert latest(position_service).sequence == 6
    printed = position_service.output.getvalue()
    assert "Positions report #5 " in printed and "Positions report #6 " in printed
    assert "#4 " not in printed
    assert printed.count("Positions report #") == 2
    logged = [json.loads(line) for line in position_service.jsonl.read_text().splitlines()]
    assert [r["sequence"] for r in logged] == ["5", "6"]


def test_a_poisoned_sequence_does_not_block_the_real_controller(
    position_service: RunningPositionService,
) -> None:
    """A client sending sequence 2^63-1 blocks at most the journal it names: without a journal
    id it is refused outright, and under its own id it leaves the real journal untouched."""
    poison = report(2**63 - 1, ["0"], journal_id="")
    refused = send(position_service, poison)
    assert refused.rejection.reason == allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT
    assert refused.rejection.field == "report.journal_id"
    assert send(position_service, report(2**63 - 1, ["0"], journal_id="intruder")).accepted
    for sequence in (1, 2):
        accepted = send(position_service, report(sequence, ["0"]))
        assert accepted.WhichOneof("outcome") == "accepted"
        assert latest(position_service).journal_id == JOURNAL
        assert latest(position_service).sequence == sequence


def test_a_controller_on_a_fresh_journal_is_accepted_at_once(
    position_service: RunningPositionService,
) -> None:
    assert send(position_service, report(900, ["0"], journal_id="old")).accepted
    fresh = send(position_service, report(1, ["0"], journal_id="new"))
    assert fresh.accepted.sequence == 1
    assert latest(position_service).journal_id == "new"
    assert "Positions report #1 " in position_service.output.getvalue()


def test_a_report_streamed_in_parts_is_assembled_in_order(
    position_service: RunningPositionService,
) -> None:
    whole = report(1, [str(n) for n in range(25)])
    assert send(position_service, whole, per_part=4).accepted
    assert latest(position_service) == whole


def test_a_report_whose_parts_do_not_add_up_is_refused_and_not_shown(
    position_service: RunningPositionService,
) -> None:
    parts = parts_of(report(1, ["1", "2", "3"]), per_part=1)
    refused = position_service.stub.ReportPositions(iter(parts[:2]))
    assert refused.rejection.reason == allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT
    assert "carried 2 accounts but account_count is 3" in refused.rejection.message
    assert position_service.output.getvalue() == ""


def test_amounts_that_are_not_plain_decimals_are_refused(
    position_service: RunningPositionService,
) -> None:
    for bad in ("abc", "NaN", "1e5", "\uff11\uff10\uff10"):  # the last: fullwidth "100"
        refused = send(position_service, report(1, [bad]))
        assert refused.rejection.reason == allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT
        assert refused.rejection.field == "report.accounts[0].deviation"
    assert position_service.output.getvalue() == ""


def test_client_text_is_shown_literally(position_service: RunningPositionService) -> None:
    message = report(1, ["0"])
    message.accounts[0].account = "[bold red]x\x1b[31m"
    assert send(position_service, message).accepted
    printed = position_service.output.getvalue()
    assert "[bold red]x\\x1b[31m" in printed
    assert "\x1b" not in printed


def test_latest_report_pages_stay_under_the_size_limit_and_cover_every_account(
    position_service: RunningPositionService,
) -> None:
    whole = report(3, ["0"] * 3_000)
    for account in whole.accounts:
        account.account = account.account.ljust(60, "x")
        account.positions.extend(
            allocation_pb2.Position(ticker=f"T{t}", quantity=t, value="1.5", market_value="2")
            for t in range(60)
        )
    assert send(position_service, whole, per_part=300).accepted
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = position_service.stub.GetLatestReport(
            position_service_pb2.GetLatestReportRequest(page_size=5_000, page_token=token)
        )
        pages += 1
        assert page.ByteSize() <= MAX_PAGE_BYTES + 4096
        assert page.total_size == 3_000
        assert page.report.sequence == 3 and page.report.tickers == whole.tickers
        seen += [a.account for a in page.report.accounts]
        token = page.next_page_token
        if not token:
            break
    assert pages > 1
    assert seen == [a.account for a in whole.accounts]


def test_bad_page_requests_are_invalid_argument(
    position_service: RunningPositionService,
) -> None:
    assert send(position_service, report(1, ["0"])).accepted
    for request in (
        position_service_pb2.GetLatestReportRequest(page_size=-1),
        position_service_pb2.GetLatestReportRequest(page_token="not-a-token"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            position_service.stub.GetLatestReport(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_table_shows_accounts_tickers_values_and_totals(
    position_service: RunningPositionService,
) -> None:
    send(position_service, report(1, ["-0.5", "0.25"]))
    printed = position_service.output.getvalue()
    assert "split s1" in printed and "| 10 fills |" in printed
    for header in (
        "account",
        "target %",
        "actual %",
        "cost value",
        "market value",
        "deviation",
        "dev bp",
        "ticker",
        "last price",
    ):
        assert header in printed
    assert "acct-00" in printed and "acct-01" in printed
    assert "TOTAL" in printed and "1,000.00" in printed and "1,010.00" in printed
    # Deviation -0.5 of a total of 1000 is -5 basis points; percents have four decimals.
    assert "-0.50" in printed and "-5.0" in printed and "10.0000" in printed
    assert "\x1b[" not in printed
    assert all(ord(c) < 128 for c in printed), "piped output must be plain ASCII"
    assert max(len(line) for line in printed.splitlines()) <= 120


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
