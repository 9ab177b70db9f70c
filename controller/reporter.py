"""Periodic position reports to the PositionService.

Every interval the reporter takes a fresh snapshot (with a new, durable report sequence) and
sends it with a deadline. While the position service is down or slow the controller keeps
allocating: the reporter logs once per outage and retries with exponential backoff (capped at
the interval), and each retry sends the latest snapshot, so no backlog of stale reports builds up.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from allocation.v1 import position_service_pb2, position_service_pb2_grpc
from controller.metrics import REPORTS
from controller.sequencer import Sequencer, SequencerStopped
from controller.wire import report_message

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.25


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

    def start(self) -> None:
        """Start reporting (the first report goes out after one interval)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting; an in-flight call finishes within its deadline."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        with grpc.insecure_channel(self._address) as channel:
            stub = position_service_pb2_grpc.PositionServiceStub(channel)
            delay = self._interval
            retry = FIRST_RETRY_SECONDS
            in_outage = False
            while not self._stopping.wait(delay):
                try:
                    snapshot, sequence = self._sequencer.next_report()
                except SequencerStopped:
                    return
                request = position_service_pb2.ReportPositionsRequest(
                    report=report_message(snapshot, sequence, time.time_ns())
                )
                try:
                    stub.ReportPositions(request, timeout=self._deadline)
                except grpc.RpcError as error:
                    REPORTS.labels("failure").inc()
                    if not in_outage:
                        log.warning(
                            "position service unreachable; allocation continues, retrying",
                            extra={"address": self._address, "code": str(error.code())},
                        )
                        in_outage = True
                    delay = retry
                    retry = min(retry * 2, self._interval)
                    continue
                REPORTS.labels("success").inc()
                if in_outage:
                    log.info("position service reachable again", extra={"address": self._address})
                    in_outage = False
                delay, retry = self._interval, FIRST_RETRY_SECONDS
