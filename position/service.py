"""``PositionService`` on the wire: assemble streamed reports, keep the newest per journal, show it.

A report arrives as a stream of parts; it is accepted only when complete, well-formed, newer than
the last report of the same journal, and still wanted by its sender (a sender that gave up, for
example after the service was paused, is not shown an old report late). Sequences of different
journals are never compared, so a controller on a fresh journal is accepted at once and a
report with an absurd sequence blocks at most its own journal. Pages of the latest report are
served under the default message size (AIP-158).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from rich.console import Console

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from controller.domain import Rejected, RejectReason
from controller.errors import refusals_abort, rejection_message
from controller.paging import (
    MAX_PAGE_BYTES,
    ListingCache,
    decode_token,
    encode_token,
    fill_page,
    listing_expired,
    page_size,
)
from controller.serving import POSITION_SERVICE
from controller.validation import timestamp_ns
from position.history import ReportHistory
from position.render import RenderOptions, check_report, render_report

log = logging.getLogger(__name__)

# Journals whose newest sequence is remembered (the oldest-seen are forgotten beyond this).
MAX_JOURNALS = 1_000
# Report headers per ListReports page (each is small: no accounts).
DEFAULT_REPORTS_PAGE = 100
MAX_REPORTS_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class KeptReport:
    """An accepted report, and its header (every field but the accounts) for pages. Never
    changed once accepted, so listings share it."""

    header: allocation_pb2.PositionReport
    report: allocation_pb2.PositionReport


def _invalid(field: str, message: str) -> Rejected:
    return Rejected(RejectReason.INVALID_ARGUMENT, field, message)


def assemble(parts: Iterator[position_service_pb2.ReportPositionsRequest]) -> KeptReport:
    """Merge a report's parts and check it; ``Rejected`` if it is malformed or incomplete."""
    first = next(parts, None)
    if first is None:
        raise _invalid("report", "the ReportPositions stream carried no part")
    header = allocation_pb2.PositionReport()
    header.CopyFrom(first.report)
    header.ClearField("accounts")
    report = allocation_pb2.PositionReport()
    report.CopyFrom(first.report)
    expected = first.account_count
    for part in parts:
        report.accounts.extend(part.report.accounts)
        if len(report.accounts) > expected:
            break
    if len(report.accounts) != expected:
        raise _invalid(
            "account_count",
            f"the parts carried {len(report.accounts)} accounts but account_count is {expected}",
        )
    if not report.journal_id:
        raise _invalid("report.journal_id", "report.journal_id is empty; reports must name it")
    check_report(report)
    return KeptReport(header, report)


class PositionService(position_service_pb2_grpc.PositionServiceServicer):
    """Accepts reports newer than the last of their journal; shows them and appends them to
    ``jsonl``."""

    def __init__(
        self,
        console: Console,
        options: RenderOptions,
        jsonl: Path | None = None,
        history: ReportHistory | None = None,
        on_accept: Callable[[allocation_pb2.PositionReport], None] | None = None,
    ) -> None:
        """Print accepted reports to ``console`` as ``options`` say; with a ``history``, keep
        them there and start from what it holds (the latest report, each journal's newest
        sequence). ``on_accept`` is told of every accepted report, in order (it must return
        quickly: the dashboard's ``publish``)."""
        self._on_accept = on_accept
        self._console = console
        self._options = options
        self._jsonl = jsonl
        self._history = history
        self._lock = threading.Lock()
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._latest: KeptReport | None = None
        if history is not None:
            self._newest.update(history.newest_sequences())
            latest = history.latest()
            if latest is not None:
                header = allocation_pb2.PositionReport()
                header.CopyFrom(latest)
                header.ClearField("accounts")
                self._latest = KeptReport(header, latest)
        # Reports being paged through by GetLatestReport, so a listing can finish after newer
        # reports arrive.
        self._listings: ListingCache[KeptReport] = ListingCache()
        if jsonl is not None:
            jsonl.parent.mkdir(parents=True, exist_ok=True)

    def ReportPositions(
        self,
        request_iterator: Iterator[position_service_pb2.ReportPositionsRequest],
        context: grpc.ServicerContext,
    ) -> position_service_pb2.ReportPositionsResponse:
        """Accept, show and keep a complete report that is newer than its journal's last."""
        try:
            kept = assemble(request_iterator)
            self._accept(kept, context)
        except Rejected as rejected:
            log.info(
                "report refused",
                extra={"reason": rejected.reason.value, "details": rejected.message},
            )
            return position_service_pb2.ReportPositionsResponse(
                rejection=rejection_message(rejected)
            )
        report = kept.report
        log.info(
            "report accepted",
            extra={
                "journal_id": report.journal_id,
                "sequence": report.sequence,
                "fill_count": report.fill_count,
                "split_id": report.split_id,
                "accounts": len(report.accounts),
            },
        )
        return position_service_pb2.ReportPositionsResponse(
            accepted=position_service_pb2.ReportReceipt(
                journal_id=report.journal_id, sequence=report.sequence
            )
        )

    def _accept(self, kept: KeptReport, context: grpc.ServicerContext) -> None:
        report = kept.report
        with self._lock:
            newest = self._newest.get(report.journal_id)
            if newest is not None and report.sequence <= newest:
                raise Rejected(
                    RejectReason.STALE_REPORT,
                    "report.sequence",
                    f"report {report.sequence} of journal {report.journal_id} is not newer than"
                    f" report {newest}, already accepted",
                )
            # Checked last, under the lock: a sender that gave up (its deadline passed while this
            # service was paused) has a newer report on the way; this one must not be shown.
            if not context.is_active():
                raise Rejected(
                    RejectReason.STALE_REPORT,
                    "report",
                    f"report {report.sequence} arrived after its sender gave up on it",
                )
            self._newest[report.journal_id] = report.sequence
            self._newest.move_to_end(report.journal_id)
            while len(self._newest) > MAX_JOURNALS:
                self._newest.popitem(last=False)
            if self._history is not None:
                self._history.add(kept.header, report)
            self._latest = kept
            if self._on_accept is not None:
                self._on_accept(report)
            self._console.print(render_report(report, self._options))
            if self._jsonl is not None:
                line = json_format.MessageToJson(report, indent=None, sort_keys=True)
                with self._jsonl.open("a") as out:
                    out.write(line + "\n")

    def GetLatestReport(
        self, request: position_service_pb2.GetLatestReportRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.GetLatestReportResponse:
        """One page of the report accepted most recently, or NOT_FOUND before the first."""
        with refusals_abort(context, POSITION_SERVICE):
            size = page_size(request.page_size)
            if request.page_token:
                key, start = decode_token(request.page_token)
                found = self._listings.get(key)
                if found is None or start > len(found.report.accounts):
                    raise listing_expired()
                current = found
            else:
                with self._lock:
                    latest = self._latest
                if latest is None:
                    raise Rejected(RejectReason.NOT_FOUND, "", "no report has been accepted yet")
                newest = self._listings.newest()
                start = 0
                key, current = (
                    newest
                    if newest is not None and newest[1] is latest
                    else (self._listings.add(latest), latest)
                )
        accounts = current.report.accounts
        response = position_service_pb2.GetLatestReportResponse(total_size=len(accounts))
        response.report.CopyFrom(current.header)
        shown = fill_page(
            response.report.accounts,
            accounts[start : start + size],
            lambda target, account: target.CopyFrom(account),
        )
        if start + shown < len(accounts):
            response.next_page_token = encode_token(key, start + shown)
        return response

    def ListReports(
        self, request: position_service_pb2.ListReportsRequest, context: grpc.ServicerContext
    ) -> position_service_pb2.ListReportsResponse:
        """A page of the kept reports generated in the requested time range (headers unless
        the request asks for REPORT_VIEW_FULL)."""
        with refusals_abort(context, POSITION_SERVICE):
            size = page_size(request.page_size, DEFAULT_REPORTS_PAGE, MAX_REPORTS_PAGE)
            start = (
                timestamp_ns(request.start_time, "start_time")
                if request.HasField("start_time")
                else 0
            )
            end = (
                timestamp_ns(request.end_time, "end_time")
                if request.HasField("end_time")
                else (1 << 63) - 1
            )
            full = request.view == position_service_pb2.REPORT_VIEW_FULL
            key = f"{start}-{end}-{int(full)}"
            after = 0
            if request.page_token:
                token_key, after = decode_token(request.page_token)
                if token_key != key:
                    raise Rejected(
                        RejectReason.INVALID_ARGUMENT,
                        "page_token",
                        "page_token belongs to a listing with another start_time, end_time or view",
                    )
            if self._history is None:
                raise Rejected(
                    RejectReason.NOT_FOUND,
                    "",
                    "this position service keeps no history (started without --history)",
                )
            found = self._history.between(start, end, after, size + 1, full)
            response = position_service_pb2.ListReportsResponse()
            shown = fill_page(
                response.reports,
                (stored.report for stored in found[:size]),
                lambda target, report: target.CopyFrom(report),
            )
            if response.reports and response.reports[0].ByteSize() > MAX_PAGE_BYTES:
                first = found[0].report
                raise Rejected(
                    RejectReason.TOO_LARGE,
                    "view",
                    f"report {first.sequence} of journal {first.journal_id} takes"
                    f" {first.ByteSize():,} bytes, more than a page may ({MAX_PAGE_BYTES:,}):"
                    " list it with REPORT_VIEW_BASIC",
                )
        if shown < len(found):
            response.next_page_token = encode_token(key, found[shown - 1].id)
        return response
