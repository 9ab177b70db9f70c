"""The dashboard in headless Chromium: time to first render and to a filtered table, for a book
of 10 accounts and one of 100,000 (the same page, the same run), on a real position service."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from allocation.v1 import allocation_pb2, position_service_pb2, position_service_pb2_grpc
from benchmarks.system import ROOT, TICKERS, free_port
from controller.transport import open_channel

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOADS = 5
PART_ACCOUNTS = 1_000


@dataclass(frozen=True)
class RenderRow:
    """Medians over ``LOADS`` page loads of one book."""

    accounts: int
    first_render_ms: float
    """Navigation start to the first page of the table and the chart drawn."""
    filter_ms: float
    """A filter typed to the table showing only the matching account."""


def parts(accounts: int, sequence: int) -> Iterator[position_service_pb2.ReportPositionsRequest]:
    """A report of ``accounts`` accounts holding every ticker, in parts of 1,000 accounts."""
    header = allocation_pb2.PositionReport(
        sequence=sequence,
        journal_id=f"bench-{accounts}",
        generate_time=Timestamp(seconds=int(time.time())),
        split_id="bench",
        fill_count=accounts,
        total_value=str(accounts * 1_000),
        total_market_value=str(accounts * 1_000),
    )
    for start in range(0, accounts, PART_ACCOUNTS):
        part = position_service_pb2.ReportPositionsRequest(account_count=accounts)
        if start == 0:
            part.report.CopyFrom(header)
        for i in range(start, min(start + PART_ACCOUNTS, accounts)):
            part.report.accounts.append(
                allocation_pb2.AccountPositions(
                    account=f"acct-{i:06d}",
                    target_percent=f"{100 / accounts:.6f}",
                    actual_percent=f"{100 / accounts:.6f}",
                    value="1000",
                    market_value="1000",
                    deviation=str((i * 7919) % 201 - 100),
                    positions=[
                        allocation_pb2.Position(
                            ticker=t, quantity=1, value="100", market_value="100"
                        )
                        for t in TICKERS
                    ],
                )
            )
        yield part


def wait_until_shown(url: str, journal_id: str) -> None:
    """Until the dashboard serves the report of ``journal_id`` (it summarises in the background),
    so that a page load measures rendering, not the report's arrival."""
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/latest?limit=1", timeout=60) as answer:
                if json.load(answer)["report"]["journal_id"] == journal_id:
                    return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        time.sleep(0.05)


def measure(url: str, accounts: int) -> RenderRow:
    """Load the page ``LOADS`` times; filter once per load."""
    from playwright.sync_api import sync_playwright

    renders, filters = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        for load in range(LOADS):
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_function(
                "document.querySelectorAll('#accounts tbody tr').length > 0"
                " && document.getElementById('drift').data !== undefined",
                timeout=120_000,
            )
            renders.append(time.perf_counter() - started)
            account = f"acct-{(load * 37) % accounts:06d}"
            started = time.perf_counter()
            page.fill("#filter", account)
            page.wait_for_function(
                "[...document.querySelectorAll('#accounts tbody tr')]"
                f".map(r => r.dataset.account).join() === '{account}'",
                timeout=120_000,
            )
            filters.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return RenderRow(accounts, statistics.median(renders) * 1000, statistics.median(filters) * 1000)


def run(console: Console, quick: bool) -> dict[str, object]:
    """Both books on one position service; prints one table."""
    if not CHROMIUM.exists():
        console.print("dashboard benchmark skipped: apt-get install chromium")
        return {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fill-allocator-bench-") as tmp:
        grpc_port, http_port = free_port(), free_port()
        service = subprocess.Popen(
            [sys.executable, "-m", "position", f"--port={grpc_port}",
             f"--http-port={http_port}", f"--history={Path(tmp) / 'history.db'}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with open_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = position_service_pb2_grpc.PositionServiceStub(channel)
                url = f"http://127.0.0.1:{http_port}"
                for accounts in (10, 10_000 if quick else 100_000):
                    answer = stub.ReportPositions(
                        parts(accounts, 1), timeout=300, wait_for_ready=True
                    )
                    if answer.HasField("rejection"):
                        raise RuntimeError(f"report refused: {answer.rejection.message}")
                    wait_until_shown(url, f"bench-{accounts}")
                    rows.append(measure(f"{url}/", accounts))
        finally:
            service.terminate()
            service.wait(30)
    table = Table(title="Dashboard in headless Chromium (one position service, medians of 5 loads)")
    for column in ("book", "first render", "filter to one account", "vs 10 accounts"):
        table.add_column(column, justify="right")
    small = rows[0]
    for row in rows:
        table.add_row(
            f"{row.accounts:,} accounts",
            f"{row.first_render_ms:,.0f} ms",
            f"{row.filter_ms:,.0f} ms",
            f"{row.first_render_ms / small.first_render_ms:.2f}x render,"
            f" {row.filter_ms / small.filter_ms:.2f}x filter",
        )
    console.print(table)
    return {"rows": [asdict(r) for r in rows]}
