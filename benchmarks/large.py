"""A 100,000-account book end to end, with real processes on loopback.

Fills are submitted one after another (SubmitFill, so each latency is the wait for one
acknowledgement) while the controller reports every ``REPORT_SECONDS`` to a real position
service. The longest acknowledgement is the longest pause ingestion suffered while reports
were built; the same loop against a controller that never reports, in the same run, is the
baseline. Also: reports that arrived, controller and position service memory, and grpcurl
paging through GetPositions with its default message limits.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from allocation.v1 import (
    allocation_pb2,
    controller_service_pb2,
    controller_service_pb2_grpc,
    position_service_pb2,
    position_service_pb2_grpc,
)
from benchmarks.system import TICKERS, Server, start
from controller.transport import open_channel
from simulators.aum import random_split

REPORT_SECONDS = 2.0
# The measurement is cut into this many windows; the median of their longest pauses is the
# figure least moved by one stray fsync on a shared machine.
WINDOWS = 5
GRPCURL = Path(sys.executable).parent / "grpcurl"


def split_over(accounts: int) -> controller_service_pb2.SetAumSplitRequest:
    """A seeded random split over ``accounts`` accounts, as the AUM server makes one (equal
    weights would measure the tie-breaking cost of issue 15 instead of reporting)."""
    return controller_service_pb2.SetAumSplitRequest(
        split=random_split(random.Random(7), accounts, f"large-{accounts}")
    )


def acknowledgement_latencies(address: str, seconds: float, prefix: str) -> list[float]:
    """Submit buys one after another for ``seconds``; the latency of each acknowledgement."""
    latencies = []
    with open_channel(address) as channel:
        stub = controller_service_pb2_grpc.ControllerServiceStub(channel)
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:
            request = controller_service_pb2.SubmitFillRequest(
                fill=allocation_pb2.Fill(
                    fill_id=f"{prefix}-{n}",
                    ticker=TICKERS[n % len(TICKERS)],
                    price=f"{100 + n % 50}.25",
                    quantity=100,
                    side=allocation_pb2.SIDE_BUY,
                )
            )
            sent = time.perf_counter()
            stub.SubmitFill(request, timeout=60)
            latencies.append(time.perf_counter() - sent)
            n += 1
    return latencies


def grpcurl_pages(port: int) -> tuple[int, int, float]:
    """(pages, accounts, seconds) to read GetPositions with grpcurl's default limits."""
    token, pages, accounts = "", 0, 0
    started = time.perf_counter()
    while True:
        run = subprocess.run(
            [
                str(GRPCURL),
                "-plaintext",
                "-d",
                json.dumps({"page_size": 5_000, "page_token": token}),
                f"127.0.0.1:{port}",
                "allocation.v1.ControllerService/GetPositions",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        page = json.loads(run.stdout)
        pages += 1
        accounts += len(page["report"].get("accounts", []))
        token = page.get("next_page_token", "")
        if not token:
            return pages, accounts, time.perf_counter() - started


@dataclass(frozen=True)
class LargeBookResult:
    """Figures of one large-book run."""

    accounts: int
    seconds: float
    fills_with_reports: int
    window_max_ms_with_reports: float
    """Median over the windows of the longest pause in each."""
    window_max_ms_without_reports: float
    max_pause_ms_with_reports: float
    p99_ms_with_reports: float
    p50_ms_with_reports: float
    max_pause_ms_without_reports: float
    p99_ms_without_reports: float
    reports_arrived: int
    report_accounts: int
    controller_rss_mb: float
    position_rss_mb: float
    grpcurl_pages: int
    grpcurl_accounts: int
    grpcurl_seconds: float


def latest_report(position: Server) -> tuple[int, int]:
    """(sequence, total accounts) of the position service's latest report."""
    with open_channel(position.address) as channel:
        page = position_service_pb2_grpc.PositionServiceStub(channel).GetLatestReport(
            position_service_pb2.GetLatestReportRequest(page_size=1)
        )
    return page.report.sequence, page.total_size


def latest_report_or_none(position: Server) -> tuple[int, int] | None:
    """Like ``latest_report``, None before the first report."""
    try:
        return latest_report(position)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def run(accounts: int, seconds: float) -> LargeBookResult:
    """Measure with reports every ``REPORT_SECONDS``, then the no-report baseline."""
    split = split_over(accounts)
    with tempfile.TemporaryDirectory(prefix="fill-allocator-large-") as tmp:
        workdir = Path(tmp)
        # The position service stands in for one on another host: on this 2-core machine it
        # would otherwise take the controller's core while it checks 100,000-account reports.
        position = start("position", f"--history={workdir / 'history.db'}", nice=10)
        controller = start(
            "controller",
            f"--db={workdir / 'reports.db'}",
            f"--report-interval={REPORT_SECONDS}",
            f"--position-address={position.address}",
        )
        with open_channel(controller.address) as channel:
            stub = controller_service_pb2_grpc.ControllerServiceStub(channel)
            stub.SetAumSplit(split, timeout=120)
        acknowledgement_latencies(controller.address, 1.0, "warm")
        while latest_report_or_none(position) is None:
            time.sleep(0.2)
        first_sequence, _ = latest_report(position)
        with_reports = acknowledgement_latencies(controller.address, seconds, "r")
        last_sequence, report_accounts = latest_report(position)
        pages, paged_accounts, paging_seconds = grpcurl_pages(controller.port)
        controller_rss, position_rss = controller.rss_mb(), position.rss_mb()
        controller.stop()
        position.stop()

        quiet = start("controller", f"--db={workdir / 'quiet.db'}", "--report-interval=3600")
        with open_channel(quiet.address) as channel:
            controller_service_pb2_grpc.ControllerServiceStub(channel).SetAumSplit(
                split, timeout=120
            )
        acknowledgement_latencies(quiet.address, 1.0, "warm")
        without_reports = acknowledgement_latencies(quiet.address, seconds, "q")
        quiet.stop()

    def quantile(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1e3

    def window_max(values: list[float]) -> float:
        size = max(1, len(values) // WINDOWS)
        return (
            statistics.median(max(values[i : i + size]) for i in range(0, len(values), size)) * 1e3
        )

    return LargeBookResult(
        accounts=accounts,
        seconds=seconds,
        fills_with_reports=len(with_reports),
        window_max_ms_with_reports=window_max(with_reports),
        window_max_ms_without_reports=window_max(without_reports),
        max_pause_ms_with_reports=max(with_reports) * 1e3,
        p99_ms_with_reports=quantile(with_reports, 99),
        p50_ms_with_reports=quantile(with_reports, 50),
        max_pause_ms_without_reports=max(without_reports) * 1e3,
        p99_ms_without_reports=quantile(without_reports, 99),
        reports_arrived=last_sequence - first_sequence,
        report_accounts=report_accounts,
        controller_rss_mb=controller_rss,
        position_rss_mb=position_rss,
        grpcurl_pages=pages,
        grpcurl_accounts=paged_accounts,
        grpcurl_seconds=paging_seconds,
    )
