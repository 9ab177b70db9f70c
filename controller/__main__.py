"""``python -m controller``: the allocation controller (gRPC ControllerService)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1.health import HealthServicer
from prometheus_client import start_http_server

from allocation.v1 import controller_service_pb2_grpc
from controller.audit import cli as audit
from controller.authorization import AuthPolicy, PolicyError
from controller.book import Book
from controller.compiled import is_compiled
from controller.gate import LeaderGate
from controller.journal import (
    JournalDamaged,
    JournalLocked,
    JournalPolicyError,
    JournalStore,
    JournalVersionError,
    PostgresTarget,
    journal_target,
)
from controller.journal_postgres import PostgresJournal
from controller.journal_sqlite import SqliteJournal
from controller.leadership import DEFAULT_LEASE_SECONDS, LeaderLease, LeaseKeeper
from controller.policy import POLICIES, TOTAL_VALUE
from controller.reporter import Reporter
from controller.sequencer import Sequencer
from controller.service import DEFAULT_MAX_STREAMS, ControllerService
from controller.serving import (
    CONTROLLER_SERVICE,
    LOG_LEVELS,
    UNARY_WORKERS,
    add_security_arguments,
    configure_logging,
    create_server,
    non_negative_seconds,
    port_number,
    positive_int,
    positive_seconds,
    server_security,
    set_not_serving,
    set_serving,
    stop_on_signals,
    wait_for_signal,
)
from controller.transport import (
    TLSConfig,
    TLSError,
    add_client_arguments,
    check_files,
    client_config,
)
from controller.validation import DEFAULT_TICKERS

log = logging.getLogger("controller")


# Exit statuses (README: "Exit statuses"), so a supervisor can tell what to do.
EXIT_STOPPED = 0  # stopped on SIGTERM/SIGINT after draining: nothing to do
EXIT_JOURNAL_FAILED = 1  # the journal failed while running: restart, recovery takes over
EXIT_CANNOT_START = 2  # bad options, a journal of another version, or held by another controller
EXIT_JOURNAL_DAMAGED = 3  # the journal is damaged or not a journal: restore it, do not restart
# Seconds in-flight calls get to finish when the journal has failed (nothing more commits).
FAILURE_GRACE_SECONDS = 1.0


def lot_sizes(text: str) -> dict[str, int]:
    """argparse type of --lot-size: ``TICKER=N,...`` with N a whole number >= 1."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ticker, _, size = part.partition("=")
        if not ticker or not size.isdigit() or int(size) < 1:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not TICKER=N with N a whole number >= 1 (e.g. AAPL=100)"
            )
        sizes[ticker] = int(size)
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; every one has a default that runs the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m controller",
        description=(
            "Allocate block-order fills to accounts in whole shares, following the AUM split. "
            "Every accepted fill is journaled (SQLite, or PostgreSQL with standbys) before it is "
            "acknowledged; on start the controller recovers from the journal and continues. "
            "Exit status: 0 stopped by a signal, 1 journal failure while running (restart; on "
            "PostgreSQL the controller follows instead), 2 cannot start as configured (options, "
            "journal version or policy, journal held by another controller, database "
            "unreachable), 3 journal damaged."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=9998, help="gRPC port (0 picks a free one)"
    )
    parser.add_argument(
        "--db",
        type=journal_target,
        default=Path("var/controller.db"),
        help="journal: a file path or sqlite:///absolute/path (SQLite, held exclusively while"
        " running), or postgresql://user@host:port/dbname (any libpq URL; PostgreSQL, shared by"
        " any number of controllers, one leading and the others standing by)",
    )
    parser.add_argument(
        "--lease",
        type=positive_seconds,
        default=DEFAULT_LEASE_SECONDS,
        help="PostgreSQL only: seconds a leader's lease lasts; a standby takes over within"
        " about 1.25 leases of the leader dying (renewed, and polled by standbys, every quarter)",
    )
    parser.add_argument(
        "--name",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="PostgreSQL only: this controller's name in the leader row and in standbys' answers",
    )
    parser.add_argument(
        "--advertise-address",
        default="",
        help="PostgreSQL only: host:port standbys name as the leader's address when this"
        " controller leads (default: --host and the listening port)",
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default=TOTAL_VALUE,
        help="allocation rule, fixed when the journal is created: total-value (each account's"
        " whole book tracks its weight) or per-ticker (each account's holding of every ticker"
        " tracks its weight). Example: A alone holds 10 MSFT at 100, the split turns 50/50 A/B,"
        " then 10 AAPL at 100 arrive: total-value gives all 10 to B (each then holds 1,000),"
        " per-ticker gives 5 and 5 (each holds half the AAPL)",
    )
    parser.add_argument(
        "--lot-size",
        type=lot_sizes,
        default={},
        metavar="TICKER=N,...",
        help="round lots: buys of TICKER go in multiples of N to each account, except the"
        " fill's odd remainder (quantity mod N), which goes whole to the one account where it"
        " lowers the objective most; exactly optimal among allocations of that shape. E.g."
        " AAPL=100: 250 AAPL into 50/50 gives 100 and 150 (or 150 and 100), never 125/125."
        " Sells are not affected. Recorded with every fill it applies to",
    )
    parser.add_argument(
        "--tickers",
        default=",".join(DEFAULT_TICKERS),
        help="comma-separated ticker universe; fills of other tickers are rejected",
    )
    parser.add_argument(
        "--report-interval",
        type=positive_seconds,
        default=10.0,
        help="seconds between position reports",
    )
    parser.add_argument(
        "--position-address",
        default="localhost:9999",
        help="PositionService host:port, or several comma-separated: after a failed report the"
        " next goes to the next address",
    )
    parser.add_argument(
        "--report-deadline",
        type=positive_seconds,
        default=2.0,
        help="deadline of each report call, seconds (plus 10 s per 100,000 accounts)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port_number,
        default=0,
        help="Prometheus metrics port on --metrics-host (0 = off)",
    )
    parser.add_argument(
        "--sync",
        choices=["full", "normal"],
        default="full",
        help="SQLite synchronous mode: full survives power loss, normal only process crashes",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=non_negative_seconds,
        default=1.0,
        help="seconds between position checkpoint rounds (recovery replays fills since the last)",
    )
    parser.add_argument(
        "--max-streams",
        type=positive_int,
        default=DEFAULT_MAX_STREAMS,
        help="open StreamFills/StreamAumSplits calls served at once; more are refused"
        " RESOURCE_EXHAUSTED (each holds a thread; 32 more serve health and unary calls)",
    )
    parser.add_argument(
        "--grace",
        type=non_negative_seconds,
        default=5.0,
        help="seconds to let in-flight calls finish on shutdown",
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="logging level")
    add_security_arguments(parser)
    add_client_arguments(parser, "position-", "the position service")
    args = parser.parse_args(argv)
    args.tickers = tuple(t.strip() for t in args.tickers.split(",") if t.strip())
    if not args.tickers:
        parser.error("--tickers must name at least one ticker")
    outside = sorted(set(args.lot_size) - set(args.tickers))
    if outside:
        parser.error(f"--lot-size names {outside}, not in --tickers {list(args.tickers)}")
    return args


@dataclass
class Term:
    """One stretch of allocating on a journal: the recovered sequencer, its reporter and the
    service that adapts it to the wire."""

    journal: JournalStore
    sequencer: Sequencer
    service: ControllerService
    reporter: Reporter

    @classmethod
    def recover(
        cls,
        args: argparse.Namespace,
        journal: JournalStore,
        policy: AuthPolicy | None,
        position_tls: TLSConfig,
        on_failure: Callable[[], None],
    ) -> Term:
        """Rebuild the book from ``journal`` (``JournalDamaged`` or ``sqlite3.DatabaseError`` if
        it cannot be read) and make the term's service and reporter, not yet started."""
        started = time.perf_counter()
        sequencer = Sequencer(
            Book(args.tickers, policy=journal.policy, lot_sizes=args.lot_size),
            journal,
            args.checkpoint_interval,
            on_failure=on_failure,
        )
        journal.check_integrity()
        counters = sequencer.counters
        # The recovered book lives as long as the term: keep the collector from walking it on
        # every full collection (a pause of ~100 ms per pass at 100,000 accounts).
        gc.freeze()
        log.info(
            "recovered journal",
            extra={
                "db": str(args.db),
                "journal_id": journal.journal_id,
                "fills": counters.fill_count,
                "next_sequence": counters.next_sequence,
                "report_sequence": counters.report_sequence,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        service = ControllerService(sequencer, args.tickers, args.max_streams, policy)
        reporter = Reporter(
            sequencer,
            args.position_address,
            args.report_interval,
            args.report_deadline,
            position_tls,
        )
        return cls(journal, sequencer, service, reporter)

    def start(self) -> None:
        """Start writing and reporting."""
        self.sequencer.start()
        self.reporter.start()

    def end(self, server: grpc.Server | None = None, grace: float = 0.0) -> None:
        """Refuse new requests at once, answer the queued ones (committed if the journal still
        takes writes), stop ``server`` within ``grace`` if given, and release the journal."""
        self.sequencer.close_intake()
        self.reporter.stop()
        if server is not None:
            server.stop(grace).wait()
        self.sequencer.stop()
        self.journal.close()


def open_sqlite(args: argparse.Namespace, path: Path) -> SqliteJournal | int:
    """The SQLite journal, or the exit status that says why it cannot be used."""
    try:
        return SqliteJournal(path, synchronous=args.sync.upper(), policy=args.policy)
    except (JournalVersionError, JournalLocked, JournalPolicyError) as error:
        log.critical("cannot start: %s", error)
        return EXIT_CANNOT_START
    except JournalDamaged as error:
        log.critical("journal damaged; restore it from a backup: %s", error)
        return EXIT_JOURNAL_DAMAGED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the controller until SIGTERM/SIGINT (exit 0) or a journal failure (exit 1); exit 2 or
    3 when it cannot start (see ``parse_args``). ``audit ...`` runs the compliance tool."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["audit"]:
        return audit.main(arguments[1:])
    args = parse_args(arguments)
    configure_logging(args.log_level)
    try:
        tls, policy = server_security(args)
        position_tls = client_config(args, "position-")
        check_files(position_tls, "--position-")
    except (TLSError, PolicyError) as error:
        log.critical("cannot start: %s", error)
        return EXIT_CANNOT_START
    if isinstance(args.db, PostgresTarget):
        return run_shared(args, args.db, tls, policy, position_tls)
    return run_alone(args, args.db, tls, policy, position_tls)


def listen(
    args: argparse.Namespace, tls: TLSConfig, policy: AuthPolicy | None
) -> tuple[grpc.Server, HealthServicer, int] | int:
    """The controller's server (and metrics endpoint), not started; or the exit status."""
    try:
        server, health, port = create_server(
            f"{args.host}:{args.port}",
            [CONTROLLER_SERVICE],
            args.max_streams + UNARY_WORKERS,
            tls,
            policy,
        )
        if args.metrics_port:
            start_http_server(args.metrics_port, addr=args.metrics_host)
    except OSError as error:
        log.critical("cannot listen: %s", error)
        return EXIT_CANNOT_START
    return server, health, port


def run_alone(
    args: argparse.Namespace,
    path: Path,
    tls: TLSConfig,
    policy: AuthPolicy | None,
    position_tls: TLSConfig,
) -> int:
    """Serve from an SQLite journal held exclusively; a journal failure exits 1."""
    journal = open_sqlite(args, path)
    if isinstance(journal, int):
        return journal
    writer_failed = threading.Event()
    try:
        term = Term.recover(args, journal, policy, position_tls, writer_failed.set)
    except (JournalDamaged, sqlite3.DatabaseError) as error:
        log.critical("journal damaged; restore it from a backup: %s", error)
        journal.close()
        return EXIT_JOURNAL_DAMAGED
    listening = listen(args, tls, policy)
    if isinstance(listening, int):
        journal.close()
        return listening
    server, health, port = listening
    controller_service_pb2_grpc.add_ControllerServiceServicer_to_server(term.service, server)
    term.sequencer.start()
    server.start()
    term.reporter.start()
    set_serving(health, [CONTROLLER_SERVICE])
    log.info(
        "listening",
        extra={
            "port": port,
            "host": args.host,
            "tickers": list(args.tickers),
            "engine": "compiled" if is_compiled() else "interpreted",
        },
    )
    signum = wait_for_signal(writer_failed)
    failed = signum is None
    # At once: health says NOT_SERVING and new requests are answered UNAVAILABLE; requests
    # already queued are answered (and, unless the journal failed, committed).
    health.enter_graceful_shutdown()
    if failed:
        log.critical("the journal failed; exiting 1 so that a restart recovers from the journal")
    else:
        log.info("stopping", extra={"signal": signum})
    term.end(server, FAILURE_GRACE_SECONDS if failed else args.grace)
    log.info("stopped", extra={"next_sequence": term.sequencer.counters.next_sequence})
    return EXIT_JOURNAL_FAILED if failed else EXIT_STOPPED


def run_shared(
    args: argparse.Namespace,
    target: PostgresTarget,
    tls: TLSConfig,
    policy: AuthPolicy | None,
    position_tls: TLSConfig,
) -> int:
    """Serve from a PostgreSQL journal shared with other controllers: follow (health
    NOT_SERVING, calls UNAVAILABLE naming the leader) until the lead is free, then lead until
    a signal (exit 0, handing the lead over at once) or until the lead is lost (fenced, lease
    not renewed, database session gone), then follow again."""
    listening = listen(args, tls, policy)
    if isinstance(listening, int):
        return listening
    server, health, port = listening
    gate = LeaderGate()
    controller_service_pb2_grpc.add_ControllerServiceServicer_to_server(gate, server)
    address = args.advertise_address or f"{args.host}:{port}"
    try:
        lease = LeaderLease(target, args.policy, args.name, address, args.lease)
    except (JournalVersionError, JournalPolicyError) as error:
        log.critical("cannot start: %s", error)
        return EXIT_CANNOT_START
    except JournalDamaged as error:
        log.critical("journal damaged; restore it from a backup: %s", error)
        return EXIT_JOURNAL_DAMAGED
    except psycopg.Error as error:
        log.critical("cannot reach --db %s: %s", target, str(error).strip())
        return EXIT_CANNOT_START
    stop = threading.Event()
    received = stop_on_signals(stop)
    server.start()
    log.info(
        "listening",
        extra={"port": port, "host": args.host, "tickers": list(args.tickers), "db": str(target)},
    )
    while not stop.is_set():
        epoch = follow(lease, gate, stop)
        if epoch is None:
            break
        lost = threading.Event()
        keeper = LeaseKeeper(lease, epoch, lost)
        try:
            journal = PostgresJournal(target, epoch, args.sync.upper(), args.policy)
            term = Term.recover(args, journal, policy, position_tls, lost.set)
        except (psycopg.Error, JournalDamaged) as error:
            log.error("cannot recover the journal; following", extra={"error": str(error)})
            keeper.stop()
            continue
        gate.lead(term.service)
        term.start()
        set_serving(health, [CONTROLLER_SERVICE])
        log.info("leading", extra={"epoch": epoch, "address": address})
        while not (stop.is_set() or lost.is_set()):
            stop.wait(0.5)
        set_not_serving(health, [CONTROLLER_SERVICE])
        gate.follow("this controller is stopping" if stop.is_set() else describe_leader(lease))
        if stop.is_set():
            log.info("stopping", extra={"signal": received[0] if received else None})
            term.end(server, args.grace)
        else:
            log.warning("lost the lead; following", extra={"epoch": epoch})
            term.end()
        keeper.stop()
        if stop.is_set():
            with contextlib.suppress(psycopg.Error):
                lease.release(epoch)
    health.enter_graceful_shutdown()
    server.stop(args.grace).wait()
    lease.close()
    log.info("stopped")
    return EXIT_STOPPED


def follow(lease: LeaderLease, gate: LeaderGate, stop: threading.Event) -> int | None:
    """Follow until this controller takes the lead (its epoch) or ``stop`` is set (None)."""
    following = ""
    while not stop.is_set():
        try:
            epoch = lease.try_acquire()
            if epoch is not None:
                return epoch
        except psycopg.Error:
            pass  # described below, from the same failure
        described = describe_leader(lease)
        gate.follow(described)
        if described != following:
            log.info("following", extra={"leader": described})
            following = described
        stop.wait(lease.poll_seconds)
    return None


def describe_leader(lease: LeaderLease) -> str:
    """Who leads, in the words a refused client reads."""
    try:
        leader = lease.leader()
    except psycopg.Error as error:
        return f"the journal's database is unreachable ({str(error).strip()})"
    if leader is None:
        return "no controller leads yet"
    if leader.current:
        return f"the leader is {leader.holder} at {leader.address} (epoch {leader.epoch})"
    return (
        f"the last leader, {leader.holder} at {leader.address}, is not renewing its lease;"
        " a standby takes over when it ends"
    )


if __name__ == "__main__":
    raise SystemExit(main())
