"""Periodic position reports to the PositionService.

Every interval the reporter asks the writer for a snapshot with a new, durable report sequence
(copies of the book's arrays: milliseconds at 100,000 accounts). Everything else happens in a
worker process: deriving every account's row, building the protobuf parts (at most
``PART_BYTES`` each, so a report of any size travels under the 4 MiB default message limit) and
streaming them. Given several position service addresses, a failed report sends the next one
to the next address. A 100,000-account report is seconds of pure-Python work; in a thread it
would share the GIL with the writer and stall ingestion for hundreds of milliseconds, in its
own process it runs on another core.

While the position service is down or slow the controller keeps allocating: the reporter logs
once per outage (with the real status), retries at most every half interval, and each retry
sends a fresh snapshot, so no backlog of stale reports builds up. The worker's channel caps
gRPC's reconnect backoff well under the interval, so reports resume within one interval of the
position service's return however long it was away. A refused report is logged once per reason
and counted in ``allocation_reports_total{result="refused"}``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

import grpc

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from controller.metrics import REPORTS
from controller.paging import fill_page
from controller.sequencer import Sequencer, SequencerStopped
from controller.snapshot import BookSnapshot, SharedSnapshot
from controller.transport import PLAINTEXT, TLSConfig, open_channel
from controller.wire import report_header, write_account

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.25
# Bytes and accounts per part of a streamed report.
PART_BYTES = 1024 * 1024
PART_ACCOUNTS = 1_000
# Each report call may take --report-deadline plus this much per account (10 s at 100,000):
# the worker builds the parts while it streams them.
SECONDS_PER_ACCOUNT = 1e-4


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


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one report call (made in the worker process; plain data to pickle)."""

    code: str = ""
    """The gRPC status name when the call failed; empty when it was answered."""
    details: str = ""
    rejection_reason: int = 0
    """A RejectionReason value when the position service refused the report."""

    @property
    def refused(self) -> bool:
        """The position service answered, and refused the report."""
        return not self.code and self.rejection_reason != 0


# The worker process's channels, by (address, TLS, interval): one per position service, kept open;
# and the shared memory its snapshots arrive in, kept attached.
_CHANNELS: dict[tuple[str, TLSConfig, float], grpc.Channel] = {}
_ATTACHED: dict[str, SharedMemory] = {}


def deliver(
    address: str,
    tls: TLSConfig,
    interval: float,
    shared: SharedSnapshot,
    header: allocation_pb2.PositionReport,
    deadline: float,
) -> Delivery:
    """Build the report from the shared snapshot and stream it (runs in the worker process)."""
    memory = _ATTACHED.get(shared.memory)
    if memory is None:
        for old in _ATTACHED.values():
            old.close()
        _ATTACHED.clear()
        memory = _ATTACHED[shared.memory] = SharedMemory(name=shared.memory)
    snapshot = shared.load(memory)
    channel = _CHANNELS.get((address, tls, interval))
    if channel is None:
        channel = open_channel(address, tls, channel_options(interval))
        _CHANNELS[address, tls, interval] = channel
    stub = position_service_pb2_grpc.PositionServiceStub(channel)
    try:
        response = stub.ReportPositions(
            report_parts(snapshot, header), timeout=deadline, wait_for_ready=True
        )
    except grpc.RpcError as error:
        return Delivery(code=error.code().name, details=error.details() or "")
    if response.HasField("rejection"):
        rejection = response.rejection
        return Delivery(rejection_reason=rejection.reason, details=rejection.message)
    return Delivery()


def _prepare_worker() -> None:
    """Worker initialiser. A lower priority: on a busy machine the writer's core time matters
    more. And the worker exits with the controller: after a kill -9 nothing else would end it
    (it holds both ends of its own task pipe, so it never reads end-of-file)."""
    os.nice(10)
    parent = multiprocessing.parent_process()
    if parent is not None:
        watch = threading.Thread(target=_exit_after, args=(parent,), daemon=True)
        watch.start()


def _exit_after(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()
    os._exit(1)


class Reporter:
    """Background thread sending a full ``PositionReport`` every ``interval`` seconds."""

    def __init__(
        self,
        sequencer: Sequencer,
        address: str,
        interval: float,
        deadline: float,
        tls: TLSConfig = PLAINTEXT,
    ) -> None:
        """Report ``sequencer``'s book to the PositionService at ``address`` over ``tls``: one
        host:port (or any gRPC target), or several comma-separated, tried in turn from the
        first: a report that cannot be delivered sends the next one to the next address."""
        self._sequencer = sequencer
        self._addresses = [part.strip() for part in address.split(",") if part.strip()]
        self._address = self._addresses[0]
        self._tls = tls
        self._interval = interval
        self._deadline = deadline
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._outage: str | None = None
        self._refusal: int | None = None
        self._memory: SharedMemory | None = None

    def start(self) -> None:
        """Start reporting (the first report goes out after one interval)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting; an in-flight call finishes within its deadline."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        delay = self._interval
        retry = FIRST_RETRY_SECONDS
        # Spawned, not forked: a forked child would inherit gRPC's threads in an unknown state.
        spawn = multiprocessing.get_context("spawn")

        def new_worker() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(1, mp_context=spawn, initializer=_prepare_worker)

        worker = new_worker()
        try:
            while not self._stopping.wait(delay):
                try:
                    snapshot, counters = self._sequencer.next_report()
                except SequencerStopped:
                    return
                header = report_header(
                    snapshot, counters, self._sequencer.journal_id, time.time_ns()
                )
                deadline = self._deadline + snapshot.account_count * SECONDS_PER_ACCOUNT
                memory = self._memory_for(snapshot)
                shared = snapshot.share(memory)
                try:
                    delivery = worker.submit(
                        deliver,
                        self._address,
                        self._tls,
                        self._interval,
                        shared,
                        header,
                        deadline,
                    ).result()
                except BrokenProcessPool as error:
                    log.error("report worker died; starting a new one", extra={"error": str(error)})
                    worker = new_worker()
                    delivery = Delivery(code="WORKER_DIED", details=str(error))

                if delivery.code:
                    self._failed(delivery)
                    delay = retry
                    retry = min(retry * 2, self._interval / 2)
                    continue
                self._answered(delivery, counters.report_sequence)
                delay, retry = self._interval, FIRST_RETRY_SECONDS
        finally:
            worker.shutdown(wait=True, cancel_futures=True)
            self._release_memory()

    def _memory_for(self, snapshot: BookSnapshot) -> SharedMemory:
        """The shared memory for ``snapshot``: the same block report after report (its pages
        stay mapped), replaced by a larger one only when the book grows."""
        needed = max(1, snapshot.shared_bytes)
        if self._memory is None or self._memory.size < needed:
            self._release_memory()
            self._memory = SharedMemory(create=True, size=needed + needed // 4)
        return self._memory

    def _release_memory(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory.unlink()
            self._memory = None

    def _failed(self, delivery: Delivery) -> None:
        REPORTS.labels("failure").inc()
        failed = self._address
        self._address = self._addresses[(self._addresses.index(failed) + 1) % len(self._addresses)]
        if delivery.code != self._outage:
            log.warning(
                "report not delivered; allocation continues, retrying",
                extra={
                    "address": failed,
                    "code": delivery.code,
                    "details": delivery.details,
                },
            )
            self._outage = delivery.code

    def _answered(self, delivery: Delivery, sequence: int) -> None:
        if self._outage is not None:
            log.info("position service reachable again", extra={"address": self._address})
            self._outage = None
        if delivery.refused:
            REPORTS.labels("refused").inc()
            if delivery.rejection_reason != self._refusal:
                log.warning(
                    "report refused by the position service",
                    extra={
                        "sequence": sequence,
                        "reason": allocation_pb2.RejectionReason.Name(
                            delivery.rejection_reason  # type: ignore[arg-type]
                        ),
                        "details": delivery.details,
                    },
                )
                self._refusal = delivery.rejection_reason
            return
        REPORTS.labels("success").inc()
        self._refusal = None
