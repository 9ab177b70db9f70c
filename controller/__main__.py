"""``python -m controller``: the allocation controller (gRPC ControllerService)."""

from __future__ import annotations

import argparse
import gc
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import start_http_server

from allocation.v1 import controller_service_pb2_grpc
from controller.audit import cli as audit
from controller.authorization import PolicyError
from controller.book import Book
from controller.journal import (
    Journal,
    JournalDamaged,
    JournalLocked,
    JournalPolicyError,
    JournalVersionError,
    journal_path,
)
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
    set_serving,
    wait_for_signal,
)
from controller.transport import TLSError, add_client_arguments, check_files, client_config
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
            "Every accepted fill is journaled (SQLite, WAL) before it is acknowledged; on start "
            "the controller recovers from the journal and continues. Exit status: 0 stopped by "
            "a signal, 1 journal failure while running (restart), 2 cannot start as configured "
            "(options, journal version, journal held by another controller), 3 journal damaged."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=9998, help="gRPC port (0 picks a free one)"
    )
    parser.add_argument(
        "--db",
        type=journal_path,
        default=Path("var/controller.db"),
        help="journal: a file path or sqlite:///absolute/path (held exclusively while running)",
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
        "--position-address", default="localhost:9999", help="PositionService host:port"
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


def open_journal(args: argparse.Namespace) -> Journal | int:
    """The journal, or the exit status that says why it cannot be used."""
    try:
        return Journal(args.db, synchronous=args.sync.upper(), policy=args.policy)
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
    started = time.perf_counter()
    try:
        tls, policy = server_security(args)
        position_tls = client_config(args, "position-")
        check_files(position_tls, "--position-")
    except (TLSError, PolicyError) as error:
        log.critical("cannot start: %s", error)
        return EXIT_CANNOT_START
    journal = open_journal(args)
    if isinstance(journal, int):
        return journal
    writer_failed = threading.Event()
    try:
        sequencer = Sequencer(
            Book(args.tickers, policy=journal.policy, lot_sizes=args.lot_size),
            journal,
            args.checkpoint_interval,
            on_failure=writer_failed.set,
        )
        journal.check_integrity()
    except (JournalDamaged, sqlite3.DatabaseError) as error:
        log.critical("journal damaged; restore it from a backup: %s", error)
        journal.close()
        return EXIT_JOURNAL_DAMAGED
    counters = sequencer.counters
    # The recovered book lives as long as the process: keep the collector from walking it on
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
        journal.close()
        return EXIT_CANNOT_START
    controller_service_pb2_grpc.add_ControllerServiceServicer_to_server(
        ControllerService(sequencer, args.tickers, args.max_streams, policy), server
    )
    sequencer.start()
    server.start()
    reporter = Reporter(
        sequencer, args.position_address, args.report_interval, args.report_deadline, position_tls
    )
    reporter.start()
    set_serving(health, [CONTROLLER_SERVICE])
    log.info("listening", extra={"port": port, "host": args.host, "tickers": list(args.tickers)})
    signum = wait_for_signal(writer_failed)
    failed = signum is None
    # At once: health says NOT_SERVING and new requests are answered UNAVAILABLE; requests
    # already queued are answered (and, unless the journal failed, committed).
    health.enter_graceful_shutdown()
    sequencer.close_intake()
    if failed:
        log.critical("the journal failed; exiting 1 so that a restart recovers from the journal")
    else:
        log.info("stopping", extra={"signal": signum})
    reporter.stop()
    server.stop(FAILURE_GRACE_SECONDS if failed else args.grace).wait()
    sequencer.stop()
    journal.close()
    log.info("stopped", extra={"next_sequence": sequencer.counters.next_sequence})
    return EXIT_JOURNAL_FAILED if failed else EXIT_STOPPED


if __name__ == "__main__":
    raise SystemExit(main())
