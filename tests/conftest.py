"""Fixtures: real servers on 127.0.0.1 port 0, and processes of the real programs."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from rich.console import Console

from allocation.v1 import (
    allocation_pb2,
    controller_service_pb2,
    controller_service_pb2_grpc,
    position_service_pb2_grpc,
)
from benchmarks.postgres import INSTALL_HINT, PostgresServer, server_binaries
from controller.authorization import AuthPolicy
from controller.book import Book
from controller.devcerts import DEVELOPMENT_IDENTITIES, CertificateAuthority, policy_text
from controller.journal import JournalStore, JournalTarget
from controller.journal_postgres import PostgresJournal
from controller.journal_sqlite import SqliteJournal
from controller.leadership import LeaderLease
from controller.policy import TOTAL_VALUE
from controller.reporter import Reporter
from controller.sequencer import Sequencer
from controller.service import ControllerService
from controller.serving import create_server, set_serving
from controller.transport import PLAINTEXT, TLSConfig, open_channel
from controller.validation import DEFAULT_TICKERS
from position.history import ReportHistory
from position.render import RenderOptions
from position.service import PositionService
from tests.fakes import RecordingPositionService

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@dataclass
class RunningController:
    """An in-process controller: its stub, port and the pieces behind it."""

    stub: controller_service_pb2_grpc.ControllerServiceStub
    port: int
    sequencer: Sequencer
    channel: grpc.Channel


@dataclass
class Pki:
    """A CA, certificates of every development identity plus test ones, and a policy."""

    directory: Path

    def tls(self, name: str) -> TLSConfig:
        """``name``'s certificate and key, and the CA: a client presenting that certificate,
        or a server requiring client certificates of the CA."""
        return TLSConfig(self.directory / f"{name}.pem", self.directory / f"{name}.key", self.ca)

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def policy(self) -> AuthPolicy:
        return AuthPolicy.load(self.directory / "policy.toml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    authority = CertificateAuthority()
    (directory / "ca.pem").write_bytes(authority.pem)
    for identity, (_roles, server) in DEVELOPMENT_IDENTITIES.items():
        authority.issue(identity, server=server).write(directory, identity)
    (directory / "policy.toml").write_text(policy_text(DEVELOPMENT_IDENTITIES))
    authority.issue("stranger").write(directory, "stranger")
    # A reader's identity, from another CA; and a venue certificate that expired yesterday.
    CertificateAuthority("another CA").issue("reader").write(directory, "foreign")
    three_days_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    authority.issue("venue-1", days=2, starts=three_days_ago).write(directory, "expired")
    authority.issue("venue-1", days=3).write(directory, "expiring")
    return Pki(directory)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run; skipped (failed under .ci/run, which installs the
    binaries) where PostgreSQL is not installed."""
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    server = PostgresServer(binaries)
    yield server
    server.stop()


@dataclass
class JournalBackend:
    """A fresh journal on one backend: its ``--db`` target, and journals opened on it."""

    name: str
    target: JournalTarget
    lease: LeaderLease | None = None
    _epoch: int | None = None

    def open(self, policy: str = TOTAL_VALUE, lock: bool = True) -> JournalStore:
        """A journal on the target (SQLite's ``lock`` off: a reader beside the writer; on
        PostgreSQL every journal opened here writes under the same leadership epoch)."""
        if isinstance(self.target, Path):
            return SqliteJournal(self.target, synchronous="NORMAL", lock=lock, policy=policy)
        if self._epoch is None:
            self.lease = LeaderLease(self.target, policy, "test", "in-process", 3600.0)
            self._epoch = self.lease.try_acquire()
            assert self._epoch is not None
        return PostgresJournal(self.target, self._epoch, "NORMAL", policy)

    @property
    def ready(self) -> str:
        """The log message of a controller process that serves from this journal."""
        return "listening" if isinstance(self.target, Path) else "leading"


BACKENDS = ["sqlite", "postgresql"]
both_backends = pytest.mark.parametrize("journal_backend", BACKENDS, indirect=True)
"""Runs a test on SQLite and on PostgreSQL (the test takes the ``journal_backend`` fixture)."""


@pytest.fixture
def journal_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JournalBackend]:
    """A fresh journal: SQLite in tmp_path unless parametrized (``both_backends``)."""
    name = getattr(request, "param", "sqlite")
    if name == "sqlite":
        yield JournalBackend(name, tmp_path / "journal.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    backend = JournalBackend(name, server.database())
    yield backend
    if backend.lease is not None:
        backend.lease.close()


@contextlib.contextmanager
def serve_controller(
    directory: Path,
    tls: TLSConfig = PLAINTEXT,
    policy: AuthPolicy | None = None,
    backend: JournalBackend | None = None,
) -> Iterator[tuple[grpc.Server, int, Sequencer]]:
    """A serving controller on a free port with a fresh journal (``backend``'s, or SQLite in
    ``directory``); its server, port and sequencer."""
    journal = (backend or JournalBackend("sqlite", directory / "journal.db")).open()
    sequencer = Sequencer(Book(DEFAULT_TICKERS), journal)
    names = ["allocation.v1.ControllerService"]
    server, health, port = create_server("127.0.0.1:0", names, tls=tls, policy=policy)
    controller_service_pb2_grpc.add_ControllerServiceServicer_to_server(
        ControllerService(sequencer, DEFAULT_TICKERS, policy=policy), server
    )
    sequencer.start()
    server.start()
    set_serving(health, names)
    try:
        yield server, port, sequencer
    finally:
        server.stop(None).wait()
        sequencer.stop()
        journal.close()


@pytest.fixture
def controller(tmp_path: Path, journal_backend: JournalBackend) -> Iterator[RunningController]:
    """A controller on a free port with a fresh journal (SQLite unless parametrized)."""
    with serve_controller(tmp_path, backend=journal_backend) as (_server, port, sequencer):
        channel = open_channel(f"127.0.0.1:{port}")
        try:
            yield RunningController(
                controller_service_pb2_grpc.ControllerServiceStub(channel),
                port,
                sequencer,
                channel,
            )
        finally:
            channel.close()


@dataclass
class FakePositionServer:
    """A recording PositionService bound to a port; ``start`` makes it answer."""

    service: RecordingPositionService
    server: grpc.Server
    port: int

    def start(self) -> None:
        self.server.start()


@pytest.fixture
def position_server() -> Iterator[FakePositionServer]:
    """A recording PositionService whose port is reserved but not answering until started."""
    service = RecordingPositionService()
    server, _, port = create_server("127.0.0.1:0", ["allocation.v1.PositionService"])
    position_service_pb2_grpc.add_PositionServiceServicer_to_server(service, server)
    try:
        yield FakePositionServer(service, server, port)
    finally:
        server.stop(None).wait()


@pytest.fixture
def reporter_factory(
    controller: RunningController,
) -> Iterator[Callable[[str, float], Reporter]]:
    """Build reporters on the test controller's sequencer; all are stopped at teardown."""
    made: list[Reporter] = []

    def make(address: str, interval: float) -> Reporter:
        reporter = Reporter(controller.sequencer, address, interval, deadline=1.0)
        made.append(reporter)
        reporter.start()
        return reporter

    yield make
    for reporter in made:
        reporter.stop()


def connect(port: int) -> tuple[grpc.Channel, controller_service_pb2_grpc.ControllerServiceStub]:
    """A channel to the controller on ``port`` and its stub (the caller closes the channel)."""
    channel = open_channel(f"127.0.0.1:{port}")
    return channel, controller_service_pb2_grpc.ControllerServiceStub(channel)


def current_positions(
    stub: controller_service_pb2_grpc.ControllerServiceStub,
) -> allocation_pb2.PositionReport:
    """The first page of the current positions, without its generation time (to compare)."""
    report = stub.GetPositions(controller_service_pb2.GetPositionsRequest()).report
    report.ClearField("generate_time")
    return report


def split_request(
    percents: dict[str, str], split_id: str = ""
) -> controller_service_pb2.SetAumSplitRequest:
    return controller_service_pb2.SetAumSplitRequest(
        split=allocation_pb2.AumSplit(split_id=split_id, percentages=percents)
    )


def fill(
    fill_id: str,
    quantity: int = 100,
    price: str = "10.50",
    ticker: str = "AAPL",
    side: allocation_pb2.Side.ValueType = allocation_pb2.SIDE_BUY,
) -> allocation_pb2.Fill:
    return allocation_pb2.Fill(
        fill_id=fill_id, ticker=ticker, price=price, quantity=quantity, side=side
    )


@dataclass
class Program:
    """A real program running as a subprocess, its structured log lines collected."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    """Standard output lines, when captured."""
    entries: list[dict[str, object]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                with contextlib.suppress(json.JSONDecodeError):
                    self.entries.append(json.loads(line))
                self._changed.notify_all()

    def _pump_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.output.append(line)
                self._changed.notify_all()

    def _await(self, find: Callable[[], T | None], what: str, timeout: float) -> T:
        """Wait until ``find`` returns something (or the program exits); fail with context."""
        with self._changed:
            self._changed.wait_for(
                lambda: find() is not None or self.process.poll() is not None, timeout
            )
            found = find()
        if found is None:
            tail = "".join(self.lines[-20:] + self.output[-20:])
            raise TimeoutError(f"no {what}; last lines:\n{tail}")
        return found

    def wait_for_output(self, text: str, timeout: float = 30.0) -> str:
        """The first standard output line containing ``text``, waiting for it."""
        return self._await(
            lambda: next((line for line in self.output if text in line), None),
            f"output line with {text!r}",
            timeout,
        )

    def wait_for_entry(
        self, message: str, predicate: Callable[[dict[str, object]], bool], timeout: float = 30.0
    ) -> dict[str, object]:
        """The first log entry with ``message`` that satisfies ``predicate``, waiting for it."""
        return self._await(
            lambda: next(
                (e for e in self.entries if e.get("message") == message and predicate(e)), None
            ),
            f"matching {message!r} log entry",
            timeout,
        )

    def wait_for(self, message: str, timeout: float = 30.0) -> dict[str, object]:
        """The first structured log entry with this message, waiting for it to be written."""
        return self.wait_for_entry(message, lambda _: True, timeout)

    @property
    def port(self) -> int:
        """The port from the program's "listening" log line."""
        return int(str(self.wait_for("listening")["port"]))

    def wait_listening(self, timeout: float = 30.0) -> int:
        """Wait until the program logs that it listens; returns its port."""
        self.wait_for("listening", timeout)
        return self.port

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send ``sig`` and return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_program(*args: str, capture_output: bool = False) -> Program:
    """Run ``python -m <args>`` from the repo root; threads collect stderr (and stdout)."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE if capture_output else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    program = Program(process)
    threading.Thread(target=program._pump, daemon=True).start()
    if capture_output:
        threading.Thread(target=program._pump_output, daemon=True).start()
    return program


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    """Programs started by a test; any still running at teardown are killed."""
    started: list[Program] = []
    yield started
    for program in started:
        if program.process.poll() is None:
            program.process.kill()
            program.process.wait()


@dataclass
class RunningPositionService:
    """An in-process position service printing to ``output``."""

    stub: position_service_pb2_grpc.PositionServiceStub
    port: int
    output: io.StringIO
    jsonl: Path


@contextlib.contextmanager
def serve_position(
    directory: Path,
    tls: TLSConfig = PLAINTEXT,
    policy: AuthPolicy | None = None,
    history: ReportHistory | None = None,
) -> Iterator[tuple[int, io.StringIO, PositionService]]:
    """The real PositionService on a free port, printing plain text into a buffer and
    appending reports to ``directory/reports.jsonl`` (and keeping them in ``history``); its
    port, output and service."""
    output = io.StringIO()
    console = Console(file=output, width=120, no_color=True)
    names = ["allocation.v1.PositionService"]
    server, health, port = create_server("127.0.0.1:0", names, tls=tls, policy=policy)
    service = PositionService(
        console,
        RenderOptions(max_rows=3, plain=True),
        jsonl=directory / "reports.jsonl",
        history=history,
    )
    position_service_pb2_grpc.add_PositionServiceServicer_to_server(service, server)
    server.start()
    set_serving(health, names)
    try:
        yield port, output, service
    finally:
        server.stop(None).wait()


@pytest.fixture
def position_service(tmp_path: Path) -> Iterator[RunningPositionService]:
    """The real PositionService on a free port, printing plain text into a buffer."""
    with (
        serve_position(tmp_path) as (port, output, _service),
        open_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield RunningPositionService(
            position_service_pb2_grpc.PositionServiceStub(channel),
            port,
            output,
            tmp_path / "reports.jsonl",
        )
