"""The position service's report history: it survives a restart, and ListReports pages it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from controller.transport import open_channel
from position.history import ReportHistory
from tests.conftest import serve_position

BASE_SECONDS = 1_800_000_000


def report(sequence: int, journal_id: str = "journal-a") -> allocation_pb2.PositionReport:
    """A small valid report generated ``sequence`` minutes after a fixed time."""
    generated = Timestamp(seconds=BASE_SECONDS + 60 * sequence)
    return allocation_pb2.PositionReport(
        sequence=sequence,
        journal_id=journal_id,
        generate_time=generated,
        split_id="s-1",
        fill_count=sequence,
        total_value="100",
        total_market_value="100",
        journal_sequence=sequence + 1,
        accounts=[
            allocation_pb2.AccountPositions(
                account="a",
                target_percent="100",
                actual_percent="100",
                value="100",
                market_value="100",
                deviation="0",
            )
        ],
    )


def send(
    stub: position_service_pb2_grpc.PositionServiceStub, sent: allocation_pb2.PositionReport
) -> position_service_pb2.ReportPositionsResponse:
    part = position_service_pb2.ReportPositionsRequest(
        report=sent, account_count=len(sent.accounts)
    )
    return stub.ReportPositions(iter([part]), timeout=10)


def test_latest_report_and_staleness_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = ReportHistory(path)
    with (
        serve_position(tmp_path, history=first) as (port, _, _),
        open_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        for sequence in (1, 2, 3):
            assert send(stub, report(sequence)).HasField("accepted")
    first.close()
    again = ReportHistory(path)
    with (
        serve_position(tmp_path, history=again) as (port, _, _),
        open_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        latest = stub.GetLatestReport(position_service_pb2.GetLatestReportRequest())
        assert latest.report == report(3)
        # The journal's newest sequence is remembered: an older report is still stale.
        stale = send(stub, report(2))
        assert stale.rejection.reason == allocation_pb2.REJECTION_REASON_STALE_REPORT
    again.close()


def test_list_reports_pages_through_a_time_range(tmp_path: Path) -> None:
    history = ReportHistory(tmp_path / "history.db", keep=8)
    with (
        serve_position(tmp_path, history=history) as (port, _, _),
        open_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        for sequence in range(1, 11):
            send(stub, report(sequence))
        # Only the newest 8 are kept: 3 .. 10. Ask for minutes 4 to 9 (end exclusive).
        request = position_service_pb2.ListReportsRequest(
            start_time=Timestamp(seconds=BASE_SECONDS + 60 * 4),
            end_time=Timestamp(seconds=BASE_SECONDS + 60 * 9),
            page_size=2,
        )
        pages = []
        while True:
            page = stub.ListReports(request)
            pages.append([r.sequence for r in page.reports])
            assert all(not r.accounts for r in page.reports)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert pages == [[4, 5], [6, 7], [8]]
        everything = stub.ListReports(position_service_pb2.ListReportsRequest(page_size=100))
        assert [r.sequence for r in everything.reports] == list(range(3, 11))
        # The full view returns the reports as they were accepted, accounts included.
        full = stub.ListReports(
            position_service_pb2.ListReportsRequest(
                page_size=100, view=position_service_pb2.REPORT_VIEW_FULL
            )
        )
        assert list(full.reports) == [report(sequence) for sequence in range(3, 11)]
        # A token is only good for the range it was made for.
        other = position_service_pb2.ListReportsRequest(
            page_size=2,
            page_token=stub.ListReports(
                position_service_pb2.ListReportsRequest(page_size=2)
            ).next_page_token,
            start_time=Timestamp(seconds=BASE_SECONDS),
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListReports(other)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token belongs to a listing" in (raised.value.details() or "")
    history.close()
