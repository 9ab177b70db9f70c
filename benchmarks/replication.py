"""The PostgreSQL journal beside SQLite, and failover between two controllers on one database.

1. durable fills/s through StreamFills (100 fills per message, 10 accounts, ``--sync full``) on
   SQLite and on PostgreSQL (a durable server: fsync on, the controller's commits synchronous),
   in the same run, each beside the echo service measured then;
2. failover: the leader is killed (SIGKILL) and the time until the standby acknowledges its
   first fill is measured, alternating leaders, median of several kills.
"""

from __future__ import annotations

import signal
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from benchmarks.postgres import INSTALL_HINT, PostgresServer, server_binaries
from benchmarks.system import SECONDS, Server, fills, start, start_controller, stream
from controller.leadership import DEFAULT_LEASE_SECONDS
from controller.transport import open_channel

KILLS = 6


@dataclass(frozen=True)
class BackendRow:
    """Durable fills/s of one journal backend, and the echo ceiling measured beside it."""

    backend: str
    fills_per_s: float
    echo_fills_per_s: float


@dataclass(frozen=True)
class FailoverResult:
    """Seconds from killing the leader to the standby's first acknowledged fill."""

    lease_seconds: float
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def backends(postgres: PostgresServer, workdir: Path, seconds: float) -> list[BackendRow]:
    """SQLite then PostgreSQL, each followed by the echo service on the same shape."""
    rows = []
    for name, db in (("SQLite", str(workdir / "tp.db")), ("PostgreSQL", postgres.database().url)):
        controller = start_controller(db, 10)
        done, elapsed = stream(controller, 100, seconds)
        controller.stop()
        echo = start("benchmarks.echo", "--accounts=10")
        echo_done, echo_elapsed = stream(echo, 100, seconds)
        echo.stop()
        rows.append(BackendRow(name, done / elapsed, echo_done / echo_elapsed))
    return rows


def failover(postgres: PostgresServer, kills: int) -> FailoverResult:
    """Two controllers on one database; kill the leader ``kills`` times, alternating."""
    url = postgres.database().url
    options = (f"--db={url}", "--report-interval=3600", "--position-address=127.0.0.1:9")
    leader = start("controller", *options)
    standby = start("controller", *options)
    first_acknowledged(leader, "warm", deadline=60)
    with open_channel(leader.address) as channel:
        controller_service_pb2_grpc.ControllerServiceStub(channel).SetAumSplit(
            controller_service_pb2.SetAumSplitRequest(
                split=allocation_pb2.AumSplit(percentages={"a": "60", "b": "40"})
            )
        )
    measured = []
    for kill in range(kills):
        leader.process.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        leader.process.wait(10)
        first_acknowledged(standby, f"after-kill-{kill}", deadline=60)
        measured.append(time.perf_counter() - killed)
        leader, standby = standby, start("controller", *options)
    leader.stop()
    standby.stop()
    return FailoverResult(DEFAULT_LEASE_SECONDS, measured)


def first_acknowledged(server: Server, prefix: str, deadline: float) -> None:
    """Submit one fill to ``server`` until it is acknowledged (it refuses while a standby)."""
    request = controller_service_pb2.SubmitFillRequest(fill=fills(prefix, 0, 1)[0])
    give_up = time.perf_counter() + deadline
    with open_channel(server.address) as channel:
        stub = controller_service_pb2_grpc.ControllerServiceStub(channel)
        while True:
            try:
                stub.SubmitFill(request, timeout=1.0)
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.perf_counter() > give_up:
                    raise
            # A standby answers at once: ask again at a small fraction of the lease.
            time.sleep(0.01)


def run(console: Console, quick: bool) -> dict[str, object]:
    """Both benchmarks on a durable throwaway PostgreSQL server; prints one table."""
    binaries = server_binaries()
    if binaries is None:
        console.print(f"replication benchmark skipped: {INSTALL_HINT}")
        return {}
    seconds = 2.0 if quick else SECONDS
    postgres = PostgresServer(binaries, durable=True)
    try:
        with tempfile.TemporaryDirectory(prefix="fill-allocator-bench-") as tmp:
            rows = backends(postgres, Path(tmp), seconds)
        result = failover(postgres, 3 if quick else KILLS)
    finally:
        postgres.stop()
    table = Table(title="Journal backends and failover (real processes and PostgreSQL on loopback)")
    for column in ("measure", "result", "reference", "ratio"):
        table.add_column(column, justify="right")
    sqlite = rows[0].fills_per_s
    for row in rows:
        table.add_row(
            f"StreamFills on {row.backend}, 10 accounts, 100/message, --sync full",
            f"{row.fills_per_s:,.0f} fills/s",
            f"echo {row.echo_fills_per_s:,.0f}/s; SQLite {sqlite:,.0f}/s",
            f"{row.fills_per_s / row.echo_fills_per_s:.2f} of echo,"
            f" {row.fills_per_s / sqlite:.2f} of SQLite",
        )
    table.add_row(
        f"failover: leader killed -> first fill acknowledged by the standby ({len(result.seconds)}"
        " kills)",
        f"median {result.median:.2f} s",
        f"min {min(result.seconds):.2f} s, max {max(result.seconds):.2f} s",
        f"{result.median / result.lease_seconds:.2f} leases of {result.lease_seconds:g} s",
    )
    console.print(table)
    return {
        "backends": [asdict(r) for r in rows],
        "failover": {**asdict(result), "median": result.median},
    }
