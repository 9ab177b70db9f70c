"""The real programs together: position service, controller, AUM server and fill servers."""

from __future__ import annotations

import json
import signal
from decimal import Decimal
from pathlib import Path

from allocation.v1 import (
    allocation_pb2,
    controller_service_pb2,
    controller_service_pb2_grpc,
    position_service_pb2,
    position_service_pb2_grpc,
)
from controller.transport import open_channel
from tests.conftest import Program, split_request, start_program


def start(programs: list[Program], *args: str, capture_output: bool = False) -> Program:
    program = start_program(*args, capture_output=capture_output)
    programs.append(program)
    return program


def start_fills(programs: list[Program], address: str, run_id: str, *options: str) -> Program:
    """A fill server at 20 fills/s streaming to ``address``, its output captured."""
    return start(
        programs,
        "simulators",
        "fills",
        f"--controller={address}",
        "--rate=20",
        f"--run-id={run_id}",
        *options,
        capture_output=True,
    )


def parse_split_line(line: str) -> tuple[str, dict[str, str]]:
    """'split <id> in force: acct-01 7.79%, acct-02 ...' -> (id, {account: percent})."""
    head, _, shares = line.strip().partition(" in force: ")
    percents = dict(part.rstrip("%").split(" ") for part in shares.split(", "))
    return head.removeprefix("split "), percents


def test_whole_system_reports_what_the_fill_servers_sent(
    tmp_path: Path, programs: list[Program]
) -> None:
    jsonl = tmp_path / "reports.jsonl"
    position = start(
        programs,
        "position",
        "--port=0",
        f"--jsonl={jsonl}",
        f"--history={tmp_path / 'history.db'}",
        capture_output=True,
    )
    position_port = position.wait_listening()
    controller = start(
        programs,
        "controller",
        "--port=0",
        f"--db={tmp_path / 'controller.db'}",
        "--report-interval=0.5",
        f"--position-address=127.0.0.1:{position_port}",
    )
    address = f"127.0.0.1:{controller.wait_listening()}"
    aum = start(
        programs,
        "simulators",
        "aum",
        f"--controller={address}",
        "--interval=2",
        "--seed=3",
        "--run-id=e2e",
        capture_output=True,
    )
    # Two independent fill servers (own id prefixes), 35 fills each.
    count = 70
    fills = start_fills(
        programs, address, "e2e", "--seed=5", "--count=35", "--servers=2", "--sell-ratio=0.3"
    )
    finished = fills.wait_for("finished", timeout=60)
    assert fills.process.wait(10) == 0
    assert finished["generated"] == count
    assert finished["rejected"] == 0
    net = finished["net"]
    assert isinstance(net, dict)

    entry = position.wait_for_entry("report accepted", lambda e: e["fill_count"] == count)
    with open_channel(f"127.0.0.1:{position_port}") as channel:
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        latest = stub.GetLatestReport(position_service_pb2.GetLatestReportRequest()).report
    assert latest.sequence >= int(str(entry["sequence"]))
    assert latest.fill_count == count
    assert {t.ticker: t.quantity for t in latest.tickers if t.quantity} == {
        ticker: quantity for ticker, quantity in net.items() if quantity
    }
    split_id, percents = parse_split_line(aum.wait_for_output(f"split {latest.split_id} in force"))
    assert split_id == latest.split_id
    targets = {a.account: a.target_percent for a in latest.accounts if a.target_percent != "0"}
    assert targets == {
        account: format(Decimal(p).normalize(), "f") for account, p in percents.items()
    }
    assert position.wait_for_output(f"Positions report #{entry['sequence']} ")
    assert not any("\x1b[" in line for line in position.output), "escape codes in piped output"
    # The JSON lines use the protobuf JSON mapping: camelCase names, int64 as strings.
    logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [int(r["sequence"]) for r in logged] == sorted({int(r["sequence"]) for r in logged})
    assert any(r.get("fillCount") == str(count) for r in logged)

    # A fill server without --count runs until interrupted, then exits cleanly too.
    endless = start_fills(programs, address, "e2e-endless")
    endless.wait_for_output("e2e-endless-v0-000000001")
    for program in (endless, aum, controller, position):
        assert program.stop(signal.SIGINT) == 0, "".join(program.lines[-10:])


def test_fill_server_resends_across_a_controller_crash_and_nothing_is_doubled(
    tmp_path: Path, programs: list[Program]
) -> None:
    db = tmp_path / "controller.db"
    quiet = ["--report-interval=60", "--position-address=127.0.0.1:9"]
    first = start(programs, "controller", "--port=0", f"--db={db}", *quiet)
    port = first.wait_listening()
    address = f"127.0.0.1:{port}"
    with open_channel(address) as channel:
        controller_service_pb2_grpc.ControllerServiceStub(channel).SetAumSplit(
            split_request({"a": "50", "b": "30", "c": "20"})
        )
    count = 120
    fills = start_fills(programs, address, "crash", "--seed=9", f"--count={count}")
    fills.wait_for_output("crash-v0-000000030")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    second = start(programs, "controller", f"--port={port}", f"--db={db}", *quiet)
    second.wait_listening()
    finished = fills.wait_for("finished", timeout=60)
    assert fills.process.wait(10) == 0
    assert fills.wait_for("stream broken; reconnecting and resending unacknowledged requests")
    assert finished["generated"] == count
    with open_channel(address) as channel:
        stub = controller_service_pb2_grpc.ControllerServiceStub(channel)
        report = stub.GetPositions(controller_service_pb2.GetPositionsRequest()).report
        for n in range(1, count + 1):
            allocation = stub.GetFillAllocation(
                controller_service_pb2.GetFillAllocationRequest(fill_id=f"crash-v0-{n:09d}")
            ).allocation
            assert allocation.status == allocation_pb2.FILL_STATUS_ALLOCATED
    assert report.fill_count == count
    net = finished["net"]
    assert isinstance(net, dict)
    assert {t.ticker: t.quantity for t in report.tickers if t.quantity} == {
        ticker: quantity for ticker, quantity in net.items() if quantity
    }
    assert second.stop(signal.SIGTERM) == 0
