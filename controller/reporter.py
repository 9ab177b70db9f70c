"""Periodic position reports to the PositionService.

Every interval the reporter asks the writer for a snapshot with a new, durable report sequence
(a copy of the book's arrays: milliseconds), then builds the report from it on this thread and
streams it in parts of at most ``PART_BYTES``, so a report of any size travels under the 4 MiB
default message limit and ingestion never waits for it.

While the position service is down or slow the controller keeps allocating: the reporter logs
once per outage (with the real status), retries at most every half interval, and each retry
sends a fresh snapshot, so no backlog of stale reports builds up. The channel's reconnect
backoff is capped well under the interval, so reports resume within one interval of the
position service's return however long it was away. A refused report is logged once per reason
and counted in ``allocation_reports_total{result="refused"}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from controller.metrics import REPORTS
from controller.paging import fill_page
from controller.sequencer import Sequencer, SequencerStopped
from controller.snapshot import BookSnapshot
from controller.wire import report_header, write_account

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.25
# Bytes and accounts per part of a streamed report.
PART_BYTES = 1024 * 1024
PART_ACCOUNTS = 1_000
# Each report call may take --report-deadline plus this much per account (2 s at 100,000).
SECONDS_PER_ACCOUNT = 2e-5


def report_parts(
    snapshot: BookSnapshot, header: allocation_pb2.PositionReport
) -> Iterator[position_service_pb2.ReportPositionsRequest]:
    """The report as ReportPositions parts: the header and first accounts, then more accounts.
    Rows are derived part by part, so only one part is held in memory at a time."""
    total = snapshot.account_count
    part = position_service_pb2.ReportPositionsRequest(report=header, account_count=total)
    start = 0
    while True:
        rows = snapshot.accounts_between(start, start + PART_ACCOUNTS)
        start += fill_page(part.report.accounts, rows, write_account, PART_BYTES)
        yield part
        if start >= total:
            return
        part = position_service_pb2.ReportPositionsRequest()


def channel_options(interval: float) -> list[tuple[str, int]]:
    """Reconnect backoff capped at a quarter interval (at most 1 s): gRPC's default grows to
    120 s, which after a long outage kept reports away for minutes."""
    cap_ms = max(50, min(1_000, int(interval * 250)))
    return [
        ("grpc.initial_reconnect_backoff_ms", min(100, cap_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, cap_ms)),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
    ]


class Reporter:
    """Background thread sending a full ``PositionReport`` every ``interval`` seconds."""

    def __init__(
        self, sequencer: Sequencer, address: str, interval: float, deadline: float
    ) -> None:
        """Report ``sequencer``'s book to the PositionService at ``address``."""
        self._sequencer = sequencer
        self._address = address
        self._interval = interval
        self._deadline = deadline
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._outage: grpc.StatusCode | None = None
        self._refusal: int | None = None

    def start(self) -> None:
        """Start reporting (the first report goes out after one interval)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting; an in-flight call finishes within its deadline."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        options = channel_options(self._interval)
        with grpc.insecure_channel(self._address, options=options) as channel:
            stub = position_service_pb2_grpc.PositionServiceStub(channel)
            delay = self._interval
            retry = FIRST_RETRY_SECONDS
            while not self._stopping.wait(delay):
                try:
                    snapshot, counters = self._sequencer.next_report()
                except SequencerStopped:
                    return
                header = report_header(
                    snapshot, counters.report_sequence, self._sequencer.journal_id, time.time_ns()
                )
                deadline = self._deadline + snapshot.account_count * SECONDS_PER_ACCOUNT
                try:
                    response = stub.ReportPositions(
                        report_parts(snapshot, header), timeout=deadline, wait_for_ready=True
                    )
                except grpc.RpcError as error:
                    self._failed(error)
                    delay = retry
                    retry = min(retry * 2, self._interval / 2)
                    continue
                self._answered(response, counters.report_sequence)
                delay, retry = self._interval, FIRST_RETRY_SECONDS

    def _failed(self, error: grpc.RpcError) -> None:
        REPORTS.labels("failure").inc()
        code = error.code()
        if code != self._outage:
            log.warning(
                "report not delivered; allocation continues, retrying",
                extra={"address": self._address, "code": code.name, "details": error.details()},
            )
            self._outage = code

    def _answered(
        self, response: position_service_pb2.ReportPositionsResponse, sequence: int
    ) -> None:
        if self._outage is not None:
            log.info("position service reachable again", extra={"address": self._address})
            self._outage = None
        if response.HasField("rejection"):
            REPORTS.labels("refused").inc()
            rejection = response.rejection
            if rejection.reason != self._refusal:
                log.warning(
                    "report refused by the position service",
                    extra={
                        "sequence": sequence,
                        "reason": allocation_pb2.RejectionReason.Name(rejection.reason),
                        "details": rejection.message,
                    },
                )
                self._refusal = rejection.reason
            return
        REPORTS.labels("success").inc()
        self._refusal = None
