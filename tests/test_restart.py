"""The real controller process: kill -9, restart on the same journal, nothing lost or doubled."""

from __future__ import annotations

import os
import select
import signal
import urllib.request
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from benchmarks.system import free_port
from tests.conftest import (
    JournalBackend,
    Program,
    both_backends,
    connect,
    current_positions,
    fill,
    split_request,
    start_program,
)


def start_controller(backend: JournalBackend, programs: list[Program], *options: str) -> Program:
    # No position service: every report attempt still consumes a durable sequence number.
    program = start_program(
        "controller",
        *options,
        "--port=0",
        f"--db={backend.target}",
        "--report-interval=0.05",
        "--position-address=127.0.0.1:9",
        "--report-deadline=0.2",
    )
    programs.append(program)
    program.wait_for(backend.ready)
    return program


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux)."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def exits_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` (not our child) has exited or exits within ``seconds``."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([handle], [], [], seconds)[0])
    finally:
        os.close(handle)


def snapshot(
    stub: controller_service_pb2_grpc.ControllerServiceStub,
) -> allocation_pb2.PositionReport:
    report = current_positions(stub)
    report.ClearField("sequence")
    return report


@both_backends
def test_kill_9_and_restart_keeps_every_acknowledged_fill_exactly_once(
    journal_backend: JournalBackend, programs: list[Program]
) -> None:
    first = start_controller(journal_backend, programs)
    channel, stub = connect(first.port)
    fills = [
        fill(
            f"k-{i}",
            quantity=1 + (i * 37) % 500,
            price=f"{10 + i % 7}.{i % 100:02d}",
            ticker=("AAPL", "MSFT", "TSLA")[i % 3],
            side=allocation_pb2.SIDE_SELL if i % 5 == 4 else allocation_pb2.SIDE_BUY,
        )
        for i in range(300)
    ]
    stub.SetAumSplit(split_request({"a": "40", "b": "35", "c": "25"}, split_id="s1"))
    batches = [fills[i : i + 100] for i in range(0, 150, 100)] + [fills[150:]]
    first_results = [
        r
        for response in stub.StreamFills(
            controller_service_pb2.StreamFillsRequest(fills=b) for b in batches[:1]
        )
        for r in response.batch.results
    ]
    stub.SetAumSplit(split_request({"a": "20", "b": "30", "d": "50"}, split_id="s2"))
    first_results += [
        r
        for response in stub.StreamFills(
            controller_service_pb2.StreamFillsRequest(fills=b) for b in batches[1:]
        )
        for r in response.batch.results
    ]
    accepted = {r.fill_id: r.allocation for r in first_results if r.HasField("allocation")}
    assert len(accepted) >= 250
    first.wait_for("report not delivered; allocation continues, retrying")
    before = snapshot(stub)
    report_sequence = stub.GetPositions(
        controller_service_pb2.GetPositionsRequest()
    ).report.sequence
    assert report_sequence > 0
    channel.close()
    # The report worker (and multiprocessing's resource tracker) must not outlive a kill -9.
    helpers = children_of(first.process.pid)
    assert helpers
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert all(exits_within(pid, 10) for pid in helpers)

    metrics_port = free_port()
    second = start_controller(journal_backend, programs, f"--metrics-port={metrics_port}")
    channel, stub = connect(second.port)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert snapshot(stub) == before
    resumed = stub.GetPositions(controller_service_pb2.GetPositionsRequest()).report.sequence
    assert resumed >= report_sequence
    for fill_id, allocation in accepted.items():
        looked_up = stub.GetFillAllocation(
            controller_service_pb2.GetFillAllocationRequest(fill_id=fill_id)
        ).allocation
        assert looked_up == allocation
    acknowledged = [f for f in fills if f.fill_id in accepted]
    resent = [
        r
        for response in stub.StreamFills(
            controller_service_pb2.StreamFillsRequest(fills=acknowledged[i : i + 100])
            for i in range(0, len(acknowledged), 100)
        )
        for r in response.batch.results
    ]
    assert len(resent) == len(accepted)
    for result in resent:
        assert result.WhichOneof("outcome") == "duplicate"
        assert result.duplicate == accepted[result.fill_id]
    assert snapshot(stub) == before
    channel.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        metrics = page.read().decode()
    duplicates = f'allocation_fills_total{{outcome="duplicate",reason=""}} {len(accepted)}.0'
    assert duplicates in metrics
    assert "allocation_journal_commit_seconds_bucket" in metrics
    assert second.stop(signal.SIGTERM) == 0
    assert any('"stopped"' in line for line in second.lines)
