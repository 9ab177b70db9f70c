"""Faults a hostile client, a failing disk or a careless operator can cause, each contained.

Through the real controller process where the fault was found through it: each test asserts
the status and message, that state is unchanged, and for faults the prompt end of every call,
NOT_SERVING and the exit status (0 stopped, 1 journal failed, 2 cannot start, 3 damaged).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from controller.book import Book
from controller.domain import Fill, Split
from controller.journal import StoredFill
from controller.journal_sqlite import SqliteJournal
from controller.sequencer import Sequencer, SequencerStopped
from controller.service import DEFAULT_MAX_STREAMS
from controller.transport import open_channel
from simulators.__main__ import parse_args as simulator_args
from tests.conftest import (
    ROOT,
    Program,
    RunningController,
    connect,
    current_positions,
    fill,
    split_request,
    start_program,
)
from tests.strategies import TICKERS

SPLIT = {"a": "50", "b": "30", "c": "20"}
Stub = controller_service_pb2_grpc.ControllerServiceStub


def start_controller(programs: list[Program], db: Path, *options: str) -> Program:
    program = start_program(
        "controller",
        "--port=0",
        f"--db={db}",
        "--report-interval=60",
        "--position-address=127.0.0.1:9",
        *options,
    )
    programs.append(program)
    return program


def run_program(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A program run to completion (here: one expected to refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# 1. A split without an id must never take an id a client already used.


def test_an_assigned_split_id_never_collides_with_a_client_id(
    tmp_path: Path, programs: list[Program]
) -> None:
    db = tmp_path / "journal.db"
    controller = start_controller(programs, db)
    channel, stub = connect(controller.wait_listening())
    # The old crash, at every start: "split-2" taken by a client at sequence 1, then an id
    # assigned at sequence 2.
    assert stub.SetAumSplit(split_request(SPLIT, split_id="split-2")).accepted.sequence == 1
    assert stub.SetAumSplit(split_request({"a": "100"})).accepted.split_id == "split#2"
    before = current_positions(stub)
    with pytest.raises(grpc.RpcError) as raised:
        stub.SetAumSplit(split_request(SPLIT, split_id="split#3"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "split.split_id 'split#3' must be 1-64 characters" in str(raised.value.details())
    assert current_positions(stub) == before
    channel.close()
    assert controller.stop(signal.SIGTERM) == 0
    again = start_controller(programs, db)
    channel, stub = connect(again.wait_listening())
    assert stub.SetAumSplit(split_request(SPLIT)).accepted.split_id == "split#3"
    channel.close()
    assert again.stop(signal.SIGTERM) == 0


# 2. Idle streams must not starve other clients.


def test_100_idle_streams_leave_health_and_unary_calls_answered(
    tmp_path: Path, programs: list[Program]
) -> None:
    controller = start_controller(programs, tmp_path / "journal.db")
    port = controller.wait_listening()
    channel, stub = connect(port)
    stub.SetAumSplit(split_request(SPLIT))
    release = threading.Event()

    def idle() -> Iterator[controller_service_pb2.StreamFillsRequest]:
        release.wait(120)
        yield from ()

    def hold_stream() -> tuple[grpc.StatusCode, str]:
        with open_channel(f"127.0.0.1:{port}") as own:
            try:
                list(Stub(own).StreamFills(idle()))
            except grpc.RpcError as error:
                return error.code(), str(error.details())
        return grpc.StatusCode.OK, ""

    def finished_within(stream: Future[tuple[grpc.StatusCode, str]], seconds: float) -> bool:
        try:
            stream.result(timeout=seconds)
        except TimeoutError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=100) as pool:
        streams = [pool.submit(hold_stream) for _ in range(100)]
        deadline = time.monotonic() + 20
        refused = [s for s in streams if finished_within(s, max(0.0, deadline - time.monotonic()))]
        assert len(refused) == 100 - DEFAULT_MAX_STREAMS
        for stream in refused:
            code, details = stream.result()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"at most {DEFAULT_MAX_STREAMS} streams at once" in details
        health = health_pb2_grpc.HealthStub(channel)
        for n in range(20):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            submitted = stub.SubmitFill(
                controller_service_pb2.SubmitFillRequest(fill=fill(f"beside-{n}")), timeout=2
            )
            assert submitted.WhichOneof("outcome") == "allocation"
        release.set()
        held = [s.result(timeout=30)[0] for s in streams if s not in refused]
    assert held == [grpc.StatusCode.OK] * DEFAULT_MAX_STREAMS
    channel.close()
    assert controller.stop(signal.SIGTERM) == 0


# 3. Out-of-range timestamps: refused in-band, and the stream goes on.


def bad_time(fill_id: str) -> allocation_pb2.Fill:
    message = fill(fill_id)
    message.execute_time.seconds = -(10**11)
    return message


def test_a_bad_timestamp_mid_stream_is_refused_in_band_and_later_fills_are_allocated(
    tmp_path: Path, programs: list[Program]
) -> None:
    controller = start_controller(programs, tmp_path / "journal.db")
    channel, stub = connect(controller.wait_listening())
    stub.SetAumSplit(split_request(SPLIT))
    batches = [[fill("t-1")], [bad_time("t-2")], [fill("t-3")]]
    responses = list(
        stub.StreamFills(controller_service_pb2.StreamFillsRequest(fills=b) for b in batches)
    )
    outcomes = [r.batch.results[0].WhichOneof("outcome") for r in responses]
    assert outcomes == ["allocation", "rejection", "allocation"]
    rejection = responses[1].batch.results[0].rejection
    assert rejection.reason == allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT
    assert rejection.field == "fills[0].execute_time"
    assert "seconds=-100000000000" in rejection.message
    lookup = controller_service_pb2.GetFillAllocationRequest(fill_id="t-3")
    assert stub.GetFillAllocation(lookup).allocation.status == allocation_pb2.FILL_STATUS_ALLOCATED
    with pytest.raises(grpc.RpcError) as raised:
        stub.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=bad_time("t-4")))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fill.execute_time" in str(raised.value.details())
    split = allocation_pb2.AumSplit(split_id="late", percentages=SPLIT)
    split.effective_time.nanos = -1
    answers = list(
        stub.StreamAumSplits(
            iter(
                [
                    controller_service_pb2.StreamAumSplitsRequest(split=split),
                    controller_service_pb2.StreamAumSplitsRequest(
                        split=allocation_pb2.AumSplit(split_id="fine", percentages=SPLIT)
                    ),
                ]
            )
        )
    )
    assert answers[0].rejection.field == "split.effective_time"
    assert answers[1].accepted.split_id == "fine"
    assert current_positions(stub).fill_count == 2
    channel.close()
    assert controller.stop(signal.SIGTERM) == 0


def test_huge_and_non_ascii_values_are_refused_with_a_short_message(
    controller: RunningController,
) -> None:
    controller.stub.SetAumSplit(split_request(SPLIT))
    for message, field in (
        (fill("x" * 1_000_000), "fill.fill_id"),
        (fill("wide-digits", price="\uff11\uff10\uff10"), "fill.price"),
        (fill("arabic-digits", price="\u0661\u0660"), "fill.price"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            controller.stub.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=message))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in str(raised.value.details())
        assert len(str(raised.value.details())) < 300
    with pytest.raises(grpc.RpcError) as raised:
        controller.stub.SetAumSplit(split_request({"a": "\uff15\uff10", "b": "50"}))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# 4. Writer faults: every call ends promptly, NOT_SERVING, exit 1, the original error logged.


def test_a_journal_read_fault_fails_every_queued_request_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = SqliteJournal(tmp_path / "journal.db", synchronous="NORMAL")
    failed = threading.Event()
    sequencer = Sequencer(Book(TICKERS), journal, on_failure=failed.set)
    sequencer.start()
    sequencer.set_split(Split("s", {"a": 100_000_000}))
    reading = threading.Event()
    go_on = threading.Event()

    def damaged_page(fill_ids: Collection[str]) -> dict[str, StoredFill]:
        reading.set()
        go_on.wait(10)
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(journal, "find_fills", damaged_page)
    first = sequencer.submit_fills_later([Fill("f-0", "AAPL", 1_000_000, 1)])
    assert reading.wait(10)
    queued = [
        sequencer.submit_fills_later([Fill(f"f-{n}", "AAPL", 1_000_000, 1)]) for n in range(1, 50)
    ]
    go_on.set()
    started = time.monotonic()
    for future in [first, *queued]:
        with pytest.raises(SequencerStopped, match="database disk image is malformed"):
            future.result(timeout=5)
    assert time.monotonic() - started < 5
    assert failed.is_set()
    with pytest.raises(SequencerStopped, match="journal failed"):
        sequencer.snapshot()
    journal.close()


def test_a_journal_damaged_while_running_stops_the_controller_with_exit_1(
    tmp_path: Path, programs: list[Program]
) -> None:
    """Pages of the journal overwritten under a running controller: the next lookup that reads
    them fails the writer, every call ends UNAVAILABLE with the real error, health goes
    NOT_SERVING, the process exits 1, and the restart refuses the damaged journal (exit 3)."""
    db = _journal_with_fills(tmp_path, programs, batches=300)
    # After the clean stop the whole journal is in the main file: lookups now read it from disk.
    controller = start_controller(programs, db)
    channel, stub = connect(controller.wait_listening())
    statuses = _watch_health(channel)
    size = db.stat().st_size
    with db.open("r+b") as damaged:
        damaged.seek(size // 4)
        damaged.write(os.urandom(size // 2))
    resent = [[fill(f"j-{b}-{n}", quantity=10 + n) for n in range(100)] for b in range(300)]
    with pytest.raises(grpc.RpcError) as raised:
        for batch in resent:
            list(stub.StreamFills(iter([controller_service_pb2.StreamFillsRequest(fills=batch)])))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "malformed" in str(raised.value.details())
    assert controller.process.wait(20) == 1
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses()
    channel.close()
    assert run_program("controller", "--port=0", f"--db={db}").returncode == 3


def _watch_health(channel: grpc.Channel) -> Callable[[], list[int]]:
    """Follow the server's health; the returned function gives every status seen once the
    server has gone."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    seen: list[int] = []

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # the server went away
            seen.extend(answer.status for answer in watch)

    watcher = threading.Thread(target=follow, name="health-watch", daemon=True)
    watcher.start()

    def statuses() -> list[int]:
        watcher.join(10)
        return seen

    return statuses


def test_a_full_disk_ends_every_call_goes_not_serving_and_exits_1(
    tmp_path: Path, programs: list[Program]
) -> None:
    """RLIMIT_FSIZE makes the journal's writes fail as a full disk does (EFBIG; Python ignores
    SIGXFSZ). Nothing acknowledged is lost: a restart without the limit has every fill."""
    db = tmp_path / "journal.db"
    controller = start_controller(programs, db)
    process = controller.process
    channel, stub = connect(controller.wait_listening())
    limit = 2 * 1024 * 1024
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
    stub.SetAumSplit(split_request(SPLIT))
    statuses = _watch_health(channel)
    acknowledged: list[str] = []
    code = None
    for batch in range(2_000):
        fills = [fill(f"d-{batch}-{n}", quantity=1 + n) for n in range(100)]
        try:
            response = stub.SubmitFill(
                controller_service_pb2.SubmitFillRequest(fill=fills[0]), timeout=10
            )
            assert response.WhichOneof("outcome") == "allocation"
            acknowledged.append(fills[0].fill_id)
            answers = list(
                stub.StreamFills(iter([controller_service_pb2.StreamFillsRequest(fills=fills[1:])]))
            )
            acknowledged += [r.fill_id for r in answers[0].batch.results]
        except grpc.RpcError as error:
            code = error.code()
            break
    assert code == grpc.StatusCode.UNAVAILABLE
    assert process.wait(20) == 1
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses()
    critical = [e for e in controller.entries if e.get("level") == "critical"]
    assert critical, "the failure must be logged"
    error_text = " ".join(str(e.get("error", "")) + str(e.get("message", "")) for e in critical)
    assert "disk" in error_text or "full" in error_text or "File too large" in error_text
    assert "cannot rollback" not in "".join(controller.lines)
    channel.close()

    restarted = start_controller(programs, db)
    channel, stub = connect(restarted.wait_listening())
    for fill_id in acknowledged[:: max(1, len(acknowledged) // 50)] + acknowledged[-5:]:
        found = stub.GetFillAllocation(
            controller_service_pb2.GetFillAllocationRequest(fill_id=fill_id)
        )
        assert found.allocation.status == allocation_pb2.FILL_STATUS_ALLOCATED
    assert current_positions(stub).fill_count >= len(acknowledged)
    channel.close()
    assert restarted.stop(signal.SIGTERM) == 0


# 5. One writer per journal.


def test_a_second_controller_on_the_same_journal_exits_2_naming_the_holder(
    tmp_path: Path, programs: list[Program]
) -> None:
    db = tmp_path / "journal.db"
    first = start_controller(programs, db)
    first.wait_listening()
    second = run_program("controller", "--port=0", f"--db={db}")
    assert second.returncode == 2
    assert f"is in use by controller pid {first.process.pid}" in second.stderr
    assert first.process.poll() is None
    assert first.stop(signal.SIGTERM) == 0


# 6. A damaged journal is refused with its own exit status.


def _journal_with_fills(tmp_path: Path, programs: list[Program], batches: int = 30) -> Path:
    """A journal of ``batches`` x 100 fills, written by a controller that stopped cleanly."""
    db = tmp_path / "journal.db"
    controller = start_controller(programs, db)
    channel, stub = connect(controller.wait_listening())
    stub.SetAumSplit(split_request(SPLIT))
    sent = [[fill(f"j-{b}-{n}", quantity=10 + n) for n in range(100)] for b in range(batches)]
    list(stub.StreamFills(controller_service_pb2.StreamFillsRequest(fills=b) for b in sent))
    channel.close()
    assert controller.stop(signal.SIGTERM) == 0
    return db


def test_a_journal_damaged_while_stopped_is_refused_with_exit_3(
    tmp_path: Path, programs: list[Program]
) -> None:
    db = _journal_with_fills(tmp_path, programs)
    size = db.stat().st_size
    assert size > 64 * 1024
    with db.open("r+b") as damaged:
        damaged.seek(size // 2 - 4096)
        damaged.write(os.urandom(8192))
    run = run_program("controller", "--port=0", f"--db={db}")
    assert run.returncode == 3
    assert "journal damaged" in run.stderr
    assert "integrity check" in run.stderr or "malformed" in run.stderr


@pytest.mark.parametrize(
    "damage",
    ["truncated", "text", "header", "other-database"],
)
def test_a_file_that_is_not_a_sound_journal_is_refused_with_exit_3(
    tmp_path: Path, programs: list[Program], damage: str
) -> None:
    db = tmp_path / "journal.db"
    if damage == "text":
        db.write_text("these are not the fills you are looking for\n" * 100)
    elif damage == "other-database":
        with sqlite3.connect(db) as other:
            other.execute("CREATE TABLE customers (name TEXT)")
    else:
        db = _journal_with_fills(tmp_path, programs)
        content = db.read_bytes()
        db.write_bytes(
            content[: len(content) // 3] if damage == "truncated" else b"X" * 100 + content[100:]
        )
    run = run_program("controller", "--port=0", f"--db={db}")
    assert run.returncode == 3, run.stderr
    assert "journal damaged" in run.stderr


# 8. Operator errors: one-line refusals; signals honoured every time.


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--report-interval=0"], "--report-interval"),
        (["--report-interval=-5"], "--report-interval"),
        (["--port=70000"], "--port"),
        (["--max-streams=0"], "--max-streams"),
        (["--checkpoint-interval=nan"], "--checkpoint-interval"),
        (["--db=mysql://user@host/db"], "--db"),
        (["--db=/tmp"], "--db"),
        (["--db=postgresql://user@127.0.0.1:9"], "--db"),
        (["--port=0", "--db=postgresql://user@127.0.0.1:9/journal"], "--db"),
        (["--lease=0"], "--lease"),
        (["--log-level=LOUD"], "--log-level"),
    ],
)
def test_bad_controller_options_are_refused_in_one_line(options: list[str], named: str) -> None:
    run = run_program("controller", *options)
    assert run.returncode == 2
    assert named in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr


def test_a_metrics_port_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_program("controller", f"--db={tmp_path / 'j.db'}", f"--metrics-port={port}")
    assert run.returncode == 2
    assert "cannot listen" in run.stderr and "Traceback" not in run.stderr


def test_position_jsonl_on_a_directory_is_refused(tmp_path: Path) -> None:
    run = run_program("position", "--port=0", f"--jsonl={tmp_path}")
    assert run.returncode == 2
    assert "--jsonl" in run.stderr.splitlines()[-1]


def test_simulator_run_ids_started_in_the_same_second_differ() -> None:
    ids = {simulator_args(["fills"]).run_id for _ in range(20)}
    assert len(ids) == 20


def test_sigterm_refuses_new_messages_at_once_and_exits_0(
    tmp_path: Path, programs: list[Program]
) -> None:
    controller = start_controller(programs, tmp_path / "journal.db")
    channel, stub = connect(controller.wait_listening())
    stub.SetAumSplit(split_request(SPLIT))
    answered = threading.Event()
    signalled = threading.Event()

    def requests() -> Iterator[controller_service_pb2.StreamFillsRequest]:
        yield controller_service_pb2.StreamFillsRequest(fills=[fill("before")])
        answered.wait(10)
        signalled.wait(10)
        yield controller_service_pb2.StreamFillsRequest(fills=[fill("after")])

    call = stub.StreamFills(requests())
    first = next(iter(call))
    assert first.batch.results[0].WhichOneof("outcome") == "allocation"
    answered.set()
    controller.process.send_signal(signal.SIGTERM)
    controller.wait_for("stopping")
    signalled.set()
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(call))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in str(raised.value.details())
    assert controller.process.wait(20) == 0
    channel.close()


def test_30_sigterm_start_stop_cycles_all_exit_0_promptly(
    tmp_path: Path, programs: list[Program]
) -> None:
    db = tmp_path / "journal.db"
    for cycle in range(30):
        controller = start_controller(programs, db)
        channel, stub = connect(controller.wait_listening())
        stub.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=fill(f"cycle-{cycle}")))
        channel.close()
        controller.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert controller.process.wait(15) == 0, "".join(controller.lines[-5:])
        assert time.monotonic() - started < 10
    last = start_controller(programs, db)
    channel, stub = connect(last.wait_listening())
    assert current_positions(stub).pending_fill_count == 30
    channel.close()
    assert last.stop(signal.SIGTERM) == 0


# 7. No lifetime limit on traded value.


def test_a_venue_cannot_exhaust_the_book_by_trading(controller: RunningController) -> None:
    """One fill of 1,100,000 shares at 1,000,000 used 95 % of the old lifetime limit; now
    round trips of it go on being allocated, and so does a 1-share sell."""
    controller.stub.SetAumSplit(split_request(SPLIT))
    for n in range(5):
        for side in (allocation_pb2.SIDE_BUY, allocation_pb2.SIDE_SELL):
            response = controller.stub.SubmitFill(
                controller_service_pb2.SubmitFillRequest(
                    fill=fill(f"huge-{n}-{side}", quantity=1_100_000, price="1000000", side=side)
                )
            )
            quantities = {a.account: a.quantity for a in response.allocation.allocations}
            assert quantities == {"a": 550_000, "b": 330_000, "c": 220_000}
    controller.stub.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=fill("one")))
    sell = fill("one-back", quantity=1, side=allocation_pb2.SIDE_SELL)
    response = controller.stub.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=sell))
    assert sum(a.quantity for a in response.allocation.allocations) == 1
