"""The position service's web dashboard: its JSON API and live stream against a real aiohttp
server, and the page in a real headless Chromium fed by a real controller and simulators."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from allocation.v1 import (
    allocation_pb2,
    controller_service_pb2,
    controller_service_pb2_grpc,
    position_service_pb2,
    position_service_pb2_grpc,
)
from benchmarks.dashboard import CHROMIUM, CHROMIUM_FLAGS
from controller.transport import open_channel
from position.dashboard import Dashboard
from position.history import ReportHistory
from tests.conftest import Program, start_program

# The README's picture is rewritten only by `make screenshot`, which names it here; every other
# run takes its screenshot into the test's own directory and leaves the checkout as it was.
SCREENSHOT_TO = "DASHBOARD_SCREENSHOT"
REPORT_INTERVAL = 1.0


def book(sequence: int, accounts: int = 30) -> allocation_pb2.PositionReport:
    """A report of ``accounts`` accounts, acct-00 .. ; account i deviates by i - 10."""
    return allocation_pb2.PositionReport(
        sequence=sequence,
        journal_id="journal-a",
        generate_time=Timestamp(seconds=1_800_000_000 + sequence),
        split_id="s-1",
        fill_count=10 * sequence,
        total_value="10000",
        total_market_value="10000",
        accounts=[
            allocation_pb2.AccountPositions(
                account=f"acct-{i:02d}",
                target_percent="1",
                actual_percent="1",
                value="100",
                market_value="100",
                deviation=str(i - 10),
                positions=[allocation_pb2.Position(ticker="AAPL", quantity=i, value="1")],
            )
            for i in range(accounts)
        ],
    )


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[Dashboard, str]]:
    """A dashboard on a free port, its history in tmp_path; and its base URL."""
    history = ReportHistory(tmp_path / "history.db")
    board = Dashboard(history)
    port = board.start("127.0.0.1", 0)
    yield board, f"http://127.0.0.1:{port}"
    board.stop()
    history.close()


def get_json(url: str) -> Any:
    """The decoded JSON body at ``url``."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def events(url: str, count: int, last_event_id: str = "") -> list[dict[str, object]]:
    """The first ``count`` report events of the live stream."""
    request = urllib.request.Request(f"{url}/api/events")
    if last_event_id:
        request.add_header("Last-Event-ID", last_event_id)
    found: list[dict[str, object]] = []
    with urllib.request.urlopen(request, timeout=10) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data: "):
                found.append(json.loads(line.removeprefix("data: ")))
                if len(found) == count:
                    return found
    return found


def test_the_latest_report_is_paged_sorted_and_filtered_by_the_server(
    dashboard: tuple[Dashboard, str],
) -> None:
    board, url = dashboard
    board.publish(book(1))
    first = events(url, 1)[0]
    assert first["sequence"] == 1
    page = get_json(f"{url}/api/latest?sort=deviation&order=desc&limit=5&offset=2")
    assert page["matched"] == 30
    accounts = page["accounts"]
    assert [a["account"] for a in accounts] == [f"acct-{i:02d}" for i in (27, 26, 25, 24, 23)]
    assert accounts[0]["deviation"] == "17"
    assert accounts[0]["deviation_bp"] == "17.0"
    assert accounts[0]["positions"] == {"AAPL": 27}
    filtered = get_json(f"{url}/api/latest?filter=CCT-1&limit=100")
    assert [a["account"] for a in filtered["accounts"]] == [f"acct-{i}" for i in range(10, 20)]
    assert first["worst_bp"] == 19.0


@pytest.mark.parametrize(
    ("query", "named"),
    [("sort=price", "sort 'price'"), ("limit=5000", "limit 5000"), ("offset=x", "offset 'x'")],
)
def test_a_bad_query_is_refused_400_naming_the_parameter(
    dashboard: tuple[Dashboard, str], query: str, named: str
) -> None:
    board, url = dashboard
    board.publish(book(1))
    events(url, 1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/latest?{query}", timeout=10)
    assert refused.value.code == 400
    assert named in json.load(refused.value)["error"]


def test_a_reconnecting_stream_gets_every_report_it_missed_then_new_ones(
    dashboard: tuple[Dashboard, str],
) -> None:
    board, url = dashboard
    for sequence in (1, 2, 3):
        board.publish(book(sequence))
    seen = events(url, 3)
    assert [e["sequence"] for e in seen] == [1, 2, 3]
    board.publish(book(4))
    board.publish(book(5))
    missed = events(url, 2, last_event_id=str(seen[0]["index"]))
    assert [e["sequence"] for e in missed] == [2, 3]
    history = get_json(f"{url}/api/history?start_ns={1_800_000_002 * 10**9}&accounts=acct-00")
    reports = history["reports"]
    assert [r["sequence"] for r in reports] == [2, 3, 4, 5]
    assert all(r["deviations_bp"] == {"acct-00": -10.0} for r in reports)


def test_a_restarted_dashboard_starts_from_the_reports_the_history_keeps(tmp_path: Path) -> None:
    history = ReportHistory(tmp_path / "history.db")
    for sequence in (1, 2):
        report = book(sequence)
        header = allocation_pb2.PositionReport()
        header.CopyFrom(report)
        header.ClearField("accounts")
        history.add(header, report)
    board = Dashboard(history)
    port = board.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}"
        assert [r["sequence"] for r in get_json(f"{url}/api/history")["reports"]] == [1, 2]
        assert get_json(f"{url}/api/latest")["report"]["sequence"] == 2
    finally:
        board.stop()
        history.close()


def list_reports(port: int) -> int:
    """How many reports the position service's history holds (its own gRPC listing)."""
    with open_channel(f"127.0.0.1:{port}") as channel:
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        request = position_service_pb2.ListReportsRequest(page_size=1000)
        return len(stub.ListReports(request).reports)


@pytest.mark.timeout(180)
def test_the_page_shows_the_live_book_in_a_real_browser(
    programs: list[Program], tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        message = "Chromium is not installed: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("REQUIRE_CHROMIUM"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    position = start_program(
        "position", "--port=0", "--http-port=0", f"--history={tmp_path / 'history.db'}"
    )
    programs.append(position)
    position_port = position.wait_listening()
    http_port = int(str(position.wait_for("dashboard listening")["port"]))
    controller = start_program(
        "controller", "--port=0", f"--db={tmp_path / 'journal.db'}",
        f"--report-interval={REPORT_INTERVAL}", f"--position-address=127.0.0.1:{position_port}",
    )  # fmt: skip
    programs.append(controller)
    address = f"127.0.0.1:{controller.wait_listening()}"
    for simulator in (
        ("aum", "--interval=3", "--accounts=6", "--seed=11"),
        ("fills", "--rate=8", "--seed=11"),
    ):
        programs.append(start_program("simulators", simulator[0], f"--controller={address}",
                                      *simulator[1:]))  # fmt: skip
    position.wait_for_entry("report accepted", lambda e: int(str(e["fill_count"])) > 0)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"http://127.0.0.1:{http_port}/")
        page.wait_for_selector("#accounts tbody tr")
        with open_channel(address) as channel:
            split = (
                controller_service_pb2_grpc.ControllerServiceStub(channel)
                .GetPositions(controller_service_pb2.GetPositionsRequest())
                .report
            )
        in_split = {a.account for a in split.accounts if a.target_percent != "0"}
        shown = set(
            page.eval_on_selector_all(
                "#accounts tbody tr", "rows => rows.map(r => r.dataset.account)"
            )
        )
        assert in_split <= shown

        # A new report appears within one interval, without a reload.
        before = page.inner_text("#sequence")
        page.wait_for_function(
            f"document.getElementById('sequence').textContent !== {before!r}",
            timeout=(REPORT_INTERVAL + 1.0) * 1000,
        )
        assert "live" in page.inner_text("#status")

        account = sorted(shown)[1]
        page.fill("#filter", account)
        page.wait_for_function(
            f"[...document.querySelectorAll('#accounts tbody tr')].map(r => r.dataset.account)"
            f".join() === {account!r}"
        )
        page.fill("#filter", "")
        page.wait_for_function(
            f"document.querySelectorAll('#accounts tbody tr').length === {len(shown)}"
        )

        # The README's picture: the seeded book, live, with a few reports charted.
        page.wait_for_function("document.getElementById('drift').data[0].x.length >= 6")
        screenshot = Path(os.environ.get(SCREENSHOT_TO) or tmp_path / "dashboard.png")
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.read_bytes().startswith(b"\x89PNG")

        # Once reports stop, the chart has one point per report the service accepted.
        assert controller.stop(signal.SIGTERM) == 0
        received = list_reports(position_port)
        page.wait_for_function(f"document.getElementById('drift').data[0].x.length === {received}")
        # No report for two intervals: the page says the feed is stale.
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('stale')",
            timeout=(4 * REPORT_INTERVAL + 2.0) * 1000,
        )
        browser.close()
    assert position.stop(signal.SIGTERM) == 0
