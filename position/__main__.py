"""``python -m position``: the position service (gRPC PositionService)."""

from __future__ import annotations

import argparse
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import start_http_server
from rich.console import Console

from allocation.v1 import position_service_pb2_grpc
from controller.authorization import PolicyError
from controller.serving import (
    LOG_LEVELS,
    POSITION_SERVICE,
    add_security_arguments,
    configure_logging,
    create_server,
    non_negative_seconds,
    port_number,
    positive_int,
    server_security,
    set_serving,
    wait_for_signal,
)
from controller.transport import TLSError, is_loopback
from position.dashboard import Dashboard
from position.history import DEFAULT_KEEP, ReportHistory
from position.render import PER_TICKER_CHOICES, RenderOptions
from position.service import PositionService

log = logging.getLogger("position")

# Width of the plain text written to a file or pipe: the default tables fit in it.
PLAIN_WIDTH = 120


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m position",
        description=(
            "Receive the controller's position reports and print each as a table: shares per "
            "ticker, cost and market value, target and actual percent and deviation per account."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port_number, default=9999, help="gRPC port (0 picks a free one)"
    )
    parser.add_argument(
        "--max-rows",
        type=positive_int,
        default=50,
        help="accounts shown per report; beyond it, those with the largest |deviation|",
    )
    parser.add_argument(
        "--per-ticker",
        choices=PER_TICKER_CHOICES,
        default="none",
        help="per-ticker columns in the account table: shares held, or market values"
        " (wider than 120 columns with many tickers); a ticker table is always shown",
    )
    parser.add_argument(
        "--jsonl", type=Path, default=None, help="also append each report as a JSON line here"
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("var/position-history.db"),
        help="SQLite file keeping accepted reports across restarts (the latest whole, the"
        " newest --history-reports headers for ListReports)",
    )
    parser.add_argument(
        "--history-reports",
        type=positive_int,
        default=DEFAULT_KEEP,
        help="report headers kept in --history (the oldest are dropped)",
    )
    parser.add_argument(
        "--grace", type=non_negative_seconds, default=5.0, help="shutdown drain, seconds"
    )
    parser.add_argument(
        "--metrics-port",
        type=port_number,
        default=0,
        help="Prometheus metrics port on --metrics-host (0 = off)",
    )
    parser.add_argument(
        "--http-port",
        type=port_number,
        default=None,
        help="serve the live web dashboard and its JSON API on this port (0 picks a free one;"
        " default: no dashboard)",
    )
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address of the dashboard: plain HTTP, so with --tls-cert only a loopback address"
        " is accepted (reach it through an SSH tunnel or a TLS-terminating proxy)",
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="logging level")
    add_security_arguments(parser)
    args = parser.parse_args(argv)
    if args.http_port is not None and args.tls_cert is not None and not is_loopback(args.http_host):
        parser.error(
            f"--http-host {args.http_host} is not a loopback address: the dashboard is plain"
            " HTTP and would bypass --tls-cert and the role policy; keep it on 127.0.0.1"
        )
    if args.jsonl is not None and args.jsonl.is_dir():
        parser.error(f"--jsonl {args.jsonl} is a directory; give a file to append to")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain and exit 0."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    console = Console(highlight=False)
    plain = not console.is_terminal
    if plain:
        console = Console(width=PLAIN_WIDTH, no_color=True, highlight=False)
    options = RenderOptions(args.max_rows, args.per_ticker, plain)
    try:
        tls, policy = server_security(args)
    except (TLSError, PolicyError) as error:
        log.critical("cannot start: %s", error)
        return 2
    try:
        history = ReportHistory(args.history, args.history_reports)
    except (OSError, sqlite3.Error) as error:
        log.critical("cannot open the report history %s: %s", args.history, error)
        return 2
    try:
        server, health, port = create_server(
            f"{args.host}:{args.port}", [POSITION_SERVICE], tls=tls, policy=policy
        )
        if args.metrics_port:
            start_http_server(args.metrics_port, addr=args.metrics_host)
    except OSError as error:
        log.critical("cannot listen: %s", error)
        return 2
    dashboard = None
    if args.http_port is not None:
        dashboard = Dashboard(history)
        try:
            http_port = dashboard.start(args.http_host, args.http_port)
        except OSError as error:
            log.critical("cannot listen: %s", error)
            return 2
        log.info(
            "dashboard listening",
            extra={"url": f"http://{args.http_host}:{http_port}/", "port": http_port},
        )
    position_service_pb2_grpc.add_PositionServiceServicer_to_server(
        PositionService(
            console, options, args.jsonl, history, dashboard.publish if dashboard else None
        ),
        server,
    )
    server.start()
    set_serving(health, [POSITION_SERVICE])
    log.info("listening", extra={"port": port, "host": args.host})
    signum = wait_for_signal()
    log.info("stopping", extra={"signal": signum})
    health.enter_graceful_shutdown()
    server.stop(args.grace).wait()
    if dashboard is not None:
        dashboard.stop()
    history.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
