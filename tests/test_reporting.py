"""Reports to the position service: streamed in parts, refusals noticed, prompt after outages."""

from __future__ import annotations

import json
import logging
import signal
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from allocation.v1 import allocation_pb2, controller_service_pb2, position_service_pb2_grpc
from controller.serving import create_server
from tests.conftest import (
    FakePositionServer,
    Program,
    RunningController,
    fill,
    split_request,
    start_program,
)
from tests.fakes import RecordingPositionService
from tests.test_controller import ReporterFactory
from tests.test_limits import equal_split

TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "JNJ")


def reports_counted(result: str) -> float:
    return REGISTRY.get_sample_value("allocation_reports_total", {"result": result}) or 0.0


def test_a_report_larger_than_a_message_arrives_in_parts(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: ReporterFactory,
) -> None:
    split = equal_split(3_000, name_length=60)
    controller.stub.SetAumSplit(split_request(split))
    for n, ticker in enumerate(TICKERS):
        controller.stub.SubmitFill(
            controller_service_pb2.SubmitFillRequest(
                fill=fill(f"each-{n}", quantity=30_000, ticker=ticker)
            )
        )
    position_server.start()
    reporter_factory(f"127.0.0.1:{position_server.port}", 0.2)
    report = position_server.service.next_report()
    # At most PART_ACCOUNTS accounts per part: 3,000 accounts take at least three.
    assert position_server.service.parts.get(timeout=10) >= 3
    assert [a.account for a in report.accounts] == sorted(split)
    assert report.journal_id == controller.sequencer.journal_id
    assert report.fill_count == len(TICKERS)
    assert sum(Decimal(a.value) for a in report.accounts) == Decimal(report.total_value)


def test_a_refused_report_is_logged_once_and_counted(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: ReporterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="controller.reporter")
    controller.stub.SetAumSplit(split_request({"a": "100"}))
    service = position_server.service
    service.refuse_with = allocation_pb2.Rejection(
        reason=allocation_pb2.REJECTION_REASON_STALE_REPORT, message="not newer than 99"
    )
    refused_before = reports_counted("refused")
    position_server.start()
    reporter_factory(f"127.0.0.1:{position_server.port}", 0.05)
    for _ in range(4):
        service.parts.get(timeout=10)
    service.refuse_with = None
    accepted = service.next_report()
    refusals = [
        r for r in caplog.records if r.getMessage() == "report refused by the position service"
    ]
    assert len(refusals) == 1
    assert refusals[0].reason == "REJECTION_REASON_STALE_REPORT"  # type: ignore[attr-defined]
    assert refusals[0].details == "not newer than 99"  # type: ignore[attr-defined]
    assert reports_counted("refused") >= refused_before + 4
    assert accepted.sequence > 4


def test_reports_resume_within_one_interval_after_an_80_second_outage(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: ReporterFactory,
) -> None:
    """gRPC's own reconnect backoff grows to 120 s over an outage this long; the reporter's
    channel caps it, so the first report after the return comes within one interval."""
    interval = 1.0
    controller.stub.SetAumSplit(split_request({"a": "60", "b": "40"}))
    position_server.start()
    reporter_factory(f"127.0.0.1:{position_server.port}", interval)
    before_outage = position_server.service.next_report()
    failures = reports_counted("failure")
    position_server.server.stop(None).wait()
    # The outage itself: nothing to wait for but time, which is what this test is about.
    time.sleep(80)
    assert reports_counted("failure") > failures
    returned = RecordingPositionService()
    server, _, port = create_server(
        f"127.0.0.1:{position_server.port}", ["allocation.v1.PositionService"]
    )
    position_service_pb2_grpc.add_PositionServiceServicer_to_server(returned, server)
    assert port == position_server.port
    server.start()
    back = time.monotonic()
    try:
        after_outage = returned.next_report(timeout=30)
        waited = time.monotonic() - back
    finally:
        server.stop(None).wait()
    assert waited <= interval, f"first report {waited:.2f} s after the return"
    assert after_outage.sequence > before_outage.sequence


def test_reports_queued_while_the_position_service_was_paused_are_never_shown(
    tmp_path: Path, programs: list[Program]
) -> None:
    """SIGSTOP the position service for 4 s while the controller reports every 0.3 s: the
    reports its sender gave up on during the pause must not be shown late, after SIGCONT."""
    jsonl = tmp_path / "reports.jsonl"
    position = start_program(
        "position", "--port=0", f"--jsonl={jsonl}", f"--history={tmp_path / 'history.db'}"
    )
    programs.append(position)
    port = position.wait_listening()
    controller = start_program(
        "controller",
        "--port=0",
        f"--db={tmp_path / 'journal.db'}",
        "--report-interval=0.3",
        "--report-deadline=0.5",
        f"--position-address=127.0.0.1:{port}",
    )
    programs.append(controller)
    controller.wait_listening()
    position.wait_for_entry("report accepted", lambda e: int(str(e["sequence"])) >= 2)
    paused = time.time()
    position.process.send_signal(signal.SIGSTOP)
    time.sleep(4)  # the pause is the scenario itself
    resumed = time.time()
    position.process.send_signal(signal.SIGCONT)
    controller.wait_for("report not delivered; allocation continues, retrying")
    last = position.wait_for_entry("report accepted", lambda e: True)
    position.wait_for_entry(
        "report accepted", lambda e: int(str(e["sequence"])) >= int(str(last["sequence"])) + 3
    )
    shown = [json.loads(line) for line in jsonl.read_text().splitlines()]
    sequences = [int(r["sequence"]) for r in shown]
    assert sequences == sorted(set(sequences))
    generated = [
        datetime.fromisoformat(r["generateTime"].replace("Z", "+00:00")).timestamp() for r in shown
    ]
    # A report is either from before the pause, or fresh enough for its sender's deadline.
    late = [t for t in generated if paused + 0.1 < t < resumed - 1.0]
    assert not late, f"{len(late)} reports generated during the pause were shown after it"
    assert any(t >= resumed - 1.0 for t in generated)
    assert controller.stop() == 0 and position.stop() == 0
